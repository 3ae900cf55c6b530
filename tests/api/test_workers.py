"""Grader registration and heartbeats, including the original grader's encodings."""

from __future__ import annotations

from tests.helpers import ApiClient


async def test_register_returns_opaque_id_and_integer_heartbeat(api: ApiClient) -> None:
    resp = await api.request("GET", "/api/v1/worker_register", params={"token": api.cluster_token})
    assert resp.status == 200
    body = resp.json
    assert isinstance(body["heartbeat"], int) and body["heartbeat"] == 1
    assert len(body["worker_id"]) >= 32 and int(body["worker_id"], 16) >= 0
    other = await api.register()
    assert other != body["worker_id"]


async def test_register_token_errors(api: ApiClient) -> None:
    missing = await api.request("GET", "/api/v1/worker_register")
    assert missing.status == 400 and "token" in missing.json["error"]
    wrong = await api.request("GET", "/api/v1/worker_register", params={"token": "nope"})
    assert wrong.status == 401
    client_token = await api.request("GET", "/api/v1/worker_register", params={"token": api.client_token})
    assert client_token.status == 401
    header = await api.request(
        "GET", "/api/v1/worker_register", headers={"Authorization": f"Bearer {api.cluster_token}"}
    )
    assert header.status == 200


async def test_heartbeat_encodings_and_unknown_worker(api: ApiClient) -> None:
    worker = await api.register()
    # The original grader: worker_id in the query string, empty body.
    query = await api.request("POST", "/api/v1/heartbeat", params={"worker_id": worker})
    assert query.status == 200 and query.json == {}
    json_body = await api.request("POST", "/api/v1/heartbeat", json_body={"worker_id": worker})
    assert json_body.status == 200
    form = await api.request("POST", "/api/v1/heartbeat", form={"worker_id": worker})
    assert form.status == 200
    unknown = await api.heartbeat("f" * 64)
    assert unknown.status == 404 and "register" in unknown.json["error"]
    missing = await api.request("POST", "/api/v1/heartbeat")
    assert missing.status == 400


async def test_health_reports_store_and_workers(api: ApiClient) -> None:
    await api.register()
    resp = await api.request("GET", "/api/v1/health")
    assert resp.status == 200
    assert resp.json["store"] == "ok" and resp.json["workers_alive"] == 1
