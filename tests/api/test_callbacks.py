"""Callbacks: signed, retried, given up, refused, and delivered once per API fleet.

A real receiver on loopback (callback_receiver.py) plays the LMS. Job documents with a pending
delivery are written through the store's outbox (DeliveryStore.set_pending), as the update that
ends a job does, so these tests depend on the delivery machinery only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from broadway.callbacks import CallbackTargetError, TargetPolicy, check_callback_url
from broadway.callbacks.deliverer import Deliverer
from broadway.callbacks.sender import CallbackSender
from broadway.callbacks.signing import sign, verify
from broadway.server import announce_tokens
from broadway.store import Store, connect
from broadway.store.ids import new_id
from broadway.tokens import load_or_create
from tests.api.callback_receiver import HANG, SECRET, CallbackReceiver
from tests.conftest import MakeApi
from tests.conftest import test_config as make_test_config
from tests.helpers import eventually
from tests.processes import ApiProcess


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[Store]:
    s = connect(mongo_url)
    await s.ensure_indexes()
    yield s
    await s.close()


MakeDeliverer = Callable[..., Deliverer]


@pytest.fixture
async def make_deliverer(store: Store) -> AsyncIterator[MakeDeliverer]:
    """Factory: a started deliverer over the test's store, with timings shortened for tests."""
    started: list[Deliverer] = []

    def factory(timeout_s: float = 5.0, allow: tuple[str, ...] = (), **options: Any) -> Deliverer:
        options.setdefault("retry_base_s", 0.05)
        options.setdefault("scan_interval_s", 0.05)
        sender = CallbackSender(SECRET, TargetPolicy.from_strings(allow), timeout_s=timeout_s)
        deliverer = Deliverer(store.deliveries, sender, **options)
        deliverer.start()
        started.append(deliverer)
        return deliverer

    yield factory
    for deliverer in started:
        await deliverer.stop(grace_s=0)


async def add_job(store: Store, url: str, status: str = "succeeded", **fields: Any) -> str:
    """A terminal job document with a callback due now."""
    job_id = new_id()
    await store.db.jobs.insert_one({"_id": job_id, "status": status, "finished_at": time.time(), **fields})
    assert await store.deliveries.set_pending("job", str(job_id), url, time.time(), 3600.0)
    return str(job_id)


async def settled(store: Store, job_id: str, kind: str = "job", timeout: float = 15.0) -> dict[str, Any]:
    """The delivery state once it is no longer pending (delivered or given up)."""
    state = await eventually(
        lambda: store.deliveries.delivery_state(kind, job_id), lambda s: s is not None and not s["pending"], timeout
    )
    assert state is not None
    return state


# -- signing ---------------------------------------------------------------------------------


