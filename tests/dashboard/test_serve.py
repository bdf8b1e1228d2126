"""Starting the dashboard: the streamlit command line (127.0.0.1, headless, no usage statistics), run checks,
the access token off loopback, and SIGTERM reaching the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from report.factory import write_run
from typer.testing import CliRunner

import edgeopt.dashboard as D
from edgeopt.dashboard import APP, check_runs, dashboard_command, serve
from edgeopt.dashboard.state import ENV_TOKEN, access_token, is_loopback
from edgeopt.errors import InputError


def _opt(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_command_defaults_to_loopback_headless_and_no_statistics(tmp_path):
    cmd = dashboard_command([tmp_path / "a", tmp_path / "b"])
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(APP)]
    assert _opt(cmd, "--server.address") == "127.0.0.1" and _opt(cmd, "--server.port") == "8501"
    assert _opt(cmd, "--server.headless") == "true" and _opt(cmd, "--browser.gatherUsageStats") == "false"
    app_args = cmd[cmd.index("--") + 1:]
    assert app_args == ["--run", str(tmp_path / "a"), "--run", str(tmp_path / "b")]


def test_command_host_port_roots_workdir(tmp_path):
    cmd = dashboard_command([], host="0.0.0.0", port=9000, roots=[tmp_path], workdir=tmp_path / "w")
    assert _opt(cmd, "--server.address") == "0.0.0.0" and _opt(cmd, "--server.port") == "9000"
    assert cmd[cmd.index("--") + 1:] == ["--root", str(tmp_path), "--workdir", str(tmp_path / "w")]
    with pytest.raises(InputError, match="port must be between"):
        dashboard_command([], port=70000)


def test_check_runs(tmp_path):
    check_runs([write_run(tmp_path / "ok"), tmp_path])  # a run, and a folder of runs
    with pytest.raises(InputError, match="no such run directory"):
        check_runs([tmp_path / "missing"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ledger.json").write_text("[")
    with pytest.raises(InputError, match="not valid JSON"):
        check_runs([bad])


class _FakeServer:
    """Stands in for the streamlit child: records its command line and environment, exits at once."""

    started: list = []

    def __init__(self, cmd, env=None, **kw):
        _FakeServer.started.append((cmd, env))

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


@pytest.fixture()
def fake_server(monkeypatch):
    _FakeServer.started = []
    monkeypatch.setattr(D.subprocess, "Popen", _FakeServer)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    return _FakeServer.started


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("[::1]", True),
                                           ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False),
                                           ("::", False), ("192.168.1.5", False), ("myhost", False), ("", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_access_token(monkeypatch):
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    assert access_token("127.0.0.1") is None and access_token("localhost") is None
    a, b = access_token("0.0.0.0"), access_token("0.0.0.0")
    assert a and b and a != b and len(a) >= 24  # generated, random
    assert access_token("0.0.0.0", "s3cret-token-given") == "s3cret-token-given"
    assert access_token("127.0.0.1", "s3cret-token-given") == "s3cret-token-given"  # asked for when given
    monkeypatch.setenv(ENV_TOKEN, "from-the-environment")
    assert access_token("0.0.0.0") == "from-the-environment"
    with pytest.raises(InputError, match="at least 12"):
        access_token("0.0.0.0", "short")


def test_serve_on_loopback_is_unchanged(tmp_path, fake_server, capsys):
    assert serve([write_run(tmp_path / "r")], host="127.0.0.1", port=8600) == 0
    (cmd, env), = fake_server
    assert ENV_TOKEN not in env and cmd == dashboard_command([tmp_path / "r"], host="127.0.0.1", port=8600)
    assert capsys.readouterr().err == ""


def test_serve_off_loopback_warns_and_requires_a_token(tmp_path, fake_server, capsys, monkeypatch):
    run = write_run(tmp_path / "r")
    serve([run], host="0.0.0.0", port=8600)
    (cmd, env), = fake_server
    token = env[ENV_TOKEN]
    assert token and token not in cmd  # to the server through its environment, never its command line
    err = capsys.readouterr().err
    assert err.startswith("warning: the dashboard listens on 0.0.0.0:8600, reachable from other machines")
    assert f":8600/?token={token}" in err and len(err.splitlines()) == 1
    monkeypatch.setenv(ENV_TOKEN, "chosen-by-the-user")
    serve([run], host="192.168.1.5", port=8600)
    assert fake_server[-1][1][ENV_TOKEN] == "chosen-by-the-user"
    err = capsys.readouterr().err
    assert "http://192.168.1.5:8600/?token=<your token>" in err and "chosen-by-the-user" not in err


def test_cli_passes_the_token_and_says_so(tmp_path, fake_server):
    from edgeopt.cli import app

    run = str(write_run(tmp_path / "r"))
    res = CliRunner().invoke(app, ["dashboard", run, "--host", "0.0.0.0", "--token", "given-on-the-cli"])
    assert res.exit_code == 0 and fake_server[-1][1][ENV_TOKEN] == "given-on-the-cli"
    assert "warning: the dashboard listens on 0.0.0.0" in res.stderr
    res = CliRunner().invoke(app, ["dashboard", run, "--host", "0.0.0.0", "--token", "x"])
    assert res.exit_code != 0 and "at least 12" in res.stderr and "Traceback" not in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"the dashboard exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the dashboard server did not answer its health check")


@pytest.mark.slow
def test_sigterm_stops_the_streamlit_child_and_frees_the_port(tmp_path):
    run = write_run(tmp_path / "r")
    port = _free_port()
    cmd = [sys.executable, "-m", "edgeopt.cli", "dashboard", str(run), "--port", str(port),
           "--workdir", str(tmp_path / "work")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group, so cleanup can reach a stray child
    try:
        _wait_healthy(port, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no streamlit child process"
        proc.send_signal(signal.SIGTERM)  # to the dashboard command only, as a service manager or `kill` does
        rc = proc.wait(60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"the streamlit child outlived the dashboard command: {alive}"
        assert rc == 0  # the server stopped cleanly, and so did the command
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
