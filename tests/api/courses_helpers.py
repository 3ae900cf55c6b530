"""Helpers of the courses tests: create a course, issue its token, sign JWTs."""

from __future__ import annotations

import time
from typing import Any

import jwt

from broadway.store.courses import split_token
from tests.helpers import ApiClient

JWT_SECRET = "jwt-secret-" + "j" * 60
JWT_AUDIENCE = "broadway-tests"
JWT_ISSUER = "https://lms.example.invalid"


async def create_course(api: ApiClient, name: str, **fields: Any) -> dict[str, Any]:
    resp = await api.request("POST", "/api/v1/courses", json_body={"name": name, **fields}, auth=True)
    assert resp.status == 201, resp.body
    return dict(resp.json)


async def issue_token(api: ApiClient, course: str, label: str = "") -> str:
    resp = await api.request("POST", f"/api/v1/courses/{course}/tokens", json_body={"label": label}, auth=True)
    assert resp.status == 201, resp.body
    return str(resp.json["token"])


async def course_client(api: ApiClient, name: str, **fields: Any) -> ApiClient:
    """A client of a new course, speaking with the course's token."""
    await create_course(api, name, **fields)
    return ApiClient(api.base_url, client_token=await issue_token(api, name))


def make_jwt(course: str, subject: str, key: Any = JWT_SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"tenantId": course, "sub": subject, "aud": JWT_AUDIENCE, "iss": JWT_ISSUER, "iat": now,
               "exp": now + 600} | claims  # fmt: skip
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm)


def jwt_options() -> dict[str, Any]:
    """make_api overrides that accept make_jwt's tokens."""
    return {"jwt_key": JWT_SECRET, "jwt_audience": JWT_AUDIENCE, "jwt_issuer": JWT_ISSUER}


def token_secret(token: str) -> str:
    """The secret part of a course token (`bwc_<id>_<secret>`; the secret itself may hold `_`)."""
    parts = split_token(token)
    assert parts is not None, "not a course token"
    return parts[1]
