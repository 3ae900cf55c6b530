"""A run's counts by status (`?summary=1`, and every page) follow each way a job can move.

They are index counts of per-status keys that each status change carries along
(broadway/store/run_status_keys.py), not a count of the jobs themselves; so here every kind of
move is made and the summary compared with what the jobs' own statuses say (the full status
counts from the job list itself).
"""

from __future__ import annotations

from typing import Any

from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config, stage

RUNS = "/api/v1/grading_run"
ZERO = {"created": 0, "queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}


async def summary_counts(api: ApiClient, run_id: str) -> dict[str, int]:
    resp = await api.request("GET", f"{RUNS}/{run_id}", params={"summary": 1}, auth=True)
    assert resp.status == 200, resp.body
    return dict(resp.json["counts"])


async def listed_counts(api: ApiClient, run_id: str) -> dict[str, int]:
    """The counts of the students' own statuses in the full job list."""
    counts = dict(ZERO)
    for student in (await api.status(run_id))["student_statuses"]:
        counts[student["status"]] += 1
    return counts


async def counts_are(api: ApiClient, run_id: str, **expected: int) -> None:
    want = ZERO | expected
    assert await listed_counts(api, run_id) == want
    assert await summary_counts(api, run_id) == want


async def claim(api: ApiClient, worker: str) -> dict[str, Any]:
    resp = await api.poll(worker, wait=0)
    assert resp.status == 200, resp.body
    return dict(resp.json)


async def reaped(api: ApiClient, run_id: str, **expected: int) -> None:
    """Wait for the reaper to take a silent worker's job away, to the counts expected."""
    want = ZERO | expected
    await eventually(lambda: listed_counts(api, run_id), lambda counts: counts == want)


async def test_counts_follow_claims_reports_requeues_late_reports_give_ups_and_cancel(make_api: MakeApi) -> None:
    # A worker that stays silent 1.5 s is declared dead. Each step's worker claims, and reports,
    # within a few requests of registering; the silent ones are left to the reaper.
    service = await make_api(worker_timeout=1.5, max_attempts=2)
    api = ApiClient(service.url)
    config = run_config(
        students=6, preprocessing_pipeline=[stage(entrypoint=["true"])], postprocessing_pipeline=[stage()]
    )
    run_id = await api.submit(config)
    await counts_are(api, run_id, created=6)
    assert (await api.start(run_id)).status == 200
    # The pre-processing job goes first (and is not counted); the students wait as `created`.
    worker = await api.register(slots=1)
    pre = await claim(api, worker)
    await counts_are(api, run_id, created=6)
    assert (await api.report(worker, pre["job_id"], attempt=pre["attempt"])).status == 200
    await eventually(lambda: summary_counts(api, run_id), lambda counts: counts["queued"] == 6)
    await counts_are(api, run_id, queued=6)

    # Claimed, then its worker goes silent: back to the queue; its late report still stands.
    silent = await api.register(slots=1)
    first = await claim(api, silent)
    await counts_are(api, run_id, queued=5, running=1)
    await reaped(api, run_id, queued=6)
    await counts_are(api, run_id, queued=6)
    assert (await api.report(silent, first["job_id"], attempt=first["attempt"])).status == 200
    await counts_are(api, run_id, queued=5, succeeded=1)

    # A failed report.
    worker = await api.register(slots=1)
    job = await claim(api, worker)
    await counts_are(api, run_id, queued=4, running=1, succeeded=1)
    assert (await api.report(worker, job["job_id"], success=False, attempt=job["attempt"])).status == 200
    await counts_are(api, run_id, queued=4, succeeded=1, failed=1)

    # Two workers die holding the same job (requeued jobs go first): after max_attempts (2)
    # the reaper fails it.
    await claim(api, await api.register(slots=1))
    await reaped(api, run_id, queued=4, succeeded=1, failed=1)
    await claim(api, await api.register(slots=1))
    await reaped(api, run_id, queued=3, succeeded=1, failed=2)
    await counts_are(api, run_id, queued=3, succeeded=1, failed=2)

    # Cancelled while one runs and the others wait.
    await claim(api, await api.register(slots=1))
    await counts_are(api, run_id, queued=2, running=1, succeeded=1, failed=2)
    assert (await api.request("POST", f"{RUNS}/{run_id}/cancel", auth=True)).status == 200
    await counts_are(api, run_id, succeeded=1, failed=2, cancelled=3)


async def test_runs_stored_before_the_status_keys_are_counted_and_finished_from_their_jobs(make_api: MakeApi) -> None:
    service = await make_api()
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=3))
    worker = await api.register()
    job = await claim(api, worker)
    assert (await api.report(worker, job["job_id"], attempt=job["attempt"])).status == 200
    held = await claim(api, worker)
    # As a run from before: no mark on the run, no keys on its jobs.
    db = service.store.db
    await db.runs.update_one({"_id": (await db.runs.find_one({}))["_id"]}, {"$unset": {"keyed_statuses": ""}})
    keys = {f"{status}_in_run": "" for status in ("queued", "running", "succeeded", "failed", "cancelled")}
    await db.jobs.update_many({"run_id": run_id}, {"$unset": keys})
    await counts_are(api, run_id, queued=1, running=1, succeeded=1)
    # And the scheduler, counting the same way, still sees it end.
    assert (await api.report(worker, held["job_id"], attempt=held["attempt"])).status == 200
    await api.work_off(worker)
    finished = await eventually(lambda: api.status(run_id), lambda status: status["status"] != "running")
    assert finished["status"] == "succeeded" and finished["counts"]["succeeded"] == 3


async def test_a_run_of_several_batches_is_cancelled_whole_running_queued_and_not_yet_queued(
    make_api: MakeApi,
) -> None:
    """Cancellation goes in batches (QUEUE_BATCH jobs) by the status keys: every batch is
    reached, the students still `created` (the run failed before they were queued, or its start
    was cut short) too, and the running ones."""
    service = await make_api()
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1_234))
    worker = await api.register(slots=3)
    for _ in range(3):
        await claim(api, worker)
    # As a start cut short: one chunk of students put back to `created`, without their keys.
    jobs = service.store.db.jobs
    await jobs.update_many(
        {"run_id": run_id, "seq": {"$gte": 1_000}},
        {"$set": {"status": "created", "start_chunk": f"{run_id}:2"}, "$unset": {"queued_in_run": "", "queue_key": ""}},
    )
    await counts_are(api, run_id, created=234, queued=997, running=3)
    assert (await api.request("POST", f"{RUNS}/{run_id}/cancel", auth=True, timeout=60)).status == 200
    await counts_are(api, run_id, cancelled=1_234)
    assert await jobs.count_documents({"run_id": run_id, "status": {"$ne": "cancelled"}}) == 0
