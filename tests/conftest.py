"""Shared fixtures: a fresh SQLite file per test and Apps that are closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import nonstop
from tests import postgres

AppFactory = Callable[..., nonstop.App]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nonstop.db'}"


@pytest.fixture
def make_app(db_url: str) -> Iterator[AppFactory]:
    """Build Apps on the test's database; every one is closed when the test ends."""
    apps: list[nonstop.App] = []

    def build(name: str = "test", url: str | None = None) -> nonstop.App:
        app = nonstop.App(name, url or db_url)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database to clone (skips or, under CI, fails without a server)."""
    with postgres.template_database() as name:
        yield name


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own."""
    with postgres.copy_of(pg_template) as url:
        yield url
