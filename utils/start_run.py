"""`python -m utils.start_run PIPELINE.json` / `broadway-start-run`: submit a grading run, start
it, watch it, and print one row per student.

Exit status: 0 when every job succeeded; 1 when the run ended with a failed or cancelled job;
2 when nothing could be done (bad file, invalid pipeline, API unreachable, token refused);
130 when watching was interrupted (the run goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from broadway.validation import SubmissionError, placeholder_ids, plan_run
from utils import report
from utils.run_client import ClientError, RunClient

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with what the user gave us; str() is the one line to print."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="start_run",
        description="Submit a Broadway grading run, start it, watch it and print the results.",
        epilog="Exit status: 0 all jobs succeeded, 1 some failed, 2 could not run, 130 interrupted.",
    )
    p.add_argument("pipeline", nargs="?", type=Path, help="grading run configuration (JSON file)")
    p.add_argument("--api-url", default=os.environ.get("BROADWAY_API_URL", "http://127.0.0.1:8888"),
                   help="the API's base URL (env BROADWAY_API_URL; default http://127.0.0.1:8888)")  # fmt: skip
    p.add_argument("--token", default=os.environ.get("BROADWAY_CLIENT_TOKEN"),
                   help="client token the API printed at start-up (env BROADWAY_CLIENT_TOKEN)")  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-start", action="store_true", help="only submit the run; print its id")
    mode.add_argument("--no-wait", action="store_true", help="submit and start the run; print its id")
    mode.add_argument("--watch", metavar="RUN_ID", help="watch a run submitted earlier instead of submitting one")
    p.add_argument("--json", action="store_true", help="print the final report as JSON on stdout")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between status checks (default 1)")
    return p


def load_pipeline(path: Path) -> dict[str, Any]:
    """Read and check a run configuration with the server's own rules, before anything is sent."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    try:
        plan_run(config, "0" * 24, placeholder_ids())
    except SubmissionError as exc:
        raise UsageError(f"{path} is not a valid grading run: {exc}") from None
    if not isinstance(config, dict):  # plan_run rejects it, but mypy should know too
        raise UsageError(f"{path} is not a valid grading run: expected a JSON object")
    return config


class Watcher:
    """Polls a run's status until it ends, showing progress on the terminal (or plain lines)."""

    def __init__(self, client: RunClient, interval: float, console: Console, quiet: bool) -> None:
        self.client = client
        self.interval = max(interval, 0.05)
        self.console = console
        self.quiet = quiet

    def wait(self, run_id: str) -> dict[str, Any]:
        """The ended run's full status (every job), after showing its progress."""
        if self.quiet:
            return self._poll_until_done(run_id, lambda status: None)
        if not self.console.is_terminal:
            last = [""]

            def plain(status: dict[str, Any]) -> None:
                line = report.progress_line(status)
                if line != last[0]:
                    self.console.print(Text(line), soft_wrap=True)
                    last[0] = line

            return self._poll_until_done(run_id, plain)
        progress = Progress(
            TextColumn("students"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console
        )
        task = progress.add_task("students", total=None)
        detail = Text("")
        with Live(Group(progress, detail), console=self.console, refresh_per_second=8, transient=False):

            def live(status: dict[str, Any]) -> None:
                counts = status.get("counts", {})
                done = sum(counts.get(s, 0) for s in report.TERMINAL)
                progress.update(task, total=status.get("student_count"), completed=done)
                detail.plain = report.progress_line(status)

            return self._poll_until_done(run_id, live)

    def _poll_until_done(self, run_id: str, show: Any) -> dict[str, Any]:
        """Watch the summary (status and counts, cheap at any size); once the run has ended, read
        its results, a page at a time. Polling the whole run every second cost the API seconds of
        work per poll at 100,000 students."""
        while True:
            summary = self.client.summary(run_id)
            show(summary)
            if summary.get("status") in report.TERMINAL:
                return self.client.results(run_id)
            time.sleep(self.interval)


def final_report(status: dict[str, Any], as_json: bool, console: Console) -> int:
    code = EXIT_OK if report.all_succeeded(status) else EXIT_FAILED
    if as_json:
        body = {
            "id": status.get("id"),
            "status": status.get("status"),
            "error": status.get("error"),
            "jobs": [row.as_dict() for row in report.rows(status)],
        }
        print(json.dumps(body, indent=2))
    else:
        console.print(report.table(status))
        if status.get("error"):
            console.print(Text(f"run error: {status['error']}"))
    return code


def run(args: argparse.Namespace, console: Console, errors: Console) -> int:
    client = RunClient(args.api_url, args.token)
    if args.watch:
        run_id = args.watch
    else:
        if args.pipeline is None:
            raise UsageError("give a pipeline JSON file, or --watch RUN_ID")
        config = load_pipeline(args.pipeline)
        run_id = client.submit(config)
        if args.no_start:
            print(json.dumps({"id": run_id}) if args.json else run_id)
            return EXIT_OK
        client.start(run_id)
        if args.no_wait:
            print(json.dumps({"id": run_id}) if args.json else run_id)
            return EXIT_OK
        errors.print(Text(f"started grading run {run_id}"))
    watcher = Watcher(client, args.interval, errors, quiet=args.json)
    try:
        status = watcher.wait(run_id)
    except KeyboardInterrupt:
        resume = f"python -m utils.start_run --watch {run_id}"
        # Plain print: rich would wrap the command, and it is meant to be copied whole.
        print(f"\nstopped watching; the run goes on. Resume with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return final_report(status, args.json, console)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress goes to stderr, so stdout carries only the report (and stays parseable with --json).
    console, errors = Console(), Console(stderr=True)
    try:
        return run(args, console, errors)
    except (UsageError, ClientError) as exc:
        print(f"start_run: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("start_run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
