"""Ids on the wire are 24-hex strings; in the store they are ObjectIds."""

from __future__ import annotations

from bson import ObjectId


def parse_id(text: str | None) -> ObjectId | None:
    """The ObjectId for a wire id, or None when the text cannot be one (so: not found)."""
    if text is None or not ObjectId.is_valid(text) or len(text) != 24:
        return None
    return ObjectId(text)


def new_id() -> ObjectId:
    return ObjectId()
