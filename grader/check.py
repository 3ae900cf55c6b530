"""`broadway-grader --check`: what a sysadmin runs on a grading VM before (or instead of)
starting the daemon. One line per dependency; exit status 0 only when all are fine."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import docker
import docker.errors

from grader.config import GraderConfig


def check_docker() -> tuple[bool, str]:
    try:
        client = docker.from_env(timeout=10)
        try:
            version = client.version().get("Version", "?")
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        return False, f"docker: FAILED, the engine does not answer ({exc})"
    return True, f"docker: ok (engine {version})"


def check_api(api_url: str) -> tuple[bool, str]:
    url = api_url.rstrip("/") + "/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - http(s) checked by GraderConfig
            health = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return False, f"api: FAILED, {url} answered {exc.code} (is its store up?)"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"api: FAILED, cannot reach {url} ({getattr(exc, 'reason', exc)})"
    return True, f"api: ok (store {health.get('store')}, {health.get('workers_alive', '?')} grader(s) alive)"


def check_work_dir(config: GraderConfig) -> tuple[bool, str]:
    target = config.work_dir if config.work_dir.exists() else config.work_dir.parent
    if not os.access(target, os.W_OK | os.X_OK):
        return False, f"work dir: FAILED, {target} is not writable by this user"
    return True, f"work dir: ok ({config.work_dir})"


def run_checks(config: GraderConfig) -> int:
    results = [check_docker(), check_api(config.api_url), check_work_dir(config)]
    for _, line in results:
        print(line)
    return 0 if all(ok for ok, _ in results) else 1
