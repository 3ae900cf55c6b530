"""Courses and who may see what: the caller a request is made by, the owner a resource records,
and the rule between them.

One deployment serves many courses. Three kinds of caller:
- the admin (the --client-token): every resource, and the courses themselves;
- a course token: its course's resources;
- a JWT subject (a student or an LMS user, tenantId = course, sub = subject): only what it submitted.

With no courses configured, the admin is the only caller and owns everything in the implicit
course "default", as before courses existed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_COURSE = "default"
COURSE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_RATE_PER_SECOND = 10_000.0
MAX_BURST = 1_000_000
MAX_WEIGHT = 1000.0
# Above any real queue, and inside what the store can hold (64-bit integers).
MAX_QUEUED = 10_000_000


class CourseError(ValueError):
    """A course definition or change that cannot be accepted; the message names the field."""


class CallerKind(StrEnum):
    ADMIN = "admin"
    COURSE = "course"
    SUBJECT = "subject"


class Scope(StrEnum):
    """What a handler method needs (@needs_scope); each kind of caller holds a fixed set."""

    RUNS = "runs"
    JOBS = "jobs"
    ASSIGNMENTS = "assignments"
    SUMMARY = "summary"
    # GET of one's own course (a course token reads its own settings and limits).
    COURSE_READ = "course:read"
    ADMIN = "admin"


SCOPES: dict[CallerKind, frozenset[Scope]] = {
    CallerKind.ADMIN: frozenset(Scope),
    CallerKind.COURSE: frozenset({Scope.RUNS, Scope.JOBS, Scope.ASSIGNMENTS, Scope.SUMMARY, Scope.COURSE_READ}),
    # A subject submits and follows its own work; assignments and the dashboard are the course's.
    CallerKind.SUBJECT: frozenset({Scope.RUNS, Scope.JOBS}),
}


@dataclass(frozen=True)
class Owner:
    """Who a run, job or assignment belongs to. subject None: the course as a whole."""

    course: str = DEFAULT_COURSE
    subject: str | None = None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Owner:
        """The owner recorded in a stored document; documents from before courses are the default course's."""
        return cls(course=str(doc.get("course") or DEFAULT_COURSE), subject=doc.get("owner_subject") or None)


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    course: str
    subject: str | None = None
    # A course token's public id (for logs: never the secret).
    token_id: str | None = None

    @property
    def scopes(self) -> frozenset[Scope]:
        return SCOPES[self.kind]

    @property
    def owner(self) -> Owner:
        """The owner this caller's new resources record."""
        return Owner(course=self.course, subject=self.subject if self.kind is CallerKind.SUBJECT else None)

    def sees(self, owner: Owner) -> bool:
        """May this caller read, change or cancel a resource of that owner? (Else it answers 404.)"""
        if self.kind is CallerKind.ADMIN:
            return True
        if owner.course != self.course:
            return False
        return self.kind is CallerKind.COURSE or owner.subject == self.subject


ADMIN = Caller(kind=CallerKind.ADMIN, course=DEFAULT_COURSE)


@dataclass(frozen=True)
class Rate:
    """A token bucket: `per_second` submissions refill it, `burst` is its size."""

    per_second: float
    burst: int

    def to_json(self) -> dict[str, Any]:
        return {"per_second": self.per_second, "burst": self.burst}


@dataclass(frozen=True)
class Course:
    name: str
    weight: float = 1.0
    max_queued: int | None = None
    rate: Rate | None = None
    # Signs this course's callbacks; None: the deployment's secret.
    callback_secret: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """The course as the API shows it (the callback secret only as whether one is set)."""
        return {
            "name": self.name,
            "weight": self.weight,
            "max_queued": self.max_queued,
            "rate": self.rate.to_json() if self.rate else None,
            "has_callback_secret": self.callback_secret is not None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


# Fields a course is created with, and which of them PATCH may change.
COURSE_FIELDS = ("name", "weight", "max_queued", "rate", "callback_secret")


def check_course_name(name: Any) -> str:
    if not isinstance(name, str) or not COURSE_NAME.fullmatch(name):
        raise CourseError("$.name must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def check_course_fields(body: Any, creating: bool) -> dict[str, Any]:
    """The checked fields of a POST (creating) or PATCH body, normalized; CourseError names the bad one."""
    if not isinstance(body, dict):
        raise CourseError("the request body must be a JSON object")
    allowed = COURSE_FIELDS if creating else COURSE_FIELDS[1:]
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise CourseError(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    if not creating and not body:
        raise CourseError(f"nothing to change: send one of {', '.join(allowed)}")
    fields: dict[str, Any] = {}
    if creating:
        fields["name"] = check_course_name(body.get("name"))
        if fields["name"] == DEFAULT_COURSE:
            raise CourseError(f"$.name: {DEFAULT_COURSE!r} is the implicit course of the admin token")
    if "weight" in body or creating:
        weight = body.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= MAX_WEIGHT:
            raise CourseError(f"$.weight must be a number above 0 and at most {MAX_WEIGHT:g}")
        fields["weight"] = float(weight)
    if "max_queued" in body:
        value = body["max_queued"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUEUED
        ):
            raise CourseError(f"$.max_queued must be an integer from 1 to {MAX_QUEUED}, or null for no limit")
        fields["max_queued"] = value
    if "rate" in body:
        fields["rate"] = check_rate(body["rate"])
    if "callback_secret" in body:
        secret = body["callback_secret"]
        if secret is not None and (not isinstance(secret, str) or not 16 <= len(secret) <= 512):
            raise CourseError("$.callback_secret must be a string of 16 to 512 characters, or null")
        fields["callback_secret"] = secret
    return fields


def check_rate(value: Any) -> Rate | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"per_second", "burst"} or "per_second" not in value:
        raise CourseError('$.rate must be {"per_second": <submissions a second>, "burst": <bucket size>} or null')
    per_second = value["per_second"]
    if (
        isinstance(per_second, bool)
        or not isinstance(per_second, int | float)
        or not math.isfinite(per_second)
        or not 0 < per_second <= MAX_RATE_PER_SECOND
    ):
        raise CourseError(f"$.rate.per_second must be a number above 0 and at most {MAX_RATE_PER_SECOND:g}")
    burst = value.get("burst", max(1, math.ceil(per_second)))
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
        raise CourseError(f"$.rate.burst must be an integer from 1 to {MAX_BURST}")
    return Rate(per_second=float(per_second), burst=burst)
