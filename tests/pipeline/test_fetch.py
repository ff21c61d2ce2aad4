"""``workers.fetch``: http(s) against a real local HTTP server, and ``file://`` against real
directories, symlinks and FIFOs. Refusals carry their stable ``AdapterInvalid`` code."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from store.errors import AdapterInvalid, TransientError
from store.settings import StoreSettings
from workers.fetch import fetch_artifact
from workers.settings import WorkerSettings

PAYLOAD = b"lora-bytes-" * 100
SECRET = b"root:x:0:0:outside-the-roots"


@dataclass
class Server:
    port: int
    requests: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A real HTTP server on 127.0.0.1 in a thread."""
    state = Server(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            if "Content_Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests.append(self.path)
            path = self.path
            if path == "/adapter.nemo":
                self._send(200, PAYLOAD)
            elif path == "/declared-big":
                self._send(200, b"x" * 10, Content_Length=str(10**9))
            elif path == "/streamed-big":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()  # no Content-Length: the cap applies while streaming
                for _ in range(64):
                    self.wfile.write(b"y" * 1024)
            elif path == "/slow":
                time.sleep(3)
                self._send(200, PAYLOAD)
            elif path == "/missing":
                self._send(404)
            elif path == "/overloaded":
                self._send(503)
            elif path == "/redirect-metadata":
                self._send(302, Location="http://169.254.169.254/latest/meta-data/")
            elif path == "/redirect-localhost":
                self._send(302, Location=f"http://localhost:{state.port}/adapter.nemo")
            elif path == "/redirect-private":
                self._send(301, Location="http://10.1.2.3/adapter.nemo")
            elif path == "/redirect-file":
                self._send(302, Location="file:///etc/passwd")
            elif path == "/redirect-same-host":
                self._send(307, Location="/adapter.nemo")
            elif path == "/redirect-loop":
                self._send(302, Location="/redirect-loop")
            else:
                self._send(404)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _settings(tmp: Path, **kw: object) -> WorkerSettings:
    roots = tmp / "roots"
    roots.mkdir(exist_ok=True)
    kw.setdefault("artifact_roots", str(roots))
    kw.setdefault("artifact_http_timeout", 5.0)
    return WorkerSettings(**kw)  # type: ignore[arg-type]


def _fetch(uri: str, tmp: Path, settings: WorkerSettings) -> Path:
    work = tmp / f"work-{time.monotonic_ns()}"
    work.mkdir()
    return fetch_artifact(uri, work, settings, StoreSettings(home=tmp / "home"))


def _refused(code: str, uri: str, tmp: Path, settings: WorkerSettings) -> AdapterInvalid:
    with pytest.raises(AdapterInvalid) as info:
        _fetch(uri, tmp, settings)
    assert info.value.code == code, info.value.message
    return info.value


# --- http(s) -----------------------------------------------------------------------------


def test_http_download_succeeds_when_private_hosts_are_allowed(
    server: Server, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, artifact_allow_private_hosts=True)
    out = _fetch(server.url("/adapter.nemo"), tmp_path, settings)
    assert [p.name for p in out.iterdir()] == ["adapter.nemo"]
    assert (out / "adapter.nemo").read_bytes() == PAYLOAD


def test_http_download_succeeds_from_an_explicitly_allowed_host(
    server: Server, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, artifact_allowed_hosts="127.0.0.1")
    out = _fetch(server.url("/adapter.nemo"), tmp_path, settings)
    assert (out / "adapter.nemo").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "[::1]",
        "localhost",
        "169.254.169.254",
        "10.0.0.8",
        "172.16.5.4",
        "192.168.1.1",
        "[fe80::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "[fc00::1]",
    ],
)
def test_non_public_hosts_are_refused_without_a_request(
    server: Server, tmp_path: Path, host: str
) -> None:
    before = len(server.requests)
    err = _refused(
        "artifact_not_allowed", server.url("/adapter.nemo", host), tmp_path, _settings(tmp_path)
    )
    assert "non-public" in err.message
    assert len(server.requests) == before  # refused before connecting


def test_declared_size_over_the_cap_is_refused(server: Server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, artifact_allow_private_hosts=True, artifact_max_bytes=4096)
    _refused("file_too_large", server.url("/declared-big"), tmp_path, settings)


def test_streamed_size_over_the_cap_is_refused(server: Server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, artifact_allow_private_hosts=True, artifact_max_bytes=4096)
    _refused("file_too_large", server.url("/streamed-big"), tmp_path, settings)


