"""Signed webhooks end to end: a live registry (SQLite and PostgreSQL), the real sender
process (``lorafleet webhook-sender``) and a real local HTTP receiver that checks every
signature with the reference implementation (``store.webhooks.verify_signature``).
Retries with back-off, the delivery log, replay, the SSRF rules, and a kill -9 of the
sender mid-delivery that loses nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.processes import Proc, lorafleet_argv, process_env, wait_for
from support.tiny import tiny_hf_config

from store.db import session_scope
from store.webhooks import verify_signature
from workers.settings import WorkerSettings
from workers.webhooks import WebhookSettings, deliver_due

BASE = "meta/tiny"


@dataclass
class Receiver:
    """A local HTTP endpoint: answers ``codes`` in turn (then 200), records every request,
    and with ``hold`` set keeps the first request open until ``release`` is set."""

    codes: list[int] = field(default_factory=list)
    hold: bool = False
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def ids(self) -> list[str]:
        return [h["lorafleet-delivery"] for h, _ in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            if state.hold and len(state.received) == 1:
                state.holding.set()
                state.release.wait(30)
            code = state.codes.pop(0) if state.codes else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveRegistry, str]]:
    with fresh_database(request.param, tmp_path) as url, serve_registry(url, tmp_path) as live:
        live.admin.register_base_model(BASE, tiny_hf_config())
        live.admin.create_namespace("bank", approval_policy="manual")
        yield live, url


def _sender(
    reg: LiveRegistry, db_url: str, tmp_path: Path, name: str, *args: str, **env: str
) -> Proc:
    variables = {
        "LORAFLEET_DATABASE_URL": db_url,
        "LORAFLEET_HOME": str(tmp_path / f"{name}-home"),
        "LORAFLEET_ARTIFACT_ALLOW_PRIVATE_HOSTS": "true",  # the receiver is on 127.0.0.1
        "LORAFLEET_WEBHOOK_POLL_S": "0.1",
        "LORAFLEET_WEBHOOK_BACKOFF_S": "0.2",
        **env,
    }
    argv = lorafleet_argv("webhook-sender", *args)
    return Proc(name, argv, process_env(variables), tmp_path)


def _hook(reg: LiveRegistry, url: str, events: list[str]) -> dict:
    with reg.http(reg.admin_token) as client:
        answer = client.post("/v1/namespaces/bank/webhooks", json={"url": url, "events": events})
    assert answer.status_code == 201, answer.text
    return answer.json()


def _upload(reg: LiveRegistry, tmp_path: Path, version: str, seed: int) -> dict:
    src = write_hf_peft(random_adapter(seed=seed), tmp_path / f"ad-{version}")
    return reg.admin.upload_adapter(
        src, namespace="bank", name="bot", version=version, base_model=BASE
    )


def _deliveries(reg: LiveRegistry, hook_id: str) -> list[dict]:
    with reg.http(reg.admin_token) as client:
        answer = client.get(f"/v1/namespaces/bank/webhooks/{hook_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def test_signed_deliveries_retry_with_backoff_and_replay(
    registry: tuple[LiveRegistry, str], receiver: Receiver, tmp_path: Path
) -> None:
    reg, db_url = registry
    hook = _hook(reg, receiver.url, ["adapter.pending", "adapter.ready"])
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    with reg.http(reg.admin_token) as client:
        listed = client.get("/v1/namespaces/bank/webhooks").json()["data"]
    assert [h["id"] for h in listed] == [hook["id"]] and listed[0]["secret"] is None

    receiver.codes = [500, 503]  # the first two attempts fail
    entity = _upload(reg, tmp_path, "1.0.0", 1)  # -> adapter.pending
    reg.admin.set_status(entity["id"], "rejected", reason="no")  # not subscribed
    sender = _sender(reg, db_url, tmp_path, "sender").start()
    try:
        wait_for(lambda: len(receiver.received) >= 3, 60, "three attempts")
        log = _deliveries(reg, hook["id"])
        wait_for(lambda: _deliveries(reg, hook["id"])[0]["status"] == "delivered", 30, "delivered")
        log = _deliveries(reg, hook["id"])
        assert len(log) == 1  # rejected was not subscribed
        assert (log[0]["attempts"], log[0]["last_status_code"]) == (3, 200)
        assert log[0]["event_type"] == "adapter.pending"
        assert len(set(receiver.ids())) == 1  # the same delivery id on every attempt
        for headers, body in receiver.received:
            assert verify_signature(secret, headers, body)
            assert not verify_signature(secret, headers, body + b" ")
            assert not verify_signature("whsec_wrong", headers, body)
            assert json.loads(body)["adapter_id"] == entity["id"]
            assert headers["lorafleet-event"] == "adapter.pending"

        with reg.http(reg.admin_token) as client:
            replay = client.post(
                f"/v1/namespaces/bank/webhooks/{hook['id']}/deliveries/{log[0]['id']}/replay"
            )
        assert replay.status_code == 202, replay.text
        assert replay.json()["replay_of"] == log[0]["id"]
        wait_for(lambda: len(receiver.received) >= 4, 30, "the replay")
        headers, body = receiver.received[-1]
        assert headers["lorafleet-delivery"] == replay.json()["id"]
        assert verify_signature(secret, headers, body)
        assert json.loads(body)["event_id"] == json.loads(receiver.received[0][1])["event_id"]
    finally:
        sender.stop()


def test_kill9_of_the_sender_mid_delivery_loses_nothing(
    registry: tuple[LiveRegistry, str], receiver: Receiver, tmp_path: Path
) -> None:
    reg, db_url = registry
    hook = _hook(reg, receiver.url, ["adapter.pending"])
    receiver.hold = True
    _upload(reg, tmp_path, "1.0.0", 2)
    first = _sender(reg, db_url, tmp_path, "first", LORAFLEET_WEBHOOK_LEASE_S="2").start()
    assert receiver.holding.wait(60), first.tail()
    first.kill9()  # the request is in flight, its answer will never be recorded
    receiver.release.set()
    (log,) = _deliveries(reg, hook["id"])
    assert log["status"] == "pending" and log["attempts"] == 0
    second = _sender(reg, db_url, tmp_path, "second", LORAFLEET_WEBHOOK_LEASE_S="2").start()
    try:
        wait_for(lambda: _deliveries(reg, hook["id"])[0]["status"] == "delivered", 60, "redelivery")
    finally:
        second.stop()
    assert receiver.ids() == [log["id"], log["id"]]  # at least once: the same id, dedupable
    (done,) = _deliveries(reg, hook["id"])
    assert done["attempts"] == 1 and done["last_status_code"] == 200


def test_webhook_urls_get_the_artifact_ssrf_rules(
    registry: tuple[LiveRegistry, str], receiver: Receiver, tmp_path: Path
) -> None:
    reg, db_url = registry
    hook = _hook(reg, receiver.url, ["adapter.pending"])
    _upload(reg, tmp_path, "1.0.0", 3)
    strict = WorkerSettings(artifact_allow_private_hosts=False, artifact_allowed_hosts="")
    with httpx.Client() as client:
        attempted = deliver_due(
            lambda: session_scope(reg.engine), client, WebhookSettings(), strict
        )
    assert attempted == 1 and receiver.received == []
    (log,) = _deliveries(reg, hook["id"])
    assert log["status"] == "failed" and log["last_error"].startswith("url_not_allowed")
    with reg.http(reg.admin_token) as client:
        for url in ("ftp://example.com/x", "http://user:pw@example.com/", "not a url"):
            bad = client.post(
                "/v1/namespaces/bank/webhooks", json={"url": url, "events": ["adapter.ready"]}
            )
            assert bad.status_code in (400, 422), (url, bad.text)
        unknown = client.post(
            "/v1/namespaces/bank/webhooks",
            json={"url": receiver.url, "events": ["adapter.exploded"]},
        )
        assert unknown.status_code == 422


def test_webhooks_are_a_namespace_admins_and_tenant_scoped(
    registry: tuple[LiveRegistry, str], receiver: Receiver
) -> None:
    reg, _ = registry
    reg.admin.create_namespace("other", approval_policy="manual")
    hook = _hook(reg, receiver.url, ["adapter.ready"])
    writer = reg.mint("writer", "bank", "wendy")
    stranger = reg.mint("admin", "other", "olga")
    with reg.http(writer) as client:
        assert client.get("/v1/namespaces/bank/webhooks").status_code == 403
    with reg.http(stranger) as client:
        theirs = client.get(f"/v1/namespaces/bank/webhooks/{hook['id']}/deliveries")
        missing = client.get("/v1/namespaces/nowhere/webhooks/wh_x/deliveries")
        assert theirs.status_code == missing.status_code == 404
        assert client.delete(f"/v1/namespaces/bank/webhooks/{hook['id']}").status_code == 404
        mine = client.get(f"/v1/namespaces/other/webhooks/{hook['id']}/deliveries")
        assert mine.status_code == 404
    with reg.http(reg.admin_token) as client:
        assert client.delete(f"/v1/namespaces/bank/webhooks/{hook['id']}").status_code == 200
        assert client.get("/v1/namespaces/bank/webhooks").json()["data"] == []


def test_the_webhooks_cli(registry: tuple[LiveRegistry, str], receiver: Receiver, tmp_path):
    from support.cli import run_cli

    reg, _ = registry
    made = run_cli(
        reg, tmp_path, "webhooks", "create", "bank", receiver.url, "--event", "adapter.pending",
        "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    hook = json.loads(made.stdout)
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["adapter.pending"]
    listed = run_cli(reg, tmp_path, "webhooks", "list", "bank", "--json")
    assert [h["id"] for h in json.loads(listed.stdout)["data"]] == [hook["id"]]
    _upload(reg, tmp_path, "1.0.0", 5)
    log = run_cli(reg, tmp_path, "webhooks", "deliveries", "bank", hook["id"], "--json")
    (delivery,) = json.loads(log.stdout)["data"]
    assert delivery["status"] == "pending" and delivery["event_type"] == "adapter.pending"
    replay = ("webhooks", "replay", "bank", hook["id"], delivery["id"])
    replayed = run_cli(reg, tmp_path, *replay, columns=200)
    assert replayed.returncode == 0 and f"replay of {delivery['id']}" in replayed.stdout
    gone = run_cli(reg, tmp_path, "webhooks", "delete", "bank", hook["id"])
    assert gone.returncode == 0
    assert (
        json.loads(run_cli(reg, tmp_path, "webhooks", "list", "bank", "--json").stdout)["data"]
        == []
    )


def test_the_sender_keeps_its_alive_file_fresh_for_health_checks(
    registry: tuple[LiveRegistry, str], tmp_path: Path
) -> None:
    # compose's health check reads the age of --alive-file: every pass touches it.
    reg, db_url = registry
    alive = tmp_path / "sender.alive"
    proc = _sender(reg, db_url, tmp_path, "alive", "--alive-file", str(alive)).start()
    try:
        wait_for(alive.exists, 60, "the alive file")
        first = alive.stat().st_mtime_ns
        wait_for(lambda: alive.stat().st_mtime_ns > first, 30, "a second touch")
    finally:
        proc.stop()
