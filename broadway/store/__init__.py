"""The only code that builds MongoDB queries. Handlers and the scheduler call its methods."""

from __future__ import annotations

from broadway.store.connection import Store, StoreUnavailable, connect
from broadway.store.ids import new_id_text, parse_id, valid_id

__all__ = ["Store", "StoreUnavailable", "connect", "new_id_text", "parse_id", "valid_id"]