def test_timeout_is_a_transient_error(server: Server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, artifact_allow_private_hosts=True, artifact_http_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TransientError):
        _fetch(server.url("/slow"), tmp_path, settings)
    assert time.monotonic() - started < 2.5


def test_http_errors_final_and_transient(server: Server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, artifact_allow_private_hosts=True)
    _refused("artifact_unreachable", server.url("/missing"), tmp_path, settings)
    with pytest.raises(TransientError):
        _fetch(server.url("/overloaded"), tmp_path, settings)


@pytest.mark.parametrize(
    "path", ["/redirect-metadata", "/redirect-localhost", "/redirect-private", "/redirect-file"]
)
def test_redirect_to_a_non_public_target_is_refused(
    server: Server, tmp_path: Path, path: str
) -> None:
    # The first host is trusted by name; where it redirects is checked on its own.
    settings = _settings(tmp_path, artifact_allowed_hosts="127.0.0.1")
    before = list(server.requests)
    _refused("artifact_not_allowed", server.url(path), tmp_path, settings)
    assert server.requests[len(before) :] == [path]  # the target was never requested


def test_redirect_to_an_allowed_host_is_followed(server: Server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, artifact_allowed_hosts="127.0.0.1")
    out = _fetch(server.url("/redirect-same-host"), tmp_path, settings)
    assert (out / "redirect-same-host").read_bytes() == PAYLOAD


def test_redirect_loop_is_bounded(server: Server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, artifact_allowed_hosts="127.0.0.1", artifact_max_redirects=3)
    before = len(server.requests)
    err = _refused("artifact_unreachable", server.url("/redirect-loop"), tmp_path, settings)
    assert "redirects" in err.message and len(server.requests) - before == 4


def test_unsupported_scheme_is_refused(tmp_path: Path) -> None:
    _refused("artifact_not_allowed", "ftp://example.com/a.nemo", tmp_path, _settings(tmp_path))


# --- file:// -----------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    roots = tmp_path / "roots"
    roots.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    good = roots / "job-1"
    good.mkdir()
    (good / "adapter_config.json").write_text('{"r": 4}')
    (good / "weights").mkdir()
    (good / "weights" / "adapter_model.safetensors").write_bytes(PAYLOAD)
    return {"roots": roots, "outside": outside, "good": good}


def test_file_directory_under_the_roots_is_snapshotted(
    tmp_path: Path, layout: dict[str, Path]
) -> None:
    out = _fetch(layout["good"].as_uri(), tmp_path, _settings(tmp_path))
    assert out != layout["good"] and not out.is_relative_to(layout["roots"])
    assert (out / "adapter_config.json").read_text() == '{"r": 4}'
    assert (out / "weights" / "adapter_model.safetensors").read_bytes() == PAYLOAD
    # A later change to the source cannot reach what the formats layer reads.
    (layout["good"] / "adapter_config.json").write_text("changed")
    assert (out / "adapter_config.json").read_text() == '{"r": 4}'


def test_lone_file_is_placed_in_a_directory(tmp_path: Path, layout: dict[str, Path]) -> None:
    single = layout["roots"] / "adapter.nemo"
    single.write_bytes(PAYLOAD)
    out = _fetch(single.as_uri(), tmp_path, _settings(tmp_path))
    assert [p.name for p in out.iterdir()] == ["adapter.nemo"]


def test_symlink_inside_the_roots_is_followed(tmp_path: Path, layout: dict[str, Path]) -> None:
    (layout["good"] / "alias.json").symlink_to(layout["good"] / "adapter_config.json")
    out = _fetch(layout["good"].as_uri(), tmp_path, _settings(tmp_path))
    assert (out / "alias.json").read_text() == '{"r": 4}' and not (out / "alias.json").is_symlink()


@pytest.mark.parametrize(
    "uri",
    ["file:///etc", "file:///etc/passwd", "file:///", "file:///proc/self/environ"],
)
def test_file_outside_the_roots_is_refused(tmp_path: Path, uri: str) -> None:
    _refused("artifact_not_allowed", uri, tmp_path, _settings(tmp_path))


def test_dotdot_escape_is_refused(tmp_path: Path, layout: dict[str, Path]) -> None:
    uri = "file://" + str(layout["roots"]) + "/job-1/../../outside/passwd"
    _refused("artifact_not_allowed", uri, tmp_path, _settings(tmp_path))
    uri = "file://" + str(layout["roots"]) + "/job-1/%2e%2e/%2e%2e/outside"
    _refused("artifact_not_allowed", uri, tmp_path, _settings(tmp_path))


