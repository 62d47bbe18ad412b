"""Versioned schema migrations, one folder per backend: `NNNN_name.sql`, applied in order."""

from __future__ import annotations

from importlib import resources


def load(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration of `dialect` ("sqlite", "postgres"), in order."""
    folder = resources.files(__name__).joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(number), name, entry.read_text()))
    return sorted(found)
