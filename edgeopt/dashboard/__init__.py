"""The interactive dashboard (Streamlit): compare runs and stages, per-layer profiles, background runs, live toggles.

`serve(run_dirs)` starts `streamlit run edgeopt/dashboard/app.py` on 127.0.0.1 (headless, no usage
statistics), forwards SIGTERM/SIGINT to it and waits for it; off loopback the page asks for an access
token. `dashboard_command` is the command line it runs. The page's logic lives in `state`, `worker` and
`live`, which import no Streamlit, so tests and other front ends can use them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Sequence

from edgeopt.dashboard.state import ENV_TOKEN, access_token, is_loopback
from edgeopt.errors import InputError
from edgeopt.extras import MissingExtra, available, install_hint
from edgeopt.report.html import load_run

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
GRACE_S = 15.0  # after forwarding SIGTERM/SIGINT, how long the server gets to stop before it is killed


def dashboard_command(run_dirs: Sequence[str | Path] = (), host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                      roots: Sequence[str | Path] = (), workdir: str | Path | None = None) -> list[str]:
    """The `streamlit run` command line that serves the dashboard on `host`:`port`.

    `run_dirs`: run directories (or folders of runs) to show; `roots`: further folders the page may read
    model and recipe files from (file parameters never reach outside run_dirs, roots and workdir);
    `workdir`: where runs started from the page are written (default runs/dashboard).
    """
    if not (0 < int(port) < 65536):
        raise InputError(f"port must be between 1 and 65535, got {port}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.address", str(host), "--server.port", str(int(port)),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--server.runOnSave", "false",
           "--client.toolbarMode", "minimal", "--"]
    for d in run_dirs:
        cmd += ["--run", str(Path(d).resolve())]
    for r in roots:
        cmd += ["--root", str(Path(r).resolve())]
    if workdir is not None:
        cmd += ["--workdir", str(Path(workdir).resolve())]
    return cmd


def check_runs(run_dirs: Sequence[str | Path]) -> None:
    """Refuse, with a one-line InputError, a run directory that does not exist or holds an unreadable ledger."""
    for d in run_dirs:
        p = Path(d)
        if not p.exists():
            raise InputError(f"{p}: no such run directory")
        if (p / "ledger.json").exists() or p.is_file():
            load_run(p)
        elif not p.is_dir():
            raise InputError(f"{p}: not a folder")


def dashboard_env(token: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: `base` (default os.environ) with the access token set, or removed when None."""
    env = dict(os.environ if base is None else base)
    env.pop(ENV_TOKEN, None)
    if token:
        env[ENV_TOKEN] = token
    return env


def serve(run_dirs: Sequence[str | Path] = (), host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          roots: Sequence[str | Path] = (), workdir: str | Path | None = None, token: str | None = None) -> int:
    """Serve the dashboard until it stops or this process gets SIGTERM/SIGINT; returns the server's exit code.

    With no run directories, ./runs is shown when it exists. Run directories are checked first, so a
    missing folder or a corrupt ledger is a one-line error instead of a page that fails later. On a host
    other machines can reach (anything but 127.0.0.1, ::1, localhost) the page starts jobs for whoever
    opens it, so it warns on stderr and asks for an access token: `token`, else $EDGEOPT_DASHBOARD_TOKEN,
    else a random one printed with the address to open. A token given on loopback is asked for too.
    """
    if not available("streamlit"):
        raise MissingExtra(f"edgeopt dashboard needs streamlit, which is not installed: {install_hint('streamlit')}")
    if not run_dirs and Path("runs").is_dir():
        run_dirs = [Path("runs")]
    check_runs(run_dirs)
    cmd = dashboard_command(run_dirs, host=host, port=port, roots=roots, workdir=workdir)
    given = bool(token or os.environ.get(ENV_TOKEN, "").strip())
    tok = access_token(host, token)
    if not is_loopback(host):
        shown = socket.gethostname() if host in ("", "0.0.0.0", "::", "[::]") else host
        url = f"http://{shown}:{int(port)}/?token={'<your token>' if given else tok}"
        sys.stderr.write(f"warning: the dashboard listens on {host or 'every address'}:{port}, reachable from other "
                         f"machines, and its Run tab starts jobs here; the page asks for the access token: {url}\n")
        sys.stderr.flush()
    return run_server(cmd, dashboard_env(tok))


def run_server(cmd: Sequence[str], env: Mapping[str, str] | None = None, grace_s: float = GRACE_S) -> int:
    """Run the server `cmd` in a child process until it exits; returns its exit code (128+N for signal N).

    SIGTERM and SIGINT sent to this process (a service manager, `kill`, Ctrl-C) are forwarded to the child
    and waited for, so the port is free when this returns; a child still running `grace_s` seconds after
    the signal is killed.
    """
    proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env))
    killer: list[threading.Timer] = []

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)
            if not killer:
                killer.append(threading.Timer(grace_s, proc.kill))
                killer[0].daemon = True
                killer[0].start()

    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers can only be set there
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for t in killer:
            t.cancel()
        if proc.poll() is None:  # an exception while waiting: never leave the server behind
            proc.kill()
            proc.wait()
    return rc if rc >= 0 else 128 - rc


__all__ = ["dashboard_command", "dashboard_env", "serve", "run_server", "check_runs", "APP", "DEFAULT_HOST",
           "DEFAULT_PORT"]
