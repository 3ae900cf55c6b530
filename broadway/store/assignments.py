"""Assignments in the `assignments` collection, one document per (course, name)."""

from __future__ import annotations

import time
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from broadway.assignments import Assignment, Recipe


def _key(course: str, name: str) -> str:
    # One string key: names are unique within a course, and a lookup is one `_id` equality.
    return f"{course}:{name}"


def _assignment(doc: dict[str, Any]) -> Assignment:
    return Assignment(
        name=doc["name"],
        course=doc["course"],
        pipeline=doc["pipeline"],
        env=doc.get("env", {}),
        allowed_params=doc.get("allowed_params", []),
        limits=doc.get("limits", {}),
        description=doc.get("description", ""),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def _fields(recipe: Recipe) -> dict[str, Any]:
    return {
        "name": recipe.name,
        "pipeline": recipe.pipeline,
        "env": recipe.env,
        "allowed_params": recipe.allowed_params,
        "limits": recipe.limits,
        "description": recipe.description,
    }


class AssignmentStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.assignments = db.assignments

    async def create(self, course: str, recipe: Recipe) -> Assignment | None:
        """Store a new assignment; None if the course already has one of that name."""
        now = time.time()
        doc = {
            "_id": _key(course, recipe.name),
            "course": course,
            **_fields(recipe),
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self.assignments.insert_one(doc)
        except DuplicateKeyError:
            return None
        return _assignment(doc)

    async def put(self, course: str, recipe: Recipe) -> tuple[Assignment, bool]:
        """Create or replace; returns the assignment and whether it was created.

        Insert first, then replace on a duplicate key: nx-27017 ignores `$setOnInsert` on an
        upsert, which would lose `created_at`.
        """
        created = await self.create(course, recipe)
        if created is not None:
            return created, True
        doc = await self.assignments.find_one_and_update(
            {"_id": _key(course, recipe.name)},
            {"$set": {**_fields(recipe), "updated_at": time.time()}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # deleted between the two steps: create it after all
            return await self.put(course, recipe)
        return _assignment(doc), False

    async def get(self, course: str, name: str) -> Assignment | None:
        """The course's assignment of that name, or None."""
        doc = await self.assignments.find_one({"_id": _key(course, name)})
        return _assignment(doc) if doc else None

    async def delete(self, course: str, name: str) -> bool:
        """Remove it; False if there was none. Jobs already submitted keep their expanded stages."""
        result = await self.assignments.delete_one({"_id": _key(course, name)})
        return result.deleted_count == 1

    async def list(self, course: str) -> list[Assignment]:
        """The course's assignments by name (a course has tens, not thousands)."""
        docs = [_assignment(d) async for d in self.assignments.find({"course": course})]
        return sorted(docs, key=lambda a: a.name)
