"""Starting the dashboard: the streamlit command line (127.0.0.1, headless, no usage statistics) and run checks."""

from __future__ import annotations

import sys

import pytest
from report.factory import write_run

from edgeopt.dashboard import APP, check_runs, dashboard_command
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
