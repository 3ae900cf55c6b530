"""The callback outbox: pending deliveries inside job and run documents, and their attempt log.

A document (in `jobs` or `runs`) has a callback to deliver exactly while it carries
`delivery_due` (unix seconds; sparse-indexed, the one key the deliverers query: nx-27017 filters
and sorts fast on one indexed field only). Beside it, `delivery` holds the delivery's state:
{"id": stable hex id sent on every attempt, "created", "expires", "attempts",
 "claim": the current claimant's token while one holds it,
 "body": the JSON body, frozen at the first attempt, so every attempt sends the same bytes,
 then "delivered_at", or "given_up" (time) and "reason"}.

The pending delivery is recorded by the same update that makes the document terminal: merge
`pending_delivery_fields(now, max_age_s)` into that update's `$set` when the document has a
`callback_url` (stored at submission). Nothing else needs to happen for it to be delivered by
some API process: a claim pushes `delivery_due` one lease ahead and sets a fresh claim token, so
two processes never hold it at once, and one that dies mid-send loses it to another when the
lease runs out. Every later write for the attempt is fenced by that token.

Attempts are logged one document each in `delivery_attempts` (nx-27017 stringifies `$push`ed
subdocuments, so they cannot be an array in the job), indexed by `owner_id`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from broadway.store.ids import parse_id

# Outboxes: jobs and runs (ids are ObjectIds), grader image builds (ids are their shas).
KINDS = ("job", "run", "image")

# What a claim reads: what the deliverer and the callback bodies (broadway/callbacks/bodies.py)
# use, and not a job's stages or result, which can be megabytes.
CLAIM_FIELDS = (
    "status", "callback_url", "delivery", "work_id", "grade", "comments", "error",
    "created_at", "started_at", "finished_at", "n_students", "orca_key", "orca_response",
)  # fmt: skip


def pending_delivery_fields(now: float, max_age_s: float) -> dict[str, Any]:
    """The fields to `$set`, in the update that makes a document with a callback_url terminal,
    so that its callback is delivered (to be retried until now + max_age_s)."""
    return {
        "delivery": {"id": secrets.token_hex(16), "created": now, "expires": now + max_age_s, "attempts": 0},
        "delivery_due": now,
    }


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process holds until `lease_until`; `document` has the CLAIM_FIELDS
    (and "_id" as a string), for building the body."""

    kind: str
    owner_id: str
    delivery_id: str
    url: str | None
    attempt: int
    expires: float
    claim: str
    lease_until: float
    body: str | None
    document: dict[str, Any]


@dataclass(frozen=True)
class DeliveryAttempt:
    """One attempt, as GET /api/v1/job/{id}/deliveries lists it."""

    delivery_id: str
    attempt: int
    at: float
    duration_s: float
    outcome: str  # "delivered", "retry" or "give_up"
    status_code: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id, "attempt": self.attempt, "at": self.at,
            "duration_s": round(self.duration_s, 4), "outcome": self.outcome,
            "status_code": self.status_code, "error": self.error,
        }  # fmt: skip


class DeliveryStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.collections: dict[str, AsyncCollection] = {"job": db.jobs, "run": db.runs, "image": db.grader_images}
        self.attempts = db.delivery_attempts
        self._next_kind = 0

    async def ensure_indexes(self) -> None:
        """The due key on both outboxes, and the attempt log by owner (idempotent)."""
        for collection in self.collections.values():
            await collection.create_index([("delivery_due", ASCENDING)], sparse=True)
        await self.attempts.create_index([("owner_id", ASCENDING)])

    async def set_pending(self, kind: str, owner_id: str, url: str, now: float, max_age_s: float) -> bool:
        """Record a callback to `url` for an existing job or run, due now. For documents ended
        outside the usual terminal update (and for tests); False if there is no such document."""
        oid = _owner_key(kind, owner_id)
        if oid is None:
            return False
        fields = {"callback_url": url, **pending_delivery_fields(now, max_age_s)}
        result = await self.collections[kind].update_one({"_id": oid}, {"$set": fields})
        return result.matched_count == 1

    async def claim_due(self, now: float, lease_s: float) -> ClaimedDelivery | None:
        """Take the most overdue delivery (of jobs or runs, alternately first) for lease_s seconds."""
        first = self._next_kind
        self._next_kind = (first + 1) % len(KINDS)
        for kind in KINDS[first:] + KINDS[:first]:
            claimed = await self._claim_in(kind, now, lease_s)
            if claimed is not None:
                return claimed
        return None

    async def _claim_in(self, kind: str, now: float, lease_s: float) -> ClaimedDelivery | None:
        token = secrets.token_hex(8)
        lease_until = now + lease_s
        doc = await self.collections[kind].find_one_and_update(
            {"delivery_due": {"$lte": now}},
            {"$set": {"delivery_due": lease_until, "delivery.claim": token}, "$inc": {"delivery.attempts": 1}},
            sort=[("delivery_due", ASCENDING)],
            projection=list(CLAIM_FIELDS),
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        delivery = doc.get("delivery") if isinstance(doc.get("delivery"), dict) else {}
        document = {k: v for k, v in doc.items() if k not in ("_id", "delivery")}
        document["_id"] = str(doc["_id"])
        return ClaimedDelivery(
            kind=kind,
            owner_id=str(doc["_id"]),
            # A document with a due key but no delivery state (written by hand?) gets an id now.
            delivery_id=str(delivery.get("id") or secrets.token_hex(16)),
            url=doc.get("callback_url") if isinstance(doc.get("callback_url"), str) else None,
            attempt=int(delivery.get("attempts", 1)),
            expires=float(delivery.get("expires", now)),
            claim=token,
            lease_until=lease_until,
            body=delivery.get("body") if isinstance(delivery.get("body"), str) else None,
            document=document,
        )

    async def _finish(self, claimed: ClaimedDelivery, set_fields: dict[str, Any], unset_due: bool) -> bool:
        fence = {"_id": _owner_key(claimed.kind, claimed.owner_id), "delivery.claim": claimed.claim}
        update: dict[str, Any] = {"$set": set_fields, "$unset": {"delivery.claim": ""}}
        if unset_due:
            update["$unset"]["delivery_due"] = ""
        result = await self.collections[claimed.kind].update_one(fence, update)
        return result.modified_count == 1

    async def mark_delivered(self, claimed: ClaimedDelivery, at: float, body: str | None = None) -> bool:
        """Delivered: the document leaves the outbox. False if the claim was lost meanwhile."""
        return await self._finish(claimed, {"delivery.delivered_at": at, **_body(body)}, unset_due=True)

    async def mark_given_up(self, claimed: ClaimedDelivery, at: float, reason: str, body: str | None = None) -> bool:
        """Given up (refused, expired, or a target that is not allowed): leaves the outbox."""
        fields = {"delivery.given_up": at, "delivery.reason": reason[:500], **_body(body)}
        return await self._finish(claimed, fields, unset_due=True)

    async def schedule_retry(self, claimed: ClaimedDelivery, due: float, body: str | None = None) -> bool:
        """Not delivered yet: due again at `due`."""
        return await self._finish(claimed, {"delivery_due": due, **_body(body)}, unset_due=False)

    async def record_attempt(
        self, claimed: ClaimedDelivery, at: float, duration_s: float, outcome: str,
        status_code: int | None, error: str | None,
    ) -> None:  # fmt: skip
        """Log one attempt for attempts_for."""
        await self.attempts.insert_one(
            {"owner_id": claimed.owner_id, "kind": claimed.kind, "delivery_id": claimed.delivery_id,
             "attempt": claimed.attempt, "at": at, "duration_s": duration_s, "outcome": outcome,
             "status_code": status_code, "error": error}
        )  # fmt: skip

    async def attempts_for(self, owner_id: str) -> list[DeliveryAttempt]:
        """Every logged attempt of a job's (or run's) callback, oldest first."""
        docs = [d async for d in self.attempts.find({"owner_id": owner_id}, {"_id": 0})]
        docs.sort(key=lambda d: (d.get("at", 0.0), d.get("attempt", 0)))
        return [
            DeliveryAttempt(
                delivery_id=d["delivery_id"],
                attempt=d["attempt"],
                at=d["at"],
                duration_s=d.get("duration_s", 0.0),
                outcome=d["outcome"],
                status_code=d.get("status_code"),
                error=d.get("error"),
            )
            for d in docs
        ]

    async def delivery_state(self, kind: str, owner_id: str) -> dict[str, Any] | None:
        """The document's `delivery` subdocument without its body and claim (for status answers
        and tests); None if there is no such document or it has no callback."""
        oid = _owner_key(kind, owner_id)
        if oid is None:
            return None
        doc = await self.collections[kind].find_one({"_id": oid}, {"delivery": 1, "delivery_due": 1})
        if not doc or not isinstance(doc.get("delivery"), dict):
            return None
        state = {k: v for k, v in doc["delivery"].items() if k not in ("body", "claim")}
        state["pending"] = "delivery_due" in doc
        return state

    async def run_counts(self, run_id: str) -> dict[str, int]:
        """How many of a run's jobs are in each status (for a run's callback body)."""
        cursor = await self.collections["job"].aggregate(
            [{"$match": {"run_id": run_id}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        )
        return {str(row["_id"]): int(row["n"]) async for row in cursor}


def _body(body: str | None) -> dict[str, Any]:
    return {"delivery.body": body} if body is not None else {}


def _owner_key(kind: str, owner_id: str) -> Any:
    """The `_id` of an outbox document: an ObjectId for jobs and runs, the sha itself for builds."""
    return owner_id if kind == "image" else parse_id(owner_id)
