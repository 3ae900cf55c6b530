"""`broadway-admin`: manage courses and their tokens from a shell, through the API, with the
admin token (the API's --client-token, from env BROADWAY_CLIENT_TOKEN).

    broadway-admin list
    broadway-admin create cs241 --weight 2 --rate 5:20 --max-queued 2000
    broadway-admin change cs241 --rate none
    broadway-admin issue-token cs241 --label prairielearn     # prints the token, once
    broadway-admin tokens cs241
    broadway-admin revoke cs241 <token id>
    broadway-admin delete cs241

Exit status: 0 done; 1 the API refused (the reason is printed); 2 bad usage or API unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


class AdminError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="broadway-admin", description="Manage Broadway courses and their tokens.")
    p.add_argument("--api-url", default=os.environ.get("BROADWAY_API_URL", "http://127.0.0.1:8888"),
                   help="the API's base URL (env BROADWAY_API_URL; default http://127.0.0.1:8888)")  # fmt: skip
    p.add_argument("--token", default=None,
                   help="the admin token (default: env BROADWAY_CLIENT_TOKEN; argv is readable by others)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every course")
    for name, text in (("create", "create a course"), ("change", "change a course")):
        c = sub.add_parser(name, help=text)
        c.add_argument("course")
        c.add_argument("--weight", type=float, help="its share of the graders, relative to other courses (default 1)")
        c.add_argument("--max-queued", help="most jobs it may have queued ('none': no limit)")
        c.add_argument("--rate", help="submissions a second and burst, PER_SECOND[:BURST] ('none': no limit)")
        c.add_argument("--callback-secret-env", metavar="VAR",
                       help="the environment variable holding the secret its callbacks are signed with")  # fmt: skip
    for name, text in (("show", "one course"), ("delete", "delete a course and revoke its tokens"),
                       ("tokens", "a course's tokens")):  # fmt: skip
        sub.add_parser(name, help=text).add_argument("course")
    issue = sub.add_parser("issue-token", help="issue a token for a course (printed once)")
    issue.add_argument("course")
    issue.add_argument("--label", default="", help="what the token is for (shown in `tokens`)")
    revoke = sub.add_parser("revoke", help="revoke a course token")
    revoke.add_argument("course")
    revoke.add_argument("token_id", help="the token's id (from `tokens`, or the part after bwc_)")
    return p


def course_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.weight is not None:
        fields["weight"] = args.weight
    if args.max_queued is not None:
        fields["max_queued"] = None if args.max_queued.lower() == "none" else _int(args.max_queued, "--max-queued")
    if args.rate is not None:
        fields["rate"] = None if args.rate.lower() == "none" else _rate(args.rate)
    if args.callback_secret_env:
        secret = os.environ.get(args.callback_secret_env)
        if not secret:
            raise AdminError(f"--callback-secret-env: {args.callback_secret_env} is not set", EXIT_ERROR)
        fields["callback_secret"] = secret
    return fields


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AdminError(f"{flag} must be an integer or 'none', got {text!r}", EXIT_ERROR) from None


def _rate(text: str) -> dict[str, Any]:
    per_second, _, burst = text.partition(":")
    try:
        rate: dict[str, Any] = {"per_second": float(per_second)}
        if burst:
            rate["burst"] = int(burst)
    except ValueError:
        raise AdminError(f"--rate must be PER_SECOND[:BURST] (e.g. 5:20) or 'none', got {text!r}", EXIT_ERROR) from None
    return rate


class AdminClient:
    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, method=method)  # noqa: S310 (the operator's URL)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                reason = e.reason
            raise AdminError(f"{method} {path}: {e.code} {reason}", EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError) as e:
            raise AdminError(f"cannot reach the API at {self.api_url}: {getattr(e, 'reason', e)}", EXIT_ERROR) from None


def run(args: argparse.Namespace, client: AdminClient) -> Any:
    """Do the command; returns the API's answer."""
    quoted = urllib.parse.quote(getattr(args, "course", "") or "", safe="")
    base = f"/api/v1/courses/{quoted}"
    match args.command:
        case "list":
            return client.call("GET", "/api/v1/courses")
        case "create":
            return client.call("POST", "/api/v1/courses", {"name": args.course, **course_fields(args)})
        case "change":
            fields = course_fields(args)
            if not fields:
                raise AdminError("change: nothing to change (--weight, --max-queued, --rate, --callback-secret-env)",
                                 EXIT_ERROR)  # fmt: skip
            return client.call("PATCH", base, fields)
        case "show":
            return client.call("GET", base)
        case "delete":
            return client.call("DELETE", base)
        case "tokens":
            return client.call("GET", f"{base}/tokens")
        case "issue-token":
            return client.call("POST", f"{base}/tokens", {"label": args.label})
        case "revoke":
            token_id = args.token_id.removeprefix("bwc_").split("_", 1)[0]
            return client.call("DELETE", f"{base}/tokens/{urllib.parse.quote(token_id, safe='')}")
    raise AdminError(f"unknown command {args.command}", EXIT_ERROR)


def describe(command: str, answer: Any) -> str:
    """The answer as lines for a person."""
    if command == "list":
        rows = [_course_line(c) for c in answer["courses"]]
        return "\n".join(rows) if rows else "no courses (everything is in the implicit course 'default')"
    if command == "tokens":
        return (
            "\n".join(
                f"{t['id']}  {'revoked' if t['revoked'] else 'active '}  "
                f"last used {t['last_used'] or 'never'}  {t['label']}"
                for t in answer["tokens"]
            )
            or f"course {answer['course']} has no tokens"
        )
    if command == "issue-token":
        return (f"token for course {answer['course']} (id {answer['id']}); shown this once, keep it:\n"
                f"{answer['token']}")  # fmt: skip
    if command == "revoke":
        return f"token {answer['id']} of course {answer['course']} revoked"
    if command == "delete":
        return f"course {answer['name']} deleted; its tokens are revoked"
    return _course_line(answer)


def _course_line(course: dict[str, Any]) -> str:
    rate = course["rate"]
    limit = f"{rate['per_second']:g}/s burst {rate['burst']}" if rate else "no rate limit"
    queued = f"max {course['max_queued']} queued" if course["max_queued"] else "no queue limit"
    return f"{course['name']}  weight {course['weight']:g}  {limit}  {queued}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = args.token or os.environ.get("BROADWAY_CLIENT_TOKEN")
    if not token:
        print("broadway-admin: no admin token: set BROADWAY_CLIENT_TOKEN (or --token)", file=sys.stderr)
        return EXIT_ERROR
    try:
        answer = run(args, AdminClient(args.api_url, token))
    except AdminError as e:
        print(f"broadway-admin: {e}", file=sys.stderr)
        return e.code
    print(json.dumps(answer, indent=2) if args.json else describe(args.command, answer))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
