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
    """A fresh SQLite file; tests that take `any_db_url` run on every backend instead."""
    return f"sqlite:///{tmp_path / 'nonstop.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend in turn."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite:///{tmp_path / 'nonstop.db'}"


@pytest.fixture
def make_app(any_db_url: str) -> Iterator[AppFactory]:
    """Build Apps on the test's database (each backend in turn); all closed at the end."""
    apps: list[nonstop.App] = []

    def build(name: str = "test", url: str | None = None) -> nonstop.App:
        app = nonstop.App(name, url or any_db_url)
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
