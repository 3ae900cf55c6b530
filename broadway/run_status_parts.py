"""The parts of a run's whole status that never change, kept encoded in each API process.

A student job's id, stages and student are fixed at submission; only its status, times, attempts,
result and error move. Reading the whole documents of a 10,000-student run costs nx-27017 about
twice what reading only the moving fields costs (it decodes every stored field), and encoding
the stages again for every GET costs the API as much. So each process keeps, per run, the
fixed part of every student's entry already encoded as JSON (`"job_id": ..., "stages": [...],
"student": {...}`), filled when this process submits the run or first reads it whole, and the
whole status joins it with the moving fields read from the store.

Bounded by the number of students kept (least recently read runs go first); a run left out is
simply read whole again.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

# ~250 bytes each for a typical stage: ~75 MB at the bound, at worst.
MAX_STUDENTS_KEPT = 300_000


def fixed_part(job_id: str, stages: list[dict[str, Any]], student: dict[str, str] | None) -> str:
    """A student's fixed fields as JSON object members, without the braces (CPU: run in a thread)."""
    return json.dumps({"job_id": job_id, "stages": stages, "student": student})[1:-1]


def entry(fixed: str, moving: dict[str, Any]) -> str:
    """One element of `student_statuses`: the fixed part and the moving fields."""
    return "{" + fixed + ", " + json.dumps(moving)[1:-1] + "}"


class RunStatusParts:
    def __init__(self, max_students: int = MAX_STUDENTS_KEPT) -> None:
        self.max_students = max_students
        self._runs: OrderedDict[str, list[str]] = OrderedDict()
        self._kept = 0

    def get(self, run_id: str) -> list[str] | None:
        """Every student's fixed part, by seq, or None if this process has not kept them."""
        parts = self._runs.get(run_id)
        if parts is not None:
            self._runs.move_to_end(run_id)
        return parts

    def forget(self, run_id: str) -> None:
        parts = self._runs.pop(run_id, None)
        self._kept -= len(parts) if parts else 0

    def put(self, run_id: str, parts: list[str]) -> None:
        if len(parts) > self.max_students:
            return  # larger than the whole bound: read whole every time
        old = self._runs.pop(run_id, None)
        self._kept -= len(old) if old else 0
        self._runs[run_id] = parts
        self._kept += len(parts)
        while self._kept > self.max_students:
            _, evicted = self._runs.popitem(last=False)
            self._kept -= len(evicted)
