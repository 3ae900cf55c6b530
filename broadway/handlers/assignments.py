"""Client endpoints for assignments: the saved recipes that single submissions name."""

from __future__ import annotations

from broadway.assignments import Recipe, check_recipe
from broadway.handlers.base import ApiError, APIHandler
from broadway.validation import SubmissionError

# Until courses exist every client is in this one.
DEFAULT_COURSE = "default"


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
    async def get(self) -> None:
        """Every assignment of the caller's course."""
        self.require_client()
        assignments = await self.services.store.assignments.list(DEFAULT_COURSE)
        self.write_json({"assignments": [a.public() for a in assignments]})

    async def post(self) -> None:
        """Save a new assignment: 201; 409 if the name is taken (PUT replaces)."""
        self.require_client()
        recipe = self.recipe_from_body()
        created = await self.services.store.assignments.create(DEFAULT_COURSE, recipe)
        if created is None:
            raise ApiError(
                409, f"an assignment named {recipe.name!r} exists; PUT /api/v1/assignments/{recipe.name} replaces it"
            )
        self.set_header("Location", f"/api/v1/assignments/{recipe.name}")
        self.write_json(created.public(), status=201)


class AssignmentHandler(AssignmentBase):
    async def get(self, name: str) -> None:
        self.require_client()
        assignment = await self.services.store.assignments.get(DEFAULT_COURSE, name)
        if assignment is None:
            raise ApiError(404, f"no assignment named {name!r}")
        self.write_json(assignment.public())

    async def put(self, name: str) -> None:
        """Create or replace: 201 or 200. Jobs already submitted keep the stages they were given."""
        self.require_client()
        recipe = self.recipe_from_body(name)
        assignment, created = await self.services.store.assignments.put(DEFAULT_COURSE, recipe)
        self.write_json(assignment.public(), status=201 if created else 200)

    async def delete(self, name: str) -> None:
        self.require_client()
        if not await self.services.store.assignments.delete(DEFAULT_COURSE, name):
            raise ApiError(404, f"no assignment named {name!r}")
        self.write_json({"name": name, "deleted": True})


default_handlers = [
    (r"/api/v1/assignments/?", AssignmentsHandler),
    (r"/api/v1/assignments/([^/]+)/?", AssignmentHandler),
]
