"""Server start-up (``lambdahat serve``) and the upload cap on a real uvicorn server.

- The cap is enforced while bytes arrive: a client streaming an endless upload gets 413 after about
  the cap, not after sending everything, and the staging file is gone.
- ``serve`` on a fresh data dir migrates, creates ``<data_dir>/api_key`` (mode 0600) that works
  against the API, reuses it on restart, and refuses a non-loopback address until an explicit key exists.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import assert_nothing_stored, free_port, serve_in_thread

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def live_server(service_settings):
    """The app on a real uvicorn server in a thread; yields its port."""
    with serve_in_thread(service_settings) as url:
        yield int(url.rsplit(":", 1)[1])


def _read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < 200:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


@sqlite_only
def test_cap_is_enforced_while_the_body_streams(service_settings, live_server):
    from tests.helpers import create_key

    cap = 1024 * 1024
    service_settings.max_upload_bytes = cap
    key = create_key(service_settings, "streamer")
    intended = 128 * 1024 * 1024  # far more than the cap plus what kernel socket buffers absorb
    boundary = "lambdahatboundary"
    sock = socket.create_connection(("127.0.0.1", live_server))
    head = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    preamble = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n\r\n'.encode()

    def chunk(payload: bytes) -> bytes:
        return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"

    sock.sendall(head + chunk(preamble))
    sent, block = 0, b"\0" * 65536
    answered = False
    while sent < intended:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            answered = True
            break
        try:
            sock.sendall(chunk(block))
        except (BrokenPipeError, ConnectionResetError):
            answered = True
            break
        sent += len(block)
    response = _read_response(sock)
    sock.close()
    print(f"sent {sent} bytes before the answer (cap {cap})")
    assert answered and sent < 32 * cap, f"the server let {sent} bytes through before answering"
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"LAMBDAHAT_MAX_UPLOAD_BYTES" in response
    assert_nothing_stored(service_settings)


@sqlite_only
def test_declared_oversize_is_refused_before_reading(service_settings, live_server):
    from tests.helpers import create_key

    key = create_key(service_settings, "declared")
    sock = socket.create_connection(("127.0.0.1", live_server))
    sock.sendall(
        (f"POST /v1/checkpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
         f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {10 * 1024**4}\r\n\r\n").encode()
    )
    response = _read_response(sock)  # no body sent at all
    sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert_nothing_stored(service_settings)


# ---------------------------------------------------------------------------------------------
# lambdahat serve


def _cli_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env["LAMBDAHAT_DATA_DIR"] = str(data_dir)
    return env


def _serve(data_dir: Path, port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "serve", "--host", host, "--port", str(port)],
        env=_cli_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become healthy")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.mark.slow
def test_serve_creates_a_private_local_key_that_works(tmp_path):
    data_dir = tmp_path / "fresh"  # does not exist yet
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(data_dir, port)
    try:
        _wait_healthy(proc, url)
        key_file = data_dir / "api_key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert httpx.get(url + "/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(url + "/v1/datasets").status_code == 401
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
    finally:
        _stop(proc)
    # A restart keeps the same key.
    proc = _serve(data_dir, port)
    try:
        _wait_healthy(proc, url)
        assert (data_dir / "api_key").read_text().strip() == key
        assert httpx.get(url + "/v1/checkpoints", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        _stop(proc)


def test_serve_refuses_a_public_address_with_only_the_local_key(tmp_path):
    from backend.settings import Settings
    from ops.serve import prepare

    data_dir = tmp_path / "public"
    proc = _serve(data_dir, free_port(), host="0.0.0.0")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "refusing to bind 0.0.0.0" in out and "lambdahat keys create" in out
    assert (data_dir / "api_key").exists()  # the local key was made; it alone does not open the service

    created = subprocess.run([sys.executable, "-m", "ops.cli", "keys", "create", "--name", "remote-user"],
                             env=_cli_env(data_dir), capture_output=True, text=True, timeout=120, check=True)
    assert created.stdout.strip().splitlines()[-1].startswith("lh_")
    prepare(Settings(data_dir=data_dir), "0.0.0.0")  # now allowed (not bound here)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("127.0.0.2", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                                ("::", False), ("example.org", False)])
def test_loopback_detection(host, loopback):
    from ops.serve import is_loopback

    assert is_loopback(host) is loopback


def test_local_key_is_replaced_not_multiplied(tmp_path):
    """Losing the key file makes a new local key and revokes the old one; neither counts as an
    explicit key for binding a public address; loosened file permissions are repaired."""
    from backend.db import session_scope
    from backend.settings import Settings
    from ops.serve import ServerConfigError, explicit_key_count, local_key_path, prepare
    from tests.helpers import create_key

    settings = Settings(data_dir=tmp_path / "d")
    first = prepare(settings, "127.0.0.1")
    local_key_path(settings).unlink()
    second = prepare(settings, "127.0.0.1")
    assert second != first
    from api.auth.keys import authenticate

    with session_scope(settings) as session:
        assert authenticate(session, first) is None and authenticate(session, second) is not None
    assert explicit_key_count(settings) == 0
    with pytest.raises(ServerConfigError, match="refusing to bind"):
        prepare(settings, "0.0.0.0")

    os.chmod(local_key_path(settings), 0o644)
    assert prepare(settings, "127.0.0.1") == second
    assert stat.S_IMODE(local_key_path(settings).stat().st_mode) == 0o600

    create_key(settings, "colleague")
    assert explicit_key_count(settings) == 1
    prepare(settings, "0.0.0.0")
