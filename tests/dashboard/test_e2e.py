"""End to end: the real dashboard server on 127.0.0.1, driven in headless Chromium (Debian's package) by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from report.factory import write_run

from edgeopt.dashboard import dashboard_command

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _ensure_chromium() -> None:
    """Debian's chromium (what `make test` installs); installed here when missing and apt is usable, else skip."""
    if CHROMIUM.exists():
        return
    why = "not root" if os.geteuid() != 0 else ("no apt-get" if not shutil.which("apt-get") else "")
    if not why:
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True,
                           timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (subprocess.SubprocessError, OSError) as e:
            why = f"apt-get failed: {str(e).splitlines()[0][:200]}"
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium package could not be installed at {CHROMIUM} ({why or 'not found after install'})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the dashboard server did not answer its health check")


@pytest.mark.slow
def test_dashboard_in_headless_chromium(tmp_path):
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    run = write_run(tmp_path / "e2e-run")
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(dashboard_command([run], port=port, workdir=tmp_path / "work"), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _wait_healthy(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                # the run is loaded: its stage table and the side-by-side comparison
                page.get_by_text("Run e2e-run").wait_for(timeout=60_000)
                page.get_by_text("Side by side").wait_for(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"))
                # live mode: flip INT8 quantization and wait for the new measurement
                page.get_by_role("tab", name="Live").click()
                page.get_by_text("INT8 quantization").click()
                page.get_by_text("Latest measurement: onnx + int8").wait_for(timeout=180_000)
                page.get_by_text("throughput").first.wait_for(timeout=10_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"))
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert (ARTIFACTS / "dashboard-live.png").stat().st_size > 10_000
    assert f"http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()  # listened on loopback only