async def test_callback_is_signed_and_verifies_only_with_the_secret(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer()
    url = receiver.script("/lms/cb")
    job_id = await add_job(store, url + "?token=lms-private", work_id="w-17", grade=7.98, comments=["ok", "fine"])
    state = await settled(store, job_id)
    assert state["delivered_at"]
    [got] = receiver.at("/lms/cb")
    assert got.signed_ok
    assert verify(SECRET, got.body, got.signature)
    assert not verify("another secret", got.body, got.signature)
    assert not verify(SECRET, got.body + b" ", got.signature), "a changed body does not verify"
    assert not verify(SECRET, got.body, got.signature, now=time.time() + 3600), "an old signature is refused"
    assert got.json == {
        "success": True, "work_id": "w-17", "grade": 7.98, "comments": ["ok", "fine"], "job_id": job_id,
        "status": "succeeded", "finished_at": got.json["finished_at"],
    }  # fmt: skip
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("Broadway")
    assert got.delivery_id == state["id"]


def test_verify_accepts_the_documented_construction() -> None:
    body = b'{"success":true}'
    mac = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    header = f"t=1700000000,v1={mac}"
    assert sign(SECRET, body, timestamp=1700000000) == header
    assert verify(SECRET, body, header, now=1700000100)
    assert verify(SECRET, body, f"t=1700000000,v1={'0' * 64},v1={mac}", now=1700000100), "rotation: any v1"
    for bad in (None, "", "t=1700000000", f"v1={mac}", f"t=x,v1={mac}", "garbage"):
        assert not verify(SECRET, body, bad, now=1700000100)


async def test_failed_job_callback_says_why(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer()
    failed = await add_job(store, receiver.script("/f"), status="failed", work_id="w1", error="stage 2 timed out")
    cancelled = await add_job(store, receiver.script("/c"), status="cancelled", work_id="w2")
    await settled(store, failed)
    await settled(store, cancelled)
    assert receiver.at("/f")[0].json == {
        "success": False, "work_id": "w1", "error": "stage 2 timed out", "job_id": failed, "status": "failed",
        "finished_at": receiver.at("/f")[0].json["finished_at"],
    }  # fmt: skip
    body = receiver.at("/c")[0].json
    assert (body["success"], body["status"], body["error"]) == (False, "cancelled", "the job was cancelled")


async def test_run_callback_carries_the_summary(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    run_id = new_id()
    await store.db.runs.insert_one({"_id": run_id, "status": "succeeded", "n_students": 3, "created_at": 1.0})
    await store.db.jobs.insert_many(
        [{"_id": new_id(), "run_id": str(run_id), "status": s} for s in ("succeeded", "succeeded", "failed")]
    )
    await store.deliveries.set_pending("run", str(run_id), receiver.script("/run"), time.time(), 3600.0)
    make_deliverer()
    await settled(store, str(run_id), kind="run")
    body = receiver.at("/run")[0].json
    assert body["grading_run_id"] == str(run_id)
    assert body["status"] == "succeeded" and body["success"] is True
    assert body["counts"] == {"failed": 1, "succeeded": 2}
    assert body["n_students"] == 3


# -- retries and give-ups --------------------------------------------------------------------


async def test_receiver_failing_three_times_gets_it_on_the_fourth_with_the_same_id_and_body(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer(retry_base_s=0.2)  # waits of 0.1-0.2 s, 0.2-0.4 s, 0.4-0.8 s
    job_id = await add_job(store, receiver.script("/flaky", fail_first=3, fail_status=503), work_id="w")
    state = await settled(store, job_id)
    assert state["delivered_at"] and state["attempts"] == 4
    got = receiver.at("/flaky")
    assert len(got) == 4
    assert {r.delivery_id for r in got} == {state["id"]}
    assert {r.body for r in got} == {got[0].body}, "every attempt sends the same bytes"
    assert [r.attempt_header for r in got] == ["1", "2", "3", "4"]
    assert all(r.signed_ok for r in got)
    attempts = await store.deliveries.attempts_for(job_id)
    assert [(a.attempt, a.status_code, a.outcome) for a in attempts] == [
        (1, 503, "retry"), (2, 503, "retry"), (3, 503, "retry"), (4, 200, "delivered"),
    ]  # fmt: skip
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert gaps[2] > gaps[0], f"backoff grows: {gaps}"


@pytest.mark.parametrize(
    ("status", "delivered"),
    [(410, False), (400, False), (404, False), (401, False), (408, True), (425, True), (429, True), (500, True),
     (502, True)],
)  # fmt: skip
async def test_answers_that_give_up_and_answers_that_retry(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer, status: int, delivered: bool
) -> None:
    make_deliverer()
    job_id = await add_job(store, receiver.script("/x", fail_first=1, fail_status=status))
    state = await settled(store, job_id)
    attempts = await store.deliveries.attempts_for(job_id)
    if delivered:
        assert state.get("delivered_at") and len(receiver.at("/x")) == 2
        assert [a.status_code for a in attempts] == [status, 200]
    else:
        assert state.get("given_up") and not state.get("delivered_at")
        assert state["reason"] == f"HTTP {status}"
        assert len(receiver.at("/x")) == 1 and [a.outcome for a in attempts] == ["give_up"]


async def test_hanging_receiver_times_out_and_is_retried(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer(timeout_s=0.3)
    job_id = await add_job(store, receiver.script("/hang", fail_first=1, fail_status=HANG))
    state = await settled(store, job_id)
    assert state["delivered_at"]
    first, second = await store.deliveries.attempts_for(job_id)
    assert first.status_code is None and "Timeout" in (first.error or "") and first.outcome == "retry"
    assert 0.25 < first.duration_s < 2.0
    assert second.status_code == 200


async def test_redirect_is_not_followed_and_counts_as_not_delivered(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer()
    elsewhere = receiver.script("/elsewhere")
    job_id = await add_job(store, receiver.script("/moved", fail_first=1, fail_status=302, location=elsewhere))
    state = await settled(store, job_id)
    assert state["delivered_at"]
    assert receiver.at("/elsewhere") == [], "the redirect was not followed"
    first, second = await store.deliveries.attempts_for(job_id)
    assert (first.status_code, first.outcome) == (302, "retry")
    assert "not followed" in (first.error or "")
    assert second.status_code == 200 and len(receiver.at("/moved")) == 2


async def test_expired_delivery_is_given_up_not_retried_forever(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer()
    job_id = new_id()
    await store.db.jobs.insert_one({"_id": job_id, "status": "succeeded"})
    # max age 0.3 s, receiver always failing: a couple of attempts, then given up.
    await store.deliveries.set_pending("job", str(job_id), receiver.script("/down", fail_first=10**6), time.time(), 0.3)
    state = await settled(store, str(job_id))
    assert state.get("given_up") and "expired" in state["reason"] and "HTTP 503" in state["reason"]
    assert 1 <= len(receiver.at("/down")) < 10


# -- targets ---------------------------------------------------------------------------------

REFUSED_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1:8080/cb",
    "http://[fe80::1]/cb",
    "http://[fe80::1%25eth0]/cb",
    "http://[::ffff:169.254.169.254]/cb",
    "http://[::ffff:a9fe:a9fe]/cb",
    "http://[64:ff9b::a9fe:a9fe]/cb",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://168.63.129.16/machine",
    "http://0xa9fea9fe/",
    "http://2852039166/",
    "http://169.254.169.254./",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./",
    "http://0.0.0.0/",
    "ftp://lms.example.edu/cb",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "http:///cb",
    "http://lms.example.edu:99999/cb",
    "http://lms.example.edu/ cb",
    "https://lms.example.edu/" + "a" * 3000,
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_refused_urls_at_submission(url: str) -> None:
    with pytest.raises(CallbackTargetError):
        check_callback_url(url, TargetPolicy())


def test_refusals_say_why() -> None:
    with pytest.raises(CallbackTargetError, match="link-local"):
        check_callback_url("http://169.254.169.254/", TargetPolicy())
    with pytest.raises(CallbackTargetError, match="metadata"):
        check_callback_url("http://[fd00:ec2::254]/", TargetPolicy())
    with pytest.raises(CallbackTargetError, match="http:// or https://"):
        check_callback_url("gopher://x/", TargetPolicy())
    with pytest.raises(CallbackTargetError, match="must be a string"):
        check_callback_url(42, TargetPolicy())


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080/cb", "https://lms.example.edu/api/cb?token=x", "http://127.0.0.1/", "http://[::1]:9/"],
)
def test_ordinary_urls_are_allowed_by_default(url: str) -> None:
    assert check_callback_url(url, TargetPolicy()) == url


def test_allow_networks_restrict_literal_targets_at_submission() -> None:
    policy = TargetPolicy.from_strings(("10.0.0.0/8",))
    assert check_callback_url("http://10.1.2.3/cb", policy)
    with pytest.raises(CallbackTargetError, match="allow-networks"):
        check_callback_url("http://127.0.0.1/cb", policy)
    with pytest.raises(CallbackTargetError, match="link-local"):
        check_callback_url("http://169.254.169.254/", TargetPolicy.from_strings(("169.254.0.0/16",)))


async def test_refused_literal_target_is_given_up_at_delivery_without_connecting(
    store: Store, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer()
    job_id = await add_job(store, "http://[::ffff:169.254.169.254]/latest/meta-data/")
    state = await settled(store, job_id)
    assert state.get("given_up") and "link-local" in state["reason"]
    [attempt] = await store.deliveries.attempts_for(job_id)
    assert attempt.status_code is None and attempt.outcome == "give_up"


@pytest.mark.parametrize(
    "addresses", [["169.254.169.254"], ["127.0.0.1", "169.254.169.254"], ["::ffff:169.254.169.254"], ["fe80::1"]]
)
async def test_name_resolving_to_a_refused_address_is_given_up_after_dns(
    store: Store, make_deliverer: MakeDeliverer, receiver: CallbackReceiver, monkeypatch: pytest.MonkeyPatch,
    addresses: list[str],
) -> None:  # fmt: skip
    """A name that resolves (or rebinds) to metadata is refused as a whole, before any connect."""
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo
    connects: list[Any] = []

    async def fake_getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
        if host == "lms.rebind.test":
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses
            ]
        return await real_getaddrinfo(host, port, **kwargs)

    real_connect = socket.socket.connect

    def spy_connect(sock: socket.socket, address: Any) -> None:
        connects.append(address)
        real_connect(sock, address)

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", spy_connect)
    make_deliverer()
    job_id = await add_job(store, f"http://lms.rebind.test:{receiver.port}/cb")
    state = await settled(store, job_id)
    assert state.get("given_up") and "after DNS" in state["reason"]
    # The spy sees the client's connects: a callback to an allowed name goes through it.
    control = await add_job(store, receiver.url("/control", host="localhost"))
    assert (await settled(store, control)).get("delivered_at")
    assert any(isinstance(a, tuple) and a[1] == receiver.port for a in connects)
    refused = {a for a in addresses if a != "127.0.0.1"}
    assert not any(isinstance(a, tuple) and a[0] in refused for a in connects), connects


async def test_localhost_name_is_resolved_and_delivered_by_default(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer()
    job_id = await add_job(store, receiver.url("/by-name", host="localhost"))
    assert (await settled(store, job_id)).get("delivered_at")
    assert len(receiver.at("/by-name")) == 1


async def test_allow_networks_restrict_delivery_after_dns(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer(allow=("10.0.0.0/8",))
    outside = await add_job(store, receiver.url("/outside", host="localhost"))
    state = await settled(store, outside)
    assert state.get("given_up") and "allow-networks" in state["reason"]
    assert receiver.at("/outside") == []


async def test_allow_networks_let_matching_targets_through(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    make_deliverer(allow=("127.0.0.0/8",))
    # localhost may also resolve to ::1, which is outside: only 127.0.0.1 is used.
    inside = await add_job(store, receiver.url("/inside", host="localhost"))
    assert (await settled(store, inside)).get("delivered_at")
    assert len(receiver.at("/inside")) == 1


# -- durability and several API processes -----------------------------------------------------


async def test_two_api_processes_deliver_each_callback_once(
    make_api: MakeApi, store: Store, receiver: CallbackReceiver
) -> None:
    apis = [await make_api(callback_secret=SECRET) for _ in range(2)]
    url = receiver.script("/many")
    job_ids = [await add_job(store, url, work_id=f"w{i}") for i in range(60)]
    for api in apis:
        assert api.deliverer is not None
        api.deliverer.notify()
    for job_id in job_ids:
        assert (await settled(store, job_id)).get("delivered_at")
    got = receiver.at("/many")
    per_job = Counter(r.json["job_id"] for r in got)
    assert set(per_job) == set(job_ids) and max(per_job.values()) == 1, "each callback arrived exactly once"
    assert all(r.signed_ok for r in got)


async def test_delivery_recorded_while_no_deliverer_runs_is_sent_by_the_next_api(
    make_api: MakeApi, store: Store, receiver: CallbackReceiver
) -> None:
    first = await make_api(callback_secret=SECRET)
    assert first.deliverer is not None
    await first.deliverer.stop()  # as if the process died right after ending the job
    job_id = await add_job(store, receiver.script("/later"))
    await first.stop()
    assert receiver.at("/later") == []
    await make_api(callback_secret=SECRET)
    assert (await settled(store, job_id)).get("delivered_at")
    assert len(receiver.at("/later")) == 1


async def test_claimant_dying_mid_send_loses_the_delivery_to_another_after_its_lease(
    store: Store, receiver: CallbackReceiver, make_deliverer: MakeDeliverer
) -> None:
    first = make_deliverer(lease_s=0.5)
    job_id = await add_job(store, receiver.script("/slow", fail_first=1, fail_status=HANG))
    await eventually(lambda: asyncio.sleep(0, len(receiver.at("/slow"))), lambda n: n == 1)
    await first.stop(grace_s=0)  # killed while the receiver holds the request
    make_deliverer(lease_s=0.5)
    state = await settled(store, job_id)
    assert state["delivered_at"]
    got = receiver.at("/slow")
    assert len(got) == 2 and got[0].delivery_id == got[1].delivery_id == state["id"]


async def test_api_sigkilled_with_a_pending_delivery_delivers_after_restart(
    tmp_path: Path, mongo_url: str, store: Store, receiver: CallbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROADWAY_CALLBACK_SECRET", SECRET)
    first = await asyncio.to_thread(ApiProcess(tmp_path / "a", "--mongo-url", mongo_url).start)
    try:
        job_id = await add_job(store, receiver.script("/lms", fail_first=1, fail_status=503))
        await eventually(lambda: store.deliveries.attempts_for(job_id), lambda a: len(a) == 1)
        await asyncio.to_thread(first.kill)
    finally:
        await asyncio.to_thread(first.kill)
    second = await asyncio.to_thread(ApiProcess(tmp_path / "b", "--mongo-url", mongo_url).start)
    try:
        state = await settled(store, job_id)
    finally:
        await asyncio.to_thread(second.stop)
    assert state["delivered_at"]
    got = receiver.at("/lms")
    assert len(got) == 2 and got[0].delivery_id == got[1].delivery_id and all(r.signed_ok for r in got)


# -- the secret ------------------------------------------------------------------------------


def test_callback_secret_is_generated_once_kept_and_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = load_or_create(tmp_path, "c" * 40, "d" * 40)
    assert tokens.callback and len(tokens.callback) >= 32
    assert load_or_create(tmp_path, "c" * 40, "d" * 40).callback == tokens.callback, "kept across restarts"
    announce_tokens(tokens, make_test_config(data_dir=tmp_path))
    assert f"Callbacks are signed with secret: {tokens.callback}" in capsys.readouterr().out
    configured = load_or_create(tmp_path, "c" * 40, "d" * 40, "my-secret")
    assert configured.callback == "my-secret" and "callback" not in configured.unconfigured


async def test_stopping_a_deliverer_mid_claim_always_returns(store: Store, receiver: CallbackReceiver) -> None:
    """A cancel landing inside a store call must not leave the API's stop hanging."""
    url = receiver.script("/stop")
    job_ids = [await add_job(store, url) for _ in range(5)]
    for i in range(40):
        for job_id in job_ids:  # due again, so every round has claims in progress
            await store.deliveries.set_pending("job", job_id, url, time.time(), 3600.0)
        sender = CallbackSender(SECRET, TargetPolicy(), timeout_s=1.0)
        deliverer = Deliverer(store.deliveries, sender, scan_interval_s=0.01)
        deliverer.start()
        deliverer.notify()
        await asyncio.sleep(0.002 * (i % 5))
        # A grace long enough for sends in flight to end by themselves: this is about the claim.
        stopping = asyncio.ensure_future(deliverer.stop(grace_s=5.0))
        done, _ = await asyncio.wait({stopping}, timeout=8.0)
        assert done, f"stop() hung on round {i}"
