"""Weighted fair share among courses, Orca's collation within one, and a course's max_queued."""

from __future__ import annotations

from typing import Any

from tests.api.courses_helpers import course_client
from tests.conftest import MakeApi
from tests.helpers import ApiClient, run_config

JOBS = "/api/v1/job"


async def submit(client: ApiClient, work_id: str, **fields: Any) -> str:
    resp = await client.request(
        "POST", JOBS, json_body={"image": "busybox-test", "work_id": work_id, **fields}, auth=True
    )
    assert resp.status == 201, resp.body
    return str(resp.json["id"])


async def claim(api: ApiClient, worker: str) -> dict[str, Any]:
    resp = await api.poll(worker, wait=0)
    assert resp.status == 200, resp.body
    return dict(resp.json)


async def test_a_course_arriving_behind_a_long_queue_gets_half_the_slots_at_once(api: ApiClient) -> None:
    """Course A queued first and much; B's jobs do not wait behind all of A's (same weights)."""
    a = await course_client(api, "course-a")
    b = await course_client(api, "course-b")
    owner = {}
    for i in range(12):
        owner[await submit(a, f"a{i}")] = "a"
    worker = await api.register(slots=4)
    first = [await claim(api, worker) for _ in range(4)]
    assert [owner[j["job_id"]] for j in first] == ["a"] * 4, "only A had queued work"
    for i in range(4):
        owner[await submit(b, f"b{i}")] = "b"
    # Each slot freed goes to the course furthest below its share: B until it holds 2 of 4.
    order = []
    for held in first[:3]:
        assert (await api.report(worker, held["job_id"], attempt=held["attempt"])).status == 200
        order.append(owner[(await claim(api, worker))["job_id"]])
    assert order == ["b", "b", "a"], order


async def test_weights_divide_the_slots(api: ApiClient) -> None:
    """Weight 3 against weight 1: three of four slots, whoever queued first."""
    light = await course_client(api, "light", weight=1)
    heavy = await course_client(api, "heavy", weight=3)
    owner = {}
    for i in range(6):
        owner[await submit(light, f"l{i}")] = "light"
    for i in range(6):
        owner[await submit(heavy, f"h{i}")] = "heavy"
    worker = await api.register(slots=4)
    claimed = [owner[(await claim(api, worker))["job_id"]] for _ in range(4)]
    assert sorted(claimed) == ["heavy", "heavy", "heavy", "light"], claimed


async def test_a_course_with_nothing_queued_takes_nothing_from_the_others(api: ApiClient) -> None:
    busy = await course_client(api, "busy")
    await course_client(api, "idle")
    jobs = {await submit(busy, f"w{i}") for i in range(5)}
    worker = await api.register(slots=6)
    assert {(await claim(api, worker))["job_id"] for _ in range(5)} == jobs
    assert (await api.poll(worker, wait=0)).status == 412


async def test_one_students_resubmissions_do_not_run_ahead_of_other_students(api: ApiClient) -> None:
    """Orca's collation: X's three submissions first, then Y's one: Y's runs second, not fourth."""
    course = await course_client(api, "collating")
    names = {}
    for i in range(3):
        names[await submit(course, f"x{i}", collation={"type": "user", "id": "x"})] = f"x{i}"
    names[await submit(course, "y0", collation={"type": "user", "id": "y"})] = "y0"
    names[await submit(course, "t0", collation={"type": "team", "id": "x"})] = "t0"  # a team is not the user x
    worker = await api.register(slots=5)
    order = [names[(await claim(api, worker))["job_id"]] for _ in range(5)]
    assert order == ["x0", "y0", "t0", "x1", "x2"], order


async def test_a_bad_collation_is_refused(api: ApiClient) -> None:
    for collation in ({"type": "group", "id": "x"}, {"type": "user"}, {"type": "user", "id": ""}, "x"):
        resp = await api.request("POST", JOBS, json_body={"image": "busybox-test", "collation": collation}, auth=True)
        assert resp.status == 400 and "collation" in resp.json["error"], resp.body


async def test_max_queued_refuses_with_429_until_the_queue_drains(api: ApiClient) -> None:
    course = await course_client(api, "small-queue", max_queued=2)
    await submit(course, "one")
    await submit(course, "two")
    full = await course.request("POST", JOBS, json_body={"image": "busybox-test", "work_id": "three"}, auth=True)
    assert full.status == 429, full.body
    assert int(full.headers["Retry-After"]) >= 1 and "queued" in full.json["error"]
    # Nothing was stored for the refused one: still two jobs, and once one runs there is room.
    worker = await api.register(slots=4)
    await claim(api, worker)
    await submit(course, "three")
    assert (await api.poll(worker, wait=0)).status == 200
    assert (await api.poll(worker, wait=0)).status == 200
    assert (await api.poll(worker, wait=0)).status == 412


async def test_max_queued_bounds_a_runs_start(api: ApiClient) -> None:
    course = await course_client(api, "run-queue", max_queued=3)
    too_big = await course.submit(run_config(students=4))
    resp = await course.start(too_big)
    assert resp.status == 400 and "max_queued" in resp.json["error"], resp.body
    fits = await course.submit(run_config(students=2))
    assert (await course.start(fits)).status == 200
    waits = await course.submit(run_config(students=2))
    resp = await course.start(waits)
    assert resp.status == 429 and "Retry-After" in resp.headers, resp.body
    assert (await course.status(waits))["status"] == "created", "a refused start changes nothing"
    worker = await api.register(slots=2)
    await claim(api, worker)
    await claim(api, worker)
    assert (await course.start(waits)).status == 200


async def test_jobs_queued_through_another_api_process_are_shared_too(make_api: MakeApi) -> None:
    """Two API processes on one store: the claiming one learns of the other's course at its next
    view refresh (0.5 s), long before the older course's queue runs dry."""
    first, second = await make_api(), await make_api()
    api = ApiClient(first.url)
    a = await course_client(api, "first-a")
    b = await course_client(api, "first-b")
    b_via_second = ApiClient(second.url, client_token=b.client_token)
    students = 400
    await a.submit_and_start(run_config(students=students))
    worker = await api.register(slots=4)
    held = [await claim(api, worker) for _ in range(4)]
    b_jobs = {await submit(b_via_second, f"b{i}") for i in range(4)}
    a_claimed = len(held)
    while b_jobs:
        done = held.pop(0)
        assert (await api.report(worker, done["job_id"], attempt=done["attempt"])).status == 200
        job = await claim(api, worker)
        held.append(job)
        if job["job_id"] in b_jobs:
            b_jobs.discard(job["job_id"])
        else:
            a_claimed += 1
    assert a_claimed < students, "B waited behind all of A's queue"


async def test_the_summary_shows_each_courses_queue(api: ApiClient) -> None:
    a = await course_client(api, "depth-a")
    b = await course_client(api, "depth-b")
    for i in range(3):
        await submit(a, f"a{i}")
    await submit(b, "b0")
    worker = await api.register(slots=1)
    await claim(api, worker)  # A's oldest, both courses idle until now: tie goes to the older head
    summary = await api.request("GET", "/api/v1/summary", auth=True)
    rows = {row["course"]: (row["queued"], row["running"]) for row in summary.json["queues"]}
    assert rows == {"depth-a": (2, 1), "depth-b": (1, 0)}, summary.json["queues"]
    # A course's token sees its own queue only.
    mine = await b.request("GET", "/api/v1/summary", auth=True)
    assert [row["course"] for row in mine.json["queues"]] == ["depth-b"]
