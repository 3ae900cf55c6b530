"""Courses (`courses`, one document per name) and their tokens (`course_tokens`, one per token).

A course token is `bwc_<public id>_<secret>`: the public id is the token document's `_id`, so a
request's token is found with one `_id` equality, and only a digest of the secret is kept.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from broadway.courses import Course, Rate
from broadway.store.ids import parse_id
from broadway.tokens import digest

TOKEN_PREFIX = "bwc_"  # noqa: S105 (a marker, not a secret)
# last_used is written at most this often per token: not one store write per request.
LAST_USED_RESOLUTION_S = 60.0


@dataclass(frozen=True)
class CourseToken:
    id: str
    course: str
    label: str
    created_at: float
    revoked_at: float | None
    last_used: float | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "course": self.course,
            "label": self.label,
            "created_at": self.created_at,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
            "last_used": self.last_used,
        }


def split_token(token: str) -> tuple[str, str] | None:
    """(public id, secret) of something shaped like a course token, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    public_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(public_id) != 16 or not secret or len(secret) > 128:
        return None
    return public_id, secret


def _course(doc: dict[str, Any]) -> Course:
    rate = doc.get("rate")
    return Course(
        name=doc["_id"],
        weight=float(doc.get("weight", 1.0)),
        max_queued=doc.get("max_queued"),
        rate=Rate(per_second=float(rate["per_second"]), burst=int(rate["burst"])) if rate else None,
        callback_secret=doc.get("callback_secret"),
        created_at=doc.get("created_at", 0.0),
        updated_at=doc.get("updated_at", 0.0),
    )


def _token(doc: dict[str, Any]) -> CourseToken:
    return CourseToken(
        id=doc["_id"],
        course=doc["course"],
        label=doc.get("label", ""),
        created_at=doc["created_at"],
        revoked_at=doc.get("revoked_at"),
        last_used=doc.get("last_used"),
    )


def _stored_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    out.pop("name", None)
    if "rate" in out and out["rate"] is not None:
        out["rate"] = out["rate"].to_json()
    return out


class CourseStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.courses = db.courses
        self.tokens = db.course_tokens
        self._owners = {"job": db.jobs, "run": db.runs}

    async def callback_secret_for(self, kind: str, owner_id: str) -> str | None:
        """The secret a job's or run's callback is signed with when its course has its own;
        None: the deployment's. (The Deliverer's `secret_for`.)"""
        collection = self._owners.get(kind)
        oid = parse_id(owner_id)
        if collection is None or oid is None:
            return None
        doc = await collection.find_one({"_id": oid}, {"course": 1})
        course = doc.get("course") if doc else None
        if not course:
            return None
        found = await self.courses.find_one({"_id": course}, {"callback_secret": 1})
        return (found or {}).get("callback_secret") or None

    async def ensure_indexes(self) -> None:
        """The token list of a course is found by its `course`."""
        await self.tokens.create_index("course")

    async def create(self, fields: dict[str, Any]) -> Course | None:
        """Store a new course from checked fields; None if the name is taken."""
        now = time.time()
        doc = {"_id": fields["name"], "weight": 1.0, "max_queued": None, "rate": None, "callback_secret": None}
        doc |= _stored_fields(fields) | {"created_at": now, "updated_at": now}
        try:
            await self.courses.insert_one(doc)
        except DuplicateKeyError:
            return None
        return _course(doc)

    async def get(self, name: str) -> Course | None:
        """The course, or None."""
        doc = await self.courses.find_one({"_id": name})
        return _course(doc) if doc else None

    async def all(self) -> list[Course]:
        """Every course by name (a deployment has tens, not thousands)."""
        return sorted([_course(d) async for d in self.courses.find({})], key=lambda c: c.name)

    async def change(self, name: str, fields: dict[str, Any]) -> Course | None:
        """Apply checked PATCH fields; None if there is no such course."""
        doc = await self.courses.find_one_and_update(
            {"_id": name},
            {"$set": _stored_fields(fields) | {"updated_at": time.time()}},
            return_document=ReturnDocument.AFTER,
        )
        return _course(doc) if doc else None

    async def delete(self, name: str) -> bool:
        """Remove the course and revoke its tokens; False if there was none. Its runs and jobs stay."""
        result = await self.courses.delete_one({"_id": name})
        if result.deleted_count != 1:
            return False
        await self.tokens.update_many({"course": name, "revoked_at": None}, {"$set": {"revoked_at": time.time()}})
        return True

    # -- tokens ------------------------------------------------------------------------------

    async def issue_token(self, course: str, label: str) -> tuple[CourseToken, str]:
        """A new token for the course: its record and the token itself (shown once, never stored)."""
        while True:
            public_id = secrets.token_hex(8)
            secret = secrets.token_urlsafe(32)
            doc = {"_id": public_id, "course": course, "label": label, "hash": digest(secret),
                   "created_at": time.time(), "revoked_at": None, "last_used": None}  # fmt: skip
            try:
                await self.tokens.insert_one(doc)
            except DuplicateKeyError:
                continue  # 64 random bits collided: draw again
            return _token(doc), f"{TOKEN_PREFIX}{public_id}_{secret}"

    async def tokens_of(self, course: str) -> list[CourseToken]:
        """Every token ever issued to the course (revoked ones too), oldest first."""
        docs = [_token(d) async for d in self.tokens.find({"course": course})]
        return sorted(docs, key=lambda t: t.created_at)

    async def revoke_token(self, course: str, token_id: str) -> CourseToken | None:
        """Revoke (idempotently); None if the course has no token with that id."""
        doc = await self.tokens.find_one({"_id": token_id})
        if doc is None or doc["course"] != course:
            return None
        if doc.get("revoked_at") is None:
            doc = await self.tokens.find_one_and_update(
                {"_id": token_id}, {"$set": {"revoked_at": time.time()}}, return_document=ReturnDocument.AFTER
            )
        return _token(doc) if doc else None

    async def check_token(self, public_id: str, secret: str) -> CourseToken | None:
        """The live token these parts name, or None (unknown, wrong secret, revoked). Notes last_used."""
        doc = await self.tokens.find_one({"_id": public_id})
        if doc is None or not hmac.compare_digest(str(doc.get("hash", "")), digest(secret)):
            return None
        if doc.get("revoked_at") is not None:
            return None
        now = time.time()
        if (doc.get("last_used") or 0.0) < now - LAST_USED_RESOLUTION_S:
            await self.tokens.update_one({"_id": public_id}, {"$set": {"last_used": now}})
            doc["last_used"] = now
        return _token(doc)
