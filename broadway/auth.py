"""Who is calling: the bearer token of a request resolved to a Caller (admin, course, JWT subject).

Three kinds of bearer token, told apart by their shape:
- the --client-token: the admin;
- `bwc_<id>_<secret>`: a course token, found by its public id, its secret compared as a digest;
- `<header>.<payload>.<signature>`: a JWT, when --jwt-key is set; signature, exp, nbf, aud and
  iss are verified, and `alg: none` (or any algorithm the key was not meant for) is refused.

Failures raise AuthError with a reason for the client; neither the reason nor the logs ever
carry the token itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from broadway.courses import ADMIN, DEFAULT_COURSE, Caller, CallerKind
from broadway.store.courses import CourseStore, split_token
from broadway.tokens import same_secret

log = logging.getLogger(__name__)

TENANT_CLAIM = "tenantId"
# Clocks of the LMS that signs and of the API differ a little.
JWT_LEEWAY_S = 10.0
MAX_JWT_CHARS = 8192
NEEDED = "a valid client token is required (Authorization: Bearer <client token, course token or JWT>)"


class AuthError(Exception):
    """The request's credentials are missing or not valid (401); the message says which, never the token."""


class JwtKeyError(ValueError):
    """--jwt-key names a file that cannot be used."""


@dataclass(frozen=True)
class JwtVerifier:
    """The keys (and the algorithm each is for) tokens must be signed with, and the claims required."""

    keys: tuple[tuple[Any, str, str | None], ...]  # (key, algorithm, kid)
    audience: str | None
    issuer: str | None

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims; AuthError naming what is wrong otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a valid JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        candidates = [(key, a) for key, a, k in self.keys if a == alg and (kid is None or k is None or k == kid)]
        if not candidates:
            raise AuthError(f"JWT algorithm {str(alg)[:20]!r} is not accepted")
        required = ["exp", "sub"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        options: Options = {"require": required, "verify_aud": self.audience is not None, "verify_signature": True}
        last: jwt.PyJWTError | None = None
        for key, algorithm in candidates:
            try:
                return dict(jwt.decode(
                    token, key, algorithms=[algorithm], audience=self.audience, issuer=self.issuer,
                    leeway=JWT_LEEWAY_S, options=options,
                ))  # fmt: skip
            except jwt.InvalidSignatureError as e:
                last = e  # another key of the set may be the one
            except jwt.PyJWTError as e:
                raise AuthError(f"JWT refused: {_reason(e)}") from None
        raise AuthError(f"JWT refused: {_reason(last) if last else 'no key matches'}")


def _reason(e: jwt.PyJWTError) -> str:
    # PyJWT's messages name the claim, never the token.
    return str(e)[:200] or type(e).__name__


def load_jwt_verifier(key_text: str | None, audience: str | None, issuer: str | None) -> JwtVerifier | None:
    """The verifier --jwt-key describes: a PEM public key file (RS256/ES256), a JWKS file, or else
    the HS256 shared secret itself. None when JWTs are not configured. Read at startup."""
    if not key_text:
        return None
    path = Path(key_text)
    if not _looks_like_path(key_text):
        if len(key_text) < 32:
            raise JwtKeyError("--jwt-key as an HS256 secret must be at least 32 characters")
        return JwtVerifier(keys=((key_text, "HS256", None),), audience=audience, issuer=issuer)
    try:
        text = path.read_text()
    except OSError as e:
        raise JwtKeyError(f"--jwt-key {key_text}: {e.strerror or e}") from None
    if text.lstrip().startswith("{"):
        return JwtVerifier(keys=_jwks_keys(text, key_text), audience=audience, issuer=issuer)
    try:
        public_key = load_pem_public_key(text.encode())
    except ValueError:
        raise JwtKeyError(f"--jwt-key {key_text}: not a PEM public key nor a JWKS document") from None
    return JwtVerifier(
        keys=((public_key, _algorithm_for(public_key, key_text), None),), audience=audience, issuer=issuer
    )


def _looks_like_path(text: str) -> bool:
    return Path(text).is_file() or text.startswith(("/", "./", "../", "~")) or text.endswith((".pem", ".json"))


def _algorithm_for(key: Any, where: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256"
    raise JwtKeyError(f"--jwt-key {where}: only RSA (RS256) and P-256 (ES256) public keys are accepted")


def _jwks_keys(text: str, where: str) -> tuple[tuple[Any, str, str | None], ...]:
    try:
        document = json.loads(text)
        keys = []
        for entry in document["keys"]:
            if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
                continue
            key = jwt.PyJWK(entry).key
            keys.append((key, _algorithm_for(key, where), entry.get("kid")))
    except (ValueError, KeyError, TypeError, jwt.PyJWTError) as e:
        raise JwtKeyError(f"--jwt-key {where}: not a usable JWKS document ({e})") from None
    if not keys:
        raise JwtKeyError(f"--jwt-key {where}: the JWKS holds no RSA or P-256 signing key")
    return tuple(keys)


class Authenticator:
    """Resolves a bearer token to a Caller; one per API process."""

    def __init__(self, admin_token: str, courses: CourseStore, jwt_verifier: JwtVerifier | None) -> None:
        self.admin_token = admin_token
        self.courses = courses
        self.jwt = jwt_verifier

    async def caller(self, token: str | None) -> Caller:
        """The caller the token names; AuthError if there is none or it is not valid."""
        if token is None:
            raise AuthError(NEEDED)
        if same_secret(token, self.admin_token):
            return ADMIN
        parts = split_token(token)
        if parts is not None:
            found = await self.courses.check_token(*parts)
            if found is None:
                raise AuthError("the course token is not valid (unknown, wrong or revoked)")
            return Caller(kind=CallerKind.COURSE, course=found.course, token_id=found.id)
        if token.count(".") == 2 and self.jwt is not None:
            if len(token) > MAX_JWT_CHARS:
                raise AuthError(f"the JWT is longer than {MAX_JWT_CHARS} characters")
            return await self._jwt_caller(self.jwt.verify(token))
        raise AuthError(NEEDED)

    async def _jwt_caller(self, claims: dict[str, Any]) -> Caller:
        course, subject = claims.get(TENANT_CLAIM), claims.get("sub")
        if not isinstance(course, str) or not course:
            raise AuthError(f"JWT refused: the {TENANT_CLAIM!r} claim (the course) is missing")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise AuthError("JWT refused: the 'sub' claim must be a string of 1 to 256 characters")
        if course != DEFAULT_COURSE and await self.courses.get(course) is None:
            raise AuthError(f"JWT refused: no course named {course[:64]!r}")
        return Caller(kind=CallerKind.SUBJECT, course=course, subject=subject)
