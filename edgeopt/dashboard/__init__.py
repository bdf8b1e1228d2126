"""The interactive dashboard (Streamlit): compare runs and stages, per-layer profiles, background runs, live toggles.

`serve(run_dirs)` starts `streamlit run edgeopt/dashboard/app.py` on 127.0.0.1 (headless, no usage
statistics); `dashboard_command` is the command line it runs. The page's logic lives in `state`,
`worker` and `live`, which import no Streamlit, so tests and other front ends can use them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def dashboard_command(run_dirs: Sequence[str | Path] = (), host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                      roots: Sequence[str | Path] = (), workdir: str | Path | None = None) -> list[str]:
    """The `streamlit run` command line that serves the dashboard on `host`:`port`.

    `run_dirs`: run directories (or folders of runs) to show; `roots`: further folders the page may read
    model and recipe files from (file parameters never reach outside run_dirs, roots and workdir);
    `workdir`: where runs started from the page are written (default runs/dashboard).
    """
    if not (0 < int(port) < 65536):
        from edgeopt.errors import InputError

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
    from edgeopt.errors import InputError
    from edgeopt.report.html import load_run

    for d in run_dirs:
        p = Path(d)
        if not p.exists():
            raise InputError(f"{p}: no such run directory")
        if (p / "ledger.json").exists() or p.is_file():
            load_run(p)
        elif not p.is_dir():
            raise InputError(f"{p}: not a folder")


def serve(run_dirs: Sequence[str | Path] = (), host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          roots: Sequence[str | Path] = (), workdir: str | Path | None = None) -> int:
    """Serve the dashboard until interrupted; returns Streamlit's exit code.

    With no run directories, ./runs is shown when it exists. Run directories are checked first, so a
    missing folder or a corrupt ledger is a one-line error instead of a page that fails later.
    """
    if not run_dirs and Path("runs").is_dir():
        run_dirs = [Path("runs")]
    check_runs(run_dirs)
    cmd = dashboard_command(run_dirs, host=host, port=port, roots=roots, workdir=workdir)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


__all__ = ["dashboard_command", "serve", "check_runs", "APP", "DEFAULT_HOST", "DEFAULT_PORT"]
