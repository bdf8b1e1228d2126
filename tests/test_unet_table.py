"""The UNet table: kernel passes switched on one by one on a tiny diffusers UNet, and its memory child."""

from __future__ import annotations

import json

import pytest

from edgeopt import unet_table as U
from edgeopt.kernels import native as native_kernels
from edgeopt.report.kernels import markdown
from edgeopt.zoo.unet import build_unet

pytest.importorskip("diffusers")


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_unet_table_rows_are_cumulative_and_close_to_the_untouched_model(native):
    if native and not native_kernels.available():
        pytest.skip(f"native kernels unavailable: {native_kernels.unavailable_reason()}")
    rep = U.unet_table("tiny", runs=1, warmup=0, threads=1, tune_runs=1, child_memory=False, native=native)
    json.dumps(rep)
    labels = [r["label"] for r in rep["rows"]]
    assert labels == [r.label for r in U.UNET_ROWS]
    rows = {r["label"]: r for r in rep["rows"]}
    assert rows["untouched"]["rel_error"] == 0 and rows["untouched"]["change_vs_untouched"] == 0
    assert all(r["rel_error"] < 1e-5 and r["latency_ms"]["p50"] > 0 for r in rep["rows"])
    assert rows["+ fused GroupNorm+SiLU"]["choices"] == {"fused_norm": "native" if native else "eager"}
    part = rows["+ partially fused softmax"]["choices"]
    impl = "partial_softmax_native" if native else "partial_softmax"
    assert set(part["attention"].values()) == {impl} and part["fused_norm"]
    wino = rows["+ Winograd (tuned per layer)"]["choices"]
    assert set(wino) == {"fused_norm", "attention", "winograd"}  # cumulative
    naive = rows["naive attention (reference)"]
    assert naive["choices"] == {"attention": {n: "naive" for n in part["attention"]}} and naive["change_vs_previous"] is None
    assert naive["peak_tensor_bytes"] > rows["untouched"]["peak_tensor_bytes"]  # the score matrices
    assert "16 pairs fused" in rows["+ fused GroupNorm+SiLU"]["changes"]
    assert "vs untouched" in markdown(rep)


@pytest.mark.slow
def test_unet_memory_child_replays_the_choices():
    module, _ = build_unet("tiny")
    names = [n for n, m in module.named_modules() if type(m).__name__ == "Attention"]
    res = U._child_memory("tiny", 0, {"fused_norm": "eager", "attention": {n: "naive" for n in names},
                                      "winograd": {"unet.conv_in": 4}}, 1, {})
    assert res is not None and res["peak_mb"] >= res["built_mb"] > res["import_mb"] > 0
