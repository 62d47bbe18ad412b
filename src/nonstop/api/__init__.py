"""The HTTP API served by `nonstop serve`: runs, DLQ, agents, health probes, OpenAPI."""

from nonstop.api.routes import NodeState, create_api

__all__ = ["NodeState", "create_api"]
