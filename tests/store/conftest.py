"""The store fixture: every contract test runs once per backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nonstop.store import Store, open_store

StoreFactory = Callable[[], Store]

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend; PostgreSQL ones are cloned from a template."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite:///{tmp_path / 'contract.db'}"


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as run:
        yield run


@pytest.fixture
def store(store_url: str, runner: asyncio.Runner) -> Iterator[Store]:
    opened = open_store(store_url)
    runner.run(opened.open())
    yield opened
    runner.run(opened.close())


@pytest.fixture
def another_store(store_url: str, runner: asyncio.Runner) -> Iterator[StoreFactory]:
    """More connections to the same database, as a second process would have."""
    made: list[Store] = []

    def build() -> Store:
        extra = open_store(store_url)
        runner.run(extra.open())
        made.append(extra)
        return extra

    yield build
    for extra in made:
        runner.run(extra.close())
