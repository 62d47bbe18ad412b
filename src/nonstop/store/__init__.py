"""Stores: where every run, step and incident lives. `open_store(url)` picks the backend."""

from __future__ import annotations

import os

from nonstop.errors import ConfigError
from nonstop.store.base import Claimed, LeaseLost, NewRun, Store

DEFAULT_URL = "sqlite:///nonstop.db"

__all__ = ["DEFAULT_URL", "Claimed", "LeaseLost", "NewRun", "Store", "open_store", "resolve_url"]


def resolve_url(url: str | None) -> str:
    """The URL given, else `NONSTOP_DATABASE_URL`, else a `nonstop.db` file here."""
    return url or os.environ.get("NONSTOP_DATABASE_URL") or DEFAULT_URL


def open_store(url: str, *, create: bool = True) -> Store:
    """A store for `url`, not yet opened. With `create=False` a missing database is an error
    (read-only commands must never create an empty database by accident)."""
    scheme = url.partition(":")[0]
    if scheme == "sqlite":
        from nonstop.store.sqlite import SQLiteStore

        return SQLiteStore(url, create=create)
    if scheme in ("postgresql", "postgres"):
        from nonstop.store.postgres import PostgresStore

        return PostgresStore(url, create=create)
    raise ConfigError(
        f"unsupported database URL {url!r} (expected sqlite:///path or postgresql://...)"
    )
