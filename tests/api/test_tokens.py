"""Who may call: course tokens and JWTs (wrong, revoked, expired, wrong audience or issuer, bad
signature, alg none -> 401), deny by default for undeclared handlers, and no token in any log."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broadway.handlers import default_handlers
from broadway.handlers.base import declared_access
from tests.api.courses_helpers import (
    JWT_SECRET,
    course_client,
    create_course,
    issue_token,
    jwt_options,
    make_jwt,
    token_secret,
)
from tests.conftest import MakeApi
from tests.helpers import ApiClient

JOB = "/api/v1/job"


def inline_job() -> dict[str, Any]:
    return {"pipeline": [{"image": "busybox-test", "entrypoint": ["true"]}], "files": {"main.c": {"content": "aW50"}}}


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def status_with(api: ApiClient, token: str) -> tuple[int, str]:
    resp = await api.request("GET", "/api/v1/assignments", headers={"Authorization": f"Bearer {token}"})
    return resp.status, resp.json.get("error", "") if resp.status >= 400 else ""


async def test_course_tokens_that_are_wrong_or_revoked_are_401(api: ApiClient) -> None:
    await create_course(api, "cs241")
    token = await issue_token(api, "cs241")
    assert (await status_with(api, token))[0] == 200
    public_id = token.split("_")[1]
    missing = await api.request("GET", "/api/v1/assignments")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), f"bwc_{'0' * 16}_secret", "bwc_short_x", "nonsense"):
        assert (await status_with(api, bad))[0] == 401, bad
    await api.request("DELETE", f"/api/v1/courses/cs241/tokens/{public_id}", auth=True)
    assert (await status_with(api, token))[0] == 401


async def test_a_jwt_names_its_course_and_subject(make_api: MakeApi) -> None:
    service = await make_api(**jwt_options())
    admin = ApiClient(service.url)
    await create_course(admin, "cs241")
    student = ApiClient(service.url, client_token=make_jwt("cs241", "alice"))
    resp = await student.request("POST", JOB, json_body=inline_job(), auth=True)
    assert resp.status == 201, resp.body
    assert (await student.request("GET", f"{JOB}/{resp.json['id']}", auth=True)).status == 200
    # Subjects do not manage the course's assignments nor see its dashboard.
    assert (await student.request("GET", "/api/v1/assignments", auth=True)).status == 403
    assert (await student.request("GET", "/api/v1/summary", auth=True)).status == 403


async def test_bad_jwts_are_401(make_api: MakeApi) -> None:
    service = await make_api(**jwt_options())
    api = ApiClient(service.url)
    await create_course(api, "cs241")
    now = int(time.time())
    good = {"tenantId": "cs241", "sub": "alice", "aud": "broadway-tests", "iss": "https://lms.example.invalid",
            "exp": now + 600}  # fmt: skip
    cases = {
        "expired": make_jwt("cs241", "alice", exp=now - 120),
        "not yet valid": make_jwt("cs241", "alice", nbf=now + 600),
        "wrong audience": make_jwt("cs241", "alice", aud="another-service"),
        "no audience": make_jwt("cs241", "alice", aud=None),
        "wrong issuer": make_jwt("cs241", "alice", iss="https://evil.example.invalid"),
        "bad signature": make_jwt("cs241", "alice", key="another-secret-" + "x" * 60),
        "tampered": make_jwt("cs241", "alice")[:-4] + "AAAA",
        "alg none": unsigned(good),
        "alg HS512": make_jwt("cs241", "alice", algorithm="HS512"),
        "no exp": make_jwt("cs241", "alice", exp=None),
        "no tenantId": make_jwt(None, "alice"),  # type: ignore[arg-type]
        "unknown course": make_jwt("nosuchcourse", "alice"),
        "not a jwt": "a.b.c",
    }
    for what, token in cases.items():
        status, error = await status_with(api, token)
        assert status == 401, (what, status, error)
        assert token not in error, what
    assert (await status_with(api, make_jwt("cs241", "alice")))[0] == 403, "the good one gets past authentication"


async def test_jwts_are_refused_when_no_key_is_configured(api: ApiClient) -> None:
    await create_course(api, "cs241")
    assert (await status_with(api, make_jwt("cs241", "alice")))[0] == 401


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("kind", ["RS256", "ES256", "JWKS"])
async def test_public_key_jwts(make_api: MakeApi, tmp_path: Path, kind: str) -> None:
    private: Any = ec.generate_private_key(ec.SECP256R1()) if kind == "ES256" else rsa.generate_private_key(65537, 2048)
    algorithm = "ES256" if kind == "ES256" else "RS256"
    if kind == "JWKS":
        entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())) | {"kid": "k1", "use": "sig"}
        key_file = tmp_path / "jwks.json"
        key_file.write_text(json.dumps({"keys": [entry]}))
    else:
        key_file = tmp_path / "key.pem"
        key_file.write_bytes(_pem(private.public_key()))
    service = await make_api(jwt_key=str(key_file), jwt_audience="broadway-tests", jwt_issuer=None)
    api = ApiClient(service.url)
    await create_course(api, "cs241")
    headers = {"kid": "k1"} if kind == "JWKS" else None
    now = int(time.time())
    claims = {"tenantId": "cs241", "sub": "bob", "aud": "broadway-tests", "exp": now + 60}
    signed = jwt.encode(claims, private, algorithm=algorithm, headers=headers)
    student = ApiClient(service.url, client_token=signed)
    assert (await student.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201
    # The public key as an HMAC secret (algorithm confusion) is refused.
    confused = jwt.api_jws.PyJWS()._algorithms["HS256"]
    header = {"alg": "HS256", "typ": "JWT"}
    segments = [base64.urlsafe_b64encode(json.dumps(x).encode()).rstrip(b"=") for x in (header, claims)]
    signing_input = b".".join(segments)
    signature = confused.sign(signing_input, _pem(private.public_key()))
    forged = (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    assert (await status_with(api, forged))[0] == 401
    other: Any = ec.generate_private_key(ec.SECP256R1()) if kind == "ES256" else rsa.generate_private_key(65537, 2048)
    assert (await status_with(api, jwt.encode(claims, other, algorithm=algorithm, headers=headers)))[0] == 401


def test_every_routed_handler_method_declares_its_access() -> None:
    """Deny by default means an undeclared method is locked: none of the real ones may be."""
    undeclared = []
    for _pattern, handler_class, *_ in default_handlers:
        for method in ("get", "post", "put", "patch", "delete"):
            if getattr(handler_class, method) is not getattr(__import__("tornado.web").web.RequestHandler, method):
                if hasattr(handler_class, "services") and declared_access(handler_class, method) is None:
                    undeclared.append(f"{handler_class.__name__}.{method}")
    assert undeclared == []


async def test_a_handler_that_declares_nothing_is_refused(api: ApiClient, make_api: MakeApi) -> None:
    from broadway.handlers.base import APIHandler

    class Forgetful(APIHandler):
        async def get(self) -> None:
            self.write_json({"secret": "data"})

    service = await make_api()
    service._server.request_callback.add_handlers(r".*", [(r"/forgetful", Forgetful)])  # type: ignore[union-attr]
    client = ApiClient(service.url)
    assert (await client.request("GET", "/forgetful")).status == 401
    assert (await client.request("GET", "/forgetful", auth=True)).status == 403


async def test_tokens_and_jwts_never_appear_in_logs(make_api: MakeApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    service = await make_api(**jwt_options())
    admin = ApiClient(service.url)
    course_api = await course_client(admin, "cs241")
    token = course_api.client_token
    good_jwt, bad_jwt = make_jwt("cs241", "alice"), make_jwt("cs241", "alice", key="wrong-secret-" + "w" * 60)
    expired = make_jwt("cs241", "alice", exp=int(time.time()) - 100)
    for secret in (token, good_jwt, bad_jwt, expired, token + "x"):
        client = ApiClient(service.url, client_token=secret)
        await client.request("POST", JOB, json_body=inline_job(), auth=True)
        await client.request("GET", "/api/v1/assignments", params={"token": secret}, auth=True)
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    for secret in (token, token_secret(token), good_jwt, bad_jwt, expired, JWT_SECRET):
        assert secret not in text
    assert "401" in text, "the refusals are logged (without the tokens)"