def test_sibling_with_the_roots_as_prefix_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "roots-evil"
    evil.mkdir()
    (evil / "a.nemo").write_bytes(PAYLOAD)
    _refused("artifact_not_allowed", (evil / "a.nemo").as_uri(), tmp_path, _settings(tmp_path))


@pytest.mark.parametrize("target", ["passwd", "."], ids=["to-file", "to-directory"])
def test_artifact_that_is_a_symlink_out_of_the_roots_is_refused(
    tmp_path: Path, layout: dict[str, Path], target: str
) -> None:
    link = layout["roots"] / "innocent"
    link.symlink_to(layout["outside"] / target)
    _refused("artifact_not_allowed", link.as_uri(), tmp_path, _settings(tmp_path))


@pytest.mark.parametrize("target", ["passwd", "."], ids=["to-file", "to-directory"])
def test_symlink_inside_the_artifact_pointing_out_is_refused(
    tmp_path: Path, layout: dict[str, Path], target: str
) -> None:
    (layout["good"] / "weights" / "extra").symlink_to(layout["outside"] / target)
    err = _refused("artifact_not_allowed", layout["good"].as_uri(), tmp_path, _settings(tmp_path))
    assert SECRET.decode() not in err.message


def test_directory_symlink_loop_is_refused(tmp_path: Path, layout: dict[str, Path]) -> None:
    (layout["good"] / "weights" / "up").symlink_to(layout["good"])
    _refused("artifact_not_allowed", layout["good"].as_uri(), tmp_path, _settings(tmp_path))


def test_fifo_in_the_artifact_is_refused_without_blocking(
    tmp_path: Path, layout: dict[str, Path]
) -> None:
    os.mkfifo(layout["good"] / "pipe")
    _refused("artifact_not_allowed", layout["good"].as_uri(), tmp_path, _settings(tmp_path))


def test_device_is_refused(tmp_path: Path, layout: dict[str, Path]) -> None:
    (layout["good"] / "null").symlink_to("/dev/null")
    settings = _settings(tmp_path, artifact_roots=f"{layout['roots']}:/dev")
    _refused("artifact_not_allowed", layout["good"].as_uri(), tmp_path, settings)


def test_missing_file_is_unreachable(tmp_path: Path, layout: dict[str, Path]) -> None:
    uri = (layout["roots"] / "nope").as_uri()
    _refused("artifact_unreachable", uri, tmp_path, _settings(tmp_path))


def test_directory_over_the_size_cap_is_refused(tmp_path: Path, layout: dict[str, Path]) -> None:
    settings = _settings(tmp_path, artifact_max_bytes=len(PAYLOAD) // 2)
    _refused("file_too_large", layout["good"].as_uri(), tmp_path, settings)


def test_symlink_swapped_during_fetches_never_leaks_outside_bytes(
    tmp_path: Path, layout: dict[str, Path]
) -> None:
    """The check-then-read race: a trainer flips a symlink between an inside file and an
    outside one while the worker fetches. What is read is checked after opening, so the
    outside bytes never appear in a snapshot (a path check before reading would let them)."""
    inside = layout["roots"] / "inside.json"
    inside.write_text('{"r": 4}')
    link = layout["good"] / "adapter_config.json"
    link.unlink()
    link.symlink_to(inside)
    stop = threading.Event()

    def flip() -> None:
        tmp_link = layout["roots"] / ".swap"
        while not stop.is_set():
            for target in (layout["outside"] / "passwd", inside):
                tmp_link.unlink(missing_ok=True)
                tmp_link.symlink_to(target)
                os.replace(tmp_link, link)  # atomic swap, as an attacker would do

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    settings = _settings(tmp_path)
    outcomes = {"ok": 0, "refused": 0}
    try:
        for _ in range(150):
            try:
                out = _fetch(layout["good"].as_uri(), tmp_path, settings)
            except AdapterInvalid as exc:
                assert exc.code == "artifact_not_allowed", exc.message
                outcomes["refused"] += 1
                continue
            assert (out / "adapter_config.json").read_bytes() == b'{"r": 4}'
            outcomes["ok"] += 1
    finally:
        stop.set()
        flipper.join(timeout=5)
    assert outcomes["ok"] + outcomes["refused"] == 150
