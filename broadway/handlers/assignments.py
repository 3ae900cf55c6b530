"""Client endpoints for assignments: the saved recipes that single submissions name."""

from __future__ import annotations

from broadway.assignments import Recipe, check_recipe
from broadway.courses import Scope
from broadway.handlers.base import ApiError, APIHandler, needs_scope
from broadway.validation import SubmissionError

# Assignments are a course's: each is found by (the caller's course, name), so another course's
# assignment of the same name is simply not there (404). The admin's course is the default one.


class AssignmentBase(APIHandler):
    def recipe_from_body(self, name: str | None = None) -> Recipe:
        """The checked assignment in the request body (with the path's name, for PUT); 400 otherwise."""
        body = self.json_body
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object (the assignment)")
        if name is not None:
            if body.setdefault("name", name) != name:
                raise ApiError(400, f"$.name: {body['name']!r} differs from the name in the path ({name!r})")
        try:
            return check_recipe(body, self.services.config.stage_ceilings)
        except SubmissionError as e:
            raise ApiError(400, f"invalid assignment: {e}") from None


class AssignmentsHandler(AssignmentBase):
    @needs_scope(Scope.ASSIGNMENTS)
    async def get(self) -> None:
        """Every assignment of the caller's course."""
        assignments = await self.services.store.assignments.list(self.course_of_caller())
        self.write_json({"assignments": [a.public() for a in assignments]})

    @needs_scope(Scope.ASSIGNMENTS)
    async def post(self) -> None:
        """Save a new assignment: 201; 409 if the name is taken (PUT replaces)."""
        recipe = self.recipe_from_body()
        created = await self.services.store.assignments.create(self.course_of_caller(), recipe)
        if created is None:
            raise ApiError(
                409, f"an assignment named {recipe.name!r} exists; PUT /api/v1/assignments/{recipe.name} replaces it"
            )
        self.set_header("Location", f"/api/v1/assignments/{recipe.name}")
        self.write_json(created.public(), status=201)


class AssignmentHandler(AssignmentBase):
    @needs_scope(Scope.ASSIGNMENTS)
    async def get(self, name: str) -> None:
        assignment = await self.services.store.assignments.get(self.course_of_caller(), name)
        if assignment is None:
            raise ApiError(404, f"no assignment named {name!r}")
        self.write_json(assignment.public())

    @needs_scope(Scope.ASSIGNMENTS)
    async def put(self, name: str) -> None:
        """Create or replace: 201 or 200. Jobs already submitted keep the stages they were given."""
        recipe = self.recipe_from_body(name)
        assignment, created = await self.services.store.assignments.put(self.course_of_caller(), recipe)
        self.write_json(assignment.public(), status=201 if created else 200)

    @needs_scope(Scope.ASSIGNMENTS)
    async def delete(self, name: str) -> None:
        if not await self.services.store.assignments.delete(self.course_of_caller(), name):
            raise ApiError(404, f"no assignment named {name!r}")
        self.write_json({"name": name, "deleted": True})


default_handlers = [
    (r"/api/v1/assignments/?", AssignmentsHandler),
    (r"/api/v1/assignments/([^/]+)/?", AssignmentHandler),
]
