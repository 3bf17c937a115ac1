"""Helpers for the effect records: checked reads of journaled values."""

from __future__ import annotations

from typing import Any

from iservice.errors import JournalDataError


def text(d: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v or "\0" in v:
        raise JournalDataError(f"journal record: {key} must be text, got {v!r}")
    return v


def integer(d: dict[str, Any], key: str, *, optional: bool = False, low: int = 0,
            high: int = 2**32) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    if type(v) is not int or not low <= v <= high:
        raise JournalDataError(f"journal record: {key} must be an integer in {low}..{high}, "
                               f"got {v!r}")
    return v


def flag(d: dict[str, Any], key: str) -> bool:
    v = d.get(key, False)
    if type(v) is not bool:
        raise JournalDataError(f"journal record: {key} must be true or false, got {v!r}")
    return v
