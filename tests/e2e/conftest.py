"""Fixtures every end-to-end test module shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.serve import NodePool


@pytest.fixture
def nodes() -> Iterator[NodePool]:
    """Serve processes of the test, all killed when it ends, whatever happened."""
    with NodePool() as pool:
        yield pool
