"""broadway-submit: grade one student's files against a saved assignment, from a shell.

    broadway-submit --assignment hw1 main.c util.c --param LEVEL=2 --wait

Sends the files (a directory is sent with its files' relative paths) as one single submission,
prints the job id, and with --wait shows the job's progress and then its grade and comments.
One file alone is sent as the form's `file` part, as correctomatic's clients do, so that the
stages find it at /tmp/exercise as well as in /job/files.
Exit status as start_run's: 0 submitted (or, with --wait, graded successfully), 1 the job
failed or was cancelled, 2 nothing could be done (the reason on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from utils.run_client import ClientError, RunClient

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
TERMINAL = ("succeeded", "failed", "cancelled")


class UsageError(Exception):
    pass


class JobClient(RunClient):
    """The single-submission endpoints, over the same blocking client as start_run's."""

    def submit_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/api/v1/job", body, headers=headers)

    def submit_form(self, body: dict[str, Any], name: str, data: bytes, idempotency_key: str | None) -> dict[str, Any]:
        """The same submission as multipart/form-data, the one file as its `file` part."""
        boundary = uuid.uuid4().hex
        parts = []
        for field, value in body.items():
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{text}\r\n'.encode())
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
        parts.append(head.encode() + data + b"\r\n")
        payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self._send("POST", "/api/v1/job", payload, headers)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's status and, once it succeeded, its output."""
        return self._request("GET", f"/api/v1/job/{urllib.parse.quote(job_id, safe='')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broadway-submit",
        description="Submit one student's files to Broadway against a saved assignment (or an image).",
    )
    p.add_argument("files", nargs="*", type=Path, help="files or directories to submit (sent as /job/files/...)")
    recipe = p.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--assignment", help="name of the saved assignment to grade against")
    recipe.add_argument("--image", help="grade with one stage running this image instead")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter the assignment allows (repeat for more)")  # fmt: skip
    p.add_argument("--work-id", help="your own id for this submission, echoed back in the result")
    p.add_argument("--callback-url", help="URL the API POSTs the result to when the job ends")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--idempotency-key", help="repeat a submission safely: the same key gives the same job")
    p.add_argument("--wait", action="store_true", help="wait for the grade and print it")
    p.add_argument("--json", action="store_true", help="print the final answer as JSON on stdout")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between status checks with --wait")
    p.add_argument("--api-url", default=os.environ.get("BROADWAY_API_URL", "http://127.0.0.1:8888"),
                   help="the API's base URL (env BROADWAY_API_URL)")  # fmt: skip
    p.add_argument("--token", default=os.environ.get("BROADWAY_CLIENT_TOKEN"),
                   help="client token (env BROADWAY_CLIENT_TOKEN)")  # fmt: skip
    return p


def read_files(paths: list[Path]) -> dict[str, dict[str, str]]:
    """name -> {"content": base64}; a directory contributes its files under relative names."""
    files: dict[str, dict[str, str]] = {}
    for path in paths:
        if path.is_dir():
            entries = [(p, p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]
        elif path.is_file():
            entries = [(path, path.name)]
        else:
            raise UsageError(f"no such file or directory: {path}")
        for file, name in entries:
            if name in files:
                raise UsageError(f"two files would be sent as {name!r}")
            try:
                files[name] = {"content": base64.b64encode(file.read_bytes()).decode()}
            except OSError as exc:
                raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    return files


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    params = {}
    for pair in args.param:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE")
        params[name] = value
    body: dict[str, Any] = {"files": read_files(args.files), "priority": args.priority}
    body["assignment" if args.assignment else "image"] = args.assignment or args.image
    if params:
        body["params"] = params
    for name in ("work_id", "callback_url"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    return body


def wait_for(client: JobClient, job_id: str, interval: float, errors: Console) -> dict[str, Any]:
    last = None
    with errors.status(f"job {job_id}: submitted") as spinner:
        while True:
            job = client.job(job_id)
            if job["status"] != last:
                last = job["status"]
                spinner.update(f"job {job_id}: {last} (attempt {job.get('attempts', 0)})")
            if job["status"] in TERMINAL:
                return job
            time.sleep(max(interval, 0.05))


def show(job: dict[str, Any], console: Console) -> None:
    output = job.get("output") or {}
    console.print(Text(f"job {job['id']}: {job['status']}"))
    if output.get("grade") is not None:
        console.print(Text(f"grade: {output['grade']}"))
    for comment in output.get("comments") or []:
        console.print(Text(f"  - {comment}"))
    if job.get("error"):
        console.print(Text(f"error: {job['error']}"))


def run(args: argparse.Namespace, console: Console, errors: Console) -> int:
    client = JobClient(args.api_url, args.token)
    body = request_body(args)
    if len(args.files) == 1 and args.files[0].is_file():
        # One file: the submission itself, which correctomatic's images read at /tmp/exercise.
        ((name, entry),) = body.pop("files").items()
        created = client.submit_form(body, name, base64.b64decode(entry["content"]), args.idempotency_key)
    else:
        created = client.submit_job(body, args.idempotency_key)
    job_id = str(created["id"])
    if not args.wait:
        print(json.dumps(created) if args.json else job_id)
        return EXIT_OK
    errors.print(Text(f"submitted job {job_id}"))
    try:
        job = wait_for(client, job_id, args.interval, errors)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the job goes on. Its status: GET /api/v1/job/{job_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        show(job, console)
    return EXIT_OK if job["status"] == "succeeded" else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console, errors = Console(), Console(stderr=True)
    try:
        return run(args, console, errors)
    except (UsageError, ClientError) as exc:
        print(f"broadway-submit: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("broadway-submit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
