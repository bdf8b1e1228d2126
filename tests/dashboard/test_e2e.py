"""End to end: the real dashboard server on 127.0.0.1, driven in headless Chromium (Debian's package) by Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


def _need_browser() -> None:
    """Skip, saying why, when Debian's chromium or Playwright is missing. Nothing is installed here: `make test`
    runs `make chromium` first (apt-get, as root), and Playwright comes with the test extras."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}: `make chromium` (as root) installs it")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'")


def test_a_missing_browser_skips_with_its_reason_and_installs_nothing(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise AssertionError(f"a test tried to run {a[0] if a else k}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setitem(globals(), "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed at .*make chromium"):
        _need_browser()
    monkeypatch.setitem(globals(), "CHROMIUM", Path(sys.executable))  # any file: the browser is "there"
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # but Playwright is not
    with pytest.raises(pytest.skip.Exception, match="Playwright is not installed"):
        _need_browser()


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
    _need_browser()
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
