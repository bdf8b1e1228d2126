"""The digits denoiser on LiteRT with a tiny class-conditional UNet2DModel: the converted file and sidecar, the LiteRT
step against PyTorch (fp32 tight, int8 loose), DDIM / DDPM sampling loops on LiteRT against PyTorch, resuming, the
runtime comparison's rows, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from edgeopt.analyze.tflite import tflite_info
from edgeopt.diffusion.digits_litert import (SIDECAR, LiteRtDenoiser, compare_digits_runtimes, convert_denoiser,
                                             quantize_denoiser, read_denoiser_sidecar)
from edgeopt.diffusion.litert import FP32_REL_TOL, MIN_COSINE
from edgeopt.diffusion.quality import psnr
from edgeopt.errors import InputError
from edgeopt.measure.fidelity import compare
from edgeopt.zoo import digits_diffusion as dd

pytest.importorskip("diffusers")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

TINY = dict(dd.UNET_CONFIG, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
            up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
BATCH = 4
FILES = {"denoiser.tflite", SIDECAR}


@pytest.fixture(scope="module")
def tiny():
    return dd.build_denoiser(TINY).eval()


@pytest.fixture(scope="module")
def fp32(tiny, tmp_path_factory):
    """The tiny denoiser converted once for the whole file (batch 4), and its int8 variants quantized from it."""
    out = tmp_path_factory.mktemp("digits") / "fp32"
    convert_denoiser(tiny, out, batch=BATCH)
    return out


@pytest.fixture(scope="module")
def int8(tiny, fp32):
    folders = {q: fp32.with_name(q) for q in ("weight_only_int8", "dynamic_int8")}
    for q, folder in folders.items():
        quantize_denoiser(tiny, fp32, folder, q)
    return folders


def _inputs(n: int):
    gen = torch.Generator().manual_seed(5)  # inputs other than the conversion's own samples
    return torch.randn(n, 1, 32, 32, generator=gen), torch.full((n,), 10), torch.arange(n) % 10  # int64 as sampled


def _rel(want: torch.Tensor, got: torch.Tensor) -> float:
    return float((want - got).abs().max() / want.abs().max())


def test_conversion_writes_the_file_and_sidecar(fp32):
    assert {p.name for p in fp32.iterdir()} == FILES  # no temporary file left
    meta = read_denoiser_sidecar(fp32)
    assert (meta["quantize"], meta["batch"], meta["signature"], meta["source"]) == ("none", BATCH, "denoise", "module")
    assert meta["inputs"] == {"sample": [4, 1, 32, 32], "timestep": [4], "class_labels": [4]}
    assert meta["check"]["max_rel_error"] <= FP32_REL_TOL and meta["size_bytes"] == (fp32 / meta["file"]).stat().st_size
    assert "litert-torch" in meta["versions"]
    sig = tflite_info(fp32 / "denoiser.tflite")["signatures"]["denoise"]
    assert [list(t["shape"]) for t in sig["inputs"]] == list(meta["inputs"].values())
    assert [list(t["shape"]) for t in sig["outputs"]] == [[4, 1, 32, 32]]


@pytest.mark.parametrize("n", [BATCH, 6])  # 6: two chunks of the converted batch, the last one padded
def test_the_litert_step_matches_pytorch(tiny, fp32, int8, n):
    x, t, y = _inputs(n)
    with torch.no_grad():
        want = tiny(x, t, y)
    for variant, folder in {"none": fp32, **int8}.items():
        with LiteRtDenoiser(folder, threads=2) as step:
            got = step(x, t, y)
        assert got.dtype == torch.float32 and got.shape == want.shape
        if variant == "none":
            assert _rel(want, got) <= FP32_REL_TOL
        else:
            assert compare([want.numpy()], [got.numpy()])["min_cosine"] >= MIN_COSINE[variant]
            assert _rel(want, got) > 10 * FP32_REL_TOL, "int8 is lossy: the int8 file runs, not the fp32 one"


def test_int8_variants_store_int8_weights(fp32, int8):
    f = tflite_info(fp32 / "denoiser.tflite")
    assert "int8" not in f["weight_dtypes"]
    for q, folder in int8.items():
        info, meta = tflite_info(folder / "denoiser.tflite"), read_denoiser_sidecar(folder)
        assert info["weight_dtypes"].get("int8", 0) > 0 and info["size_bytes"] < 0.8 * f["size_bytes"]
        assert (meta["quantize"], meta["batch"]) == (q, BATCH) and meta["check"]["min_cosine"] >= MIN_COSINE[q]


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_sampling_on_litert_matches_pytorch(tiny, fp32, int8, scheduler):
    labels = [3, 1, 4, 1, 5, 9]
    want = dd.sample_digits(tiny, labels, steps=2, scheduler=scheduler, seed=1, progress=False)
    for variant, folder, min_psnr in [("none", fp32, 80.0), ("weight_only_int8", int8["weight_only_int8"], 25.0)]:
        with LiteRtDenoiser(folder) as step:
            got = dd.sample_digits(tiny, labels, steps=2, scheduler=scheduler, seed=1, progress=False, step_fn=step)
        assert got.shape == want.shape == (6, 1, 32, 32)
        assert psnr(want, got) >= min_psnr, variant
        if variant == "none":
            assert float((want - got).abs().max()) <= 1e-4


def test_converting_again_keeps_the_file_and_refuses_other_settings(tiny, fp32, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fp32, folder)
    before = (folder / "denoiser.tflite").stat().st_mtime_ns
    assert convert_denoiser(tiny, folder, batch=BATCH) == read_denoiser_sidecar(fp32)  # nothing converted
    assert (folder / "denoiser.tflite").stat().st_mtime_ns == before
    with pytest.raises(InputError, match="holds a none batch-4 conversion, not none batch-2"):
        convert_denoiser(tiny, folder, batch=2)
    with pytest.raises(InputError, match="holds a none batch-4 conversion, not dynamic_int8 batch-4"):
        convert_denoiser(tiny, folder, "dynamic_int8", batch=BATCH)
    other = dd.build_denoiser(TINY, seed=1)
    with pytest.raises(InputError, match="converted from other weights"):
        quantize_denoiser(other, folder, tmp_path / "q")
    with pytest.raises(InputError, match="converted from other weights"):
        compare_digits_runtimes(other, {"fp32": folder})


def test_compare_digits_runtimes_rows(tiny, fp32, int8):
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 8), torch.nn.ReLU(),
                                     torch.nn.Linear(8, 10)).eval()
    result = compare_digits_runtimes(tiny, {"fp32": fp32, "wo8": int8["weight_only_int8"]}, threads=1, batch=BATCH,
                                     steps=2, n_quality=10, step_runs=3, loop_runs=1, classifier=classifier,
                                     progress=False)
    rows = {r["runtime"]: r for r in result["rows"]}
    assert list(rows) == ["pytorch", "fp32", "wo8"]
    assert all(r["step_ms"]["n"] == 3 and r["loop_ms"]["n"] == 1 and r["step_ms"]["p50"] > 0 for r in rows.values())
    assert rows["pytorch"]["psnr_vs_pytorch"] is None and rows["pytorch"]["step_speedup"]["ratio"] == 1.0
    assert rows["fp32"]["psnr_vs_pytorch"] >= 80 and rows["fp32"]["ssim_vs_pytorch"] > 0.9999
    assert rows["fp32"]["accuracy"] == rows["pytorch"]["accuracy"]
    assert rows["fp32"]["frechet"] == pytest.approx(rows["pytorch"]["frechet"], rel=1e-3, abs=1e-6)
    assert rows["wo8"]["quantize"] == "weight_only_int8" and rows["wo8"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert rows["fp32"]["engine"].startswith("LiteRT compiled · XNNPACK · 1 thread")
    assert {"cpu", "isa", "loadavg_before", "versions"} <= set(result["setup"])
    json.dumps(result)  # a benchmark can write it as it is


def test_bad_input_is_one_line(tiny, fp32, tmp_path):
    for kwargs, match in [({"quantize": "int3"}, "quantize 'int3': known"), ({"batch": 0}, "batch must be"),
                          ({"batch": -2}, "batch must be"), ({"batch": 2.5}, "batch must be")]:
        with pytest.raises(InputError, match=match):
            convert_denoiser(tiny, tmp_path / "x", **kwargs)
    with pytest.raises(InputError, match="diffusers UNet2DModel"):
        convert_denoiser(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(InputError, match="no such folder"):
        convert_denoiser(tiny, tmp_path / "missing" / "x")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(InputError, match="quantize='none' is convert_denoiser's output"):
        quantize_denoiser(tiny, fp32, tmp_path / "q", "none")
    with pytest.raises(InputError, match=f"no {SIDECAR}"):
        LiteRtDenoiser(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(fp32, broken)
    (broken / SIDECAR).write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        LiteRtDenoiser(broken)
    (broken / SIDECAR).write_text(json.dumps(read_denoiser_sidecar(fp32)))
    (broken / "denoiser.tflite").write_bytes(b"torn")
    with pytest.raises(InputError, match="missing or not the file convert_denoiser wrote"):
        LiteRtDenoiser(broken)
    x, t, y = _inputs(BATCH)
    with LiteRtDenoiser(fp32) as step:
        with pytest.raises(InputError, match="the step needs class_labels"):
            step(x, t)
        with pytest.raises(InputError, match="converted for fixed shapes"):
            step(torch.zeros(BATCH, 1, 16, 16), t, y)
    with pytest.raises(InputError, match="'pytorch' is the PyTorch row's label"):
        compare_digits_runtimes(tiny, {"pytorch": fp32})
    with pytest.raises(InputError, match="unknown scheduler 'euler'"):
        compare_digits_runtimes(tiny, {"fp32": fp32}, scheduler="euler")
    with pytest.raises(InputError, match="must be >= 1"):
        compare_digits_runtimes(tiny, {"fp32": fp32}, steps=0)
