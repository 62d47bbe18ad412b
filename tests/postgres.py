"""Throw-away PostgreSQL databases for tests: one template per session, a copy per test.

`NONSTOP_TEST_POSTGRES` names the server (default: the local one). Without a server the
PostgreSQL tests skip, except under CI=true, where they fail: CI must test both stores.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("NONSTOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def url_for(database: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def require_server() -> None:
    """Skip (or, under CI, fail) when no PostgreSQL server answers."""
    try:
        import psycopg

        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            pass
    except Exception as exc:
        message = f"PostgreSQL not available at {ADMIN_URL}: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def template_database() -> Iterator[str]:
    """A database with every migration applied, to copy from; dropped afterwards."""
    from nonstop.store.postgres import PostgresStore

    require_server()
    name = f"nonstop_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        store = PostgresStore(url_for(name))

        async def migrate() -> None:
            await store.open()
            await store.close()

        asyncio.run(migrate())
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def copy_of(template: str) -> Iterator[str]:
    """A fresh database cloned from `template`; yields its URL."""
    name = f"nonstop_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield url_for(name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
