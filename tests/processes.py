"""The CLIs as child processes, with the test tokens filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import CLIENT_TOKEN, CLUSTER_TOKEN
from utils import processes
from utils.processes import ROOT, child_env

__all__ = ["ROOT", "ApiProcess", "GraderProcess", "child_env"]


class ApiProcess(processes.ApiProcess):
    def __init__(self, data_dir: Path, *args: str, port: int | None = None) -> None:
        super().__init__(data_dir, *args, cluster_token=CLUSTER_TOKEN, client_token=CLIENT_TOKEN, port=port)


class GraderProcess(processes.GraderProcess):
    def __init__(self, api_url: str, work_dir: Path, *args: str, **options: Any) -> None:
        options.setdefault("name", "test-grader")
        super().__init__(api_url, work_dir, *args, token=CLUSTER_TOKEN, **options)
