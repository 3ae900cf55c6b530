"""The only code that builds MongoDB queries. Handlers and the scheduler call its methods."""

from __future__ import annotations

from broadway.store.connection import Store, StoreUnavailable, connect, is_store_failure
from broadway.store.ids import new_id_text, parse_id, valid_id

__all__ = ["Store", "StoreUnavailable", "connect", "is_store_failure", "new_id_text", "parse_id", "valid_id"]
