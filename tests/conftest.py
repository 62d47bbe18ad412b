"""Shared fixtures: a fresh SQLite file per test and Apps that are closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import nonstop

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
