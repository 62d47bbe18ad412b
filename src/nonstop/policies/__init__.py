"""Policies: pure decisions (retry, ...) with no I/O; the executor applies them."""

from nonstop.policies.restart import Restart
from nonstop.policies.retry import Retry

__all__ = ["Restart", "Retry"]
