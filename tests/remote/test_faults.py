"""Every way a server can fail gives one `error:` line and exit 2 on the CLI; the API key never shows."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.conftest import free_port
from tests.remote.fault_server import FaultServer, fault_server, unanswered_port

SECRET = "sk-test-SECRET-4242"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BLOOMTUI_API_KEY", "OPENAI_API_KEY")}
    return {**env, **extra}


def bloomtui(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bloomtui", *args], capture_output=True, text=True, timeout=60, env=env or cli_env()
    )


def assert_one_error_line(run: subprocess.CompletedProcess[str], needle: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert needle in lines[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "mode, options, needle",
    [
        ("401", [], "/v1/models: access denied (401: Unauthorized); set BLOOMTUI_API_KEY or OPENAI_API_KEY"),
        ("403", [], "access denied (403: Forbidden: this key may not use the model)"),
        ("404", [], "not found (404: The model `bloom-test` does not exist.)"),
        ("400", [], "the server refused the request (400: max_tokens must be at least 1, got 0.)"),
        ("500", [], "server error 500: Internal Server Error"),
        ("503", [], "server error 503: Model is overloaded"),
        ("malformed", [], 'malformed event in the stream: \'{"choices": [{"text": "unfinished'),
        ("bad-shape", [], "malformed event in the stream"),
        ("stream-error", [], "the server failed mid-stream: CUDA out of memory"),
        ("truncated", [], "the event stream ended before the server said it was done"),
        ("cut-body", [], "the connection broke mid-answer"),
        ("not-sse", [], "the answer is not an event stream"),
        ("stall-headers", ["--read-timeout", "0.5"], "the server went silent for 0.5 s (--read-timeout)"),
        ("stall-stream", ["--read-timeout", "0.5"], "the server went silent for 0.5 s (--read-timeout)"),
    ],
)
def test_server_faults(mode: str, options: list[str], needle: str) -> None:
    with fault_server(mode) as server:
        run = bloomtui("generate", server.url, "Hello", "--max-new-tokens", "8", *options)
    assert_one_error_line(run, needle)
    if mode in ("malformed", "truncated", "stall-stream"):
        assert run.stdout == "The SQL\n"  # the text that did arrive stays, ended by a newline


def test_connection_refused() -> None:
    run = bloomtui("generate", f"http://127.0.0.1:{free_port()}", "Hello")
    assert_one_error_line(run, "connection refused (is the server running, on this port?)")


def test_unknown_host() -> None:
    run = bloomtui("info", "http://no-such-host.invalid:8000")
    assert_one_error_line(run, "unknown host 'no-such-host.invalid'")


def test_connect_timeout() -> None:
    with unanswered_port() as url:
        run = bloomtui("generate", url, "Hello", "--connect-timeout", "0.5")
    assert_one_error_line(run, "no connection within 0.5 s (--connect-timeout)")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[FaultServer]:
    """The fault server behind TLS with a self-signed certificate, which a client rightly refuses."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = FaultServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    yield server
    server.close()


def test_tls_failure_self_signed(tls_server: FaultServer) -> None:
    run = bloomtui("generate", tls_server.url.replace("http://", "https://"), "Hello")
    assert_one_error_line(run, "TLS handshake failed (certificate verify failed")


def test_tls_failure_plain_http_server() -> None:
    with fault_server() as server:
        run = bloomtui("info", server.url.replace("http://", "https://"))
    assert_one_error_line(run, "TLS handshake failed")


def test_api_key_is_sent_but_never_printed() -> None:
    with fault_server("401") as server:
        run = bloomtui("generate", server.url, "Hello", env=cli_env(BLOOMTUI_API_KEY=SECRET))
    assert_one_error_line(run, "access denied (401: Unauthorized); check BLOOMTUI_API_KEY")
    assert SECRET not in run.stdout + run.stderr
    assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    with fault_server() as server:
        run = bloomtui("generate", server.url, "Hello", "--json", env=cli_env(OPENAI_API_KEY=SECRET))
    assert run.returncode == 0, run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert {h["Authorization"] for h in server.headers} == {f"Bearer {SECRET}"}


def test_several_models_need_remote_model() -> None:
    with fault_server(models=("bigscience/bloom", "bigscience/bloomz")) as server:
        run = bloomtui("generate", server.url, "Hello")
        listing = "bigscience/bloom, bigscience/bloomz"
        assert_one_error_line(run, f"serves 2 models; choose one with --remote-model: {listing}")
        run = bloomtui("generate", server.url, "Hello", "--remote-model", "bigscience/bloomz", "--max-new-tokens", "3")
        assert run.returncode == 0, run.stderr
        assert server.requests[-1]["model"] == "bigscience/bloomz"
        run = bloomtui("generate", server.url, "Hello", "--remote-model", "bloom-7b1")
        assert_one_error_line(run, "does not serve 'bloom-7b1'; it serves: bigscience/bloom, bigscience/bloomz")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "http://127.0.0.1:1", "x", "--ram-budget", "1GB"], "--ram-budget applies to a local model"),
        (["generate", "http://127.0.0.1:1", "x", "--read-timeout", "0"], "--read-timeout must be > 0"),
        (["info", "http://:8000"], "http://:8000"),
    ],
)
def test_bad_remote_options(args: list[str], needle: str) -> None:
    assert_one_error_line(bloomtui(*args), needle)


def test_ctrl_c_closes_the_stream_keeps_the_text_and_exits_130() -> None:
    with fault_server("slow") as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "bloomtui", "generate", server.url, "Hello", "--max-new-tokens", "5000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        try:
            assert server.streaming.wait(60), "the stream never started"
            first = process.stdout.read(9)  # type: ignore[union-attr]  # blocks until 3 pieces are shown
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
        assert server.disconnected.wait(10), "the client kept the stream open"
    assert process.returncode == 130, err
    assert (first + out).startswith(" w0 w1 w2"), first + out
    assert err.strip().startswith("cancelled after ") and "Traceback" not in err
