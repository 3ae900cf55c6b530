"""What start_run shows of a run: one-line progress, and the final table of students."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

TERMINAL = ("succeeded", "failed", "cancelled")
STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "queued": "blue"}


@dataclass(frozen=True)
class Row:
    """One job in the final report."""

    label: str
    job_id: str
    status: str
    duration_s: float | None
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {"student": self.label, "job_id": self.job_id, "status": self.status,
                "duration_s": self.duration_s, "summary": self.summary}  # fmt: skip


def student_label(job: dict[str, Any]) -> str:
    """The student's own environment entry identifies them (e.g. STUDENT_ID=alice)."""
    env = job.get("student") or {}
    return " ".join(f"{name}={value}" for name, value in env.items()) or job["job_id"]


def summarize(job: dict[str, Any]) -> str:
    """A short account of a job's result: the failing stage and why, a score line, or the error."""
    if job.get("error"):
        return str(job["error"])[:100]
    text = job.get("result")
    if not text:
        return ""
    try:
        stages = json.loads(text)["stages"]
    except (ValueError, TypeError, KeyError):
        return str(text).strip().splitlines()[-1][:100] if str(text).strip() else ""
    for number, stage in enumerate(stages, 1):
        if stage.get("timed_out"):
            return f"stage {number} timed out"
        if stage.get("oom_killed"):
            return f"stage {number} ran out of memory"
        if stage.get("job_dir_full"):
            return f"stage {number} wrote too much to /job"
        if stage.get("exit_code") != 0:
            return f"stage {number} exited {stage.get('exit_code')}: {_last_line(stage)}"[:100]
    return _last_line(stages[-1])[:100] if stages else ""


def _last_line(stage: dict[str, Any]) -> str:
    lines = str(stage.get("output", "")).strip().splitlines()
    return lines[-1] if lines else ""


def duration(job: dict[str, Any]) -> float | None:
    if job.get("started_at") and job.get("finished_at"):
        return round(float(job["finished_at"]) - float(job["started_at"]), 2)
    return None


def rows(status: dict[str, Any]) -> list[Row]:
    """Students first, in submission order, then the pre- and post-processing jobs."""
    out = [
        Row(student_label(j), j["job_id"], j["status"], duration(j), summarize(j)) for j in status["student_statuses"]
    ]
    for key, label in (("preprocessing_status", "(pre-processing)"), ("postprocessing_status", "(post-processing)")):
        job = status.get(key)
        if job:
            out.append(Row(label, job["job_id"], job["status"], duration(job), summarize(job)))
    return out


def all_succeeded(status: dict[str, Any]) -> bool:
    return status.get("status") == "succeeded" and all(row.status == "succeeded" for row in rows(status))


def progress_line(status: dict[str, Any]) -> str:
    counts = status.get("counts", {})
    total = status.get("student_count", len(status.get("student_statuses", [])))
    done = sum(counts.get(s, 0) for s in TERMINAL)
    parts = [f"{done}/{total} students done"]
    parts += [f"{name} {n}" for name, n in counts.items() if n]
    for key, label in (("preprocessing_status", "pre"), ("postprocessing_status", "post")):
        if status.get(key):
            parts.append(f"{label}: {status[key]['status']}")
    return f"run {status.get('id')} {status.get('status')}: " + ", ".join(parts)


def table(status: dict[str, Any]) -> Table:
    result = Table(title=f"Grading run {status.get('id')}: {status.get('status')}", title_justify="left")
    for column in ("student", "status", "duration", "result"):
        result.add_column(column, overflow="fold")
    for row in rows(status):
        style = STATUS_STYLE.get(row.status, "")
        seconds = f"{row.duration_s:.1f}s" if row.duration_s is not None else "-"
        # Text, not markup: a student's env or output may contain "[...]".
        result.add_row(Text(row.label), Text(row.status, style=style), seconds, Text(row.summary))
    return result
