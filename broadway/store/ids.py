"""Ids on the wire (and everywhere outside broadway/store/) are 24-hex strings; in the store
they are ObjectIds. Store methods take and return the strings and convert here."""

from __future__ import annotations

from bson import ObjectId


def parse_id(text: str | None) -> ObjectId | None:
    """The ObjectId for a wire id, or None when the text cannot be one (so: not found)."""
    if text is None or not ObjectId.is_valid(text) or len(text) != 24:
        return None
    return ObjectId(text)


def new_id() -> ObjectId:
    return ObjectId()


def valid_id(text: str | None) -> str | None:
    """The text if it can be an id (24 hex digits), else None (so: not found)."""
    return text if parse_id(text) is not None else None


def new_id_text() -> str:
    """A fresh id, as the wire carries it."""
    return str(ObjectId())


def oid(text: str) -> ObjectId | None:
    """The ObjectId to query by; None (which matches no `_id`) for text that cannot be one."""
    return parse_id(text)
