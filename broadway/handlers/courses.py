"""Courses and their tokens (admin): POST/GET/PATCH/DELETE /api/v1/courses, and
/api/v1/courses/{name}/tokens to issue, list and revoke course tokens.

A course token reads its own course (GET) and nothing else of this resource: any other course
is 404 to it, as if it did not exist.
"""

from __future__ import annotations

import logging
from typing import Any

from broadway.courses import CallerKind, Course, CourseError, Scope, check_course_fields
from broadway.handlers.base import ApiError, APIHandler, needs_scope

log = logging.getLogger(__name__)

MAX_LABEL_CHARS = 200


class CourseBase(APIHandler):
    def checked_fields(self, creating: bool) -> dict[str, Any]:
        try:
            return check_course_fields(self.json_body, creating)
        except CourseError as e:
            raise ApiError(400, f"invalid course: {e}") from None

    async def visible_course(self, name: str) -> Course:
        """The course, if the caller may see it (the admin: any; a course token: its own); else 404."""
        course = await self.services.courses.get(name)
        if course is None or (self.caller.kind is not CallerKind.ADMIN and self.caller.course != name):
            raise ApiError(404, f"no course named {name[:64]!r}")
        return course


class CoursesHandler(CourseBase):
    @needs_scope(Scope.COURSE_READ)
    async def get(self) -> None:
        """Every course (the admin), or the caller's own."""
        courses = await self.services.courses.all()
        if self.caller.kind is not CallerKind.ADMIN:
            courses = [c for c in courses if c.name == self.caller.course]
        self.write_json({"courses": [c.public() for c in courses]})

    @needs_scope(Scope.ADMIN)
    async def post(self) -> None:
        """Create a course: {"name", "weight": 1, "max_queued": null, "rate": null, "callback_secret": null}."""
        fields = self.checked_fields(creating=True)
        course = await self.services.courses.create(fields)
        if course is None:
            raise ApiError(409, f"a course named {fields['name']!r} exists; PATCH /api/v1/courses/{fields['name']}")
        log.info("course %s created", course.name)
        self.set_header("Location", f"/api/v1/courses/{course.name}")
        self.write_json(course.public(), status=201)


class CourseHandler(CourseBase):
    @needs_scope(Scope.COURSE_READ)
    async def get(self, name: str) -> None:
        self.write_json((await self.visible_course(name)).public())

    @needs_scope(Scope.ADMIN)
    async def patch(self, name: str) -> None:
        """Change weight, max_queued, rate or callback_secret; a new rate starts with a full bucket."""
        fields = self.checked_fields(creating=False)
        course = await self.services.courses.change(name, fields)
        if course is None:
            raise ApiError(404, f"no course named {name[:64]!r}")
        if "rate" in fields:
            await self.services.rate_limits.forget(name)
        log.info("course %s changed: %s", name, ", ".join(sorted(fields)))
        self.write_json(course.public())

    @needs_scope(Scope.ADMIN)
    async def delete(self, name: str) -> None:
        """Remove the course and revoke its tokens. Its runs and jobs stay (the admin still sees them)."""
        if not await self.services.courses.delete(name):
            raise ApiError(404, f"no course named {name[:64]!r}")
        await self.services.rate_limits.forget(name)
        log.info("course %s deleted, its tokens revoked", name)
        self.write_json({"name": name, "deleted": True})


class CourseTokensHandler(CourseBase):
    @needs_scope(Scope.ADMIN)
    async def get(self, name: str) -> None:
        """The course's tokens: ids, labels, when created, last used, revoked; never the secrets."""
        course = await self.visible_course(name)
        tokens = await self.services.courses.tokens_of(course.name)
        self.write_json({"course": course.name, "tokens": [t.public() for t in tokens]})

    @needs_scope(Scope.ADMIN)
    async def post(self, name: str) -> None:
        """Issue a token: 201 with `token`, shown this once (only its digest is kept)."""
        course = await self.visible_course(name)
        body = self.json_body
        label = body.get("label", "") if isinstance(body, dict) else self.arg("label") or ""
        if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
            raise ApiError(400, f"label must be a string of at most {MAX_LABEL_CHARS} characters")
        record, token = await self.services.courses.issue_token(course.name, label)
        log.info("token %s issued for course %s", record.id, course.name)
        self.write_json(record.public() | {"token": token}, status=201)


class CourseTokenHandler(CourseBase):
    @needs_scope(Scope.ADMIN)
    async def delete(self, name: str, token_id: str) -> None:
        """Revoke a token (at once, in every API process: each request looks its token up)."""
        revoked = await self.services.courses.revoke_token(name, token_id)
        if revoked is None:
            raise ApiError(404, f"course {name[:64]!r} has no token {token_id[:40]!r}")
        log.info("token %s of course %s revoked", revoked.id, name)
        self.write_json(revoked.public())


default_handlers = [
    (r"/api/v1/courses/?", CoursesHandler),
    (r"/api/v1/courses/([^/]+)/tokens/?", CourseTokensHandler),
    (r"/api/v1/courses/([^/]+)/tokens/([^/]+)/?", CourseTokenHandler),
    (r"/api/v1/courses/([^/]+)/?", CourseHandler),
]
