"""Stable Diffusion on LiteRT with sd-small at 64x64: the converted files and sidecar, each LiteRT component against
PyTorch (fp32 tight, int8 weights loose), text to image on LiteRT against PyTorch, resuming, and bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.analyze.tflite import tflite_info
from edgeopt.diffusion.litert import (FP32_REL_TOL, MIN_COSINE, SIDECAR, compare_sd_components, convert_sd,
                                      litert_components, quantize_sd, read_sidecar)
from edgeopt.diffusion.quality import psnr
from edgeopt.diffusion.sd import StableDiffusion, load_sd
from edgeopt.diffusion.text2img import text_to_image, tokenize
from edgeopt.errors import InputError
from edgeopt.measure.fidelity import compare

pytest.importorskip("diffusers")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

FILES = {"text_encoder.tflite", "unet.tflite", "decoder.tflite", SIDECAR}


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    return load_sd("zoo:sd-small")


@pytest.fixture(scope="module")
def fp32(sd, tmp_path_factory):
    """sd-small converted once for the whole file (64x64 images, UNet batch 2), and the progress it reported."""
    out = tmp_path_factory.mktemp("sd") / "fp32"
    done: list[tuple[int, int]] = []
    convert_sd(sd, out, height=64, width=64, progress=lambda i, n: done.append((i, n)))
    return out, done


@pytest.fixture(scope="module")
def wo8(sd, fp32):
    out = fp32[0].with_name("wo8")
    quantize_sd(sd, fp32[0], out, "weight_only_int8")
    return out


def _rel(want: torch.Tensor, got: torch.Tensor) -> float:
    return float((want - got).abs().max() / want.abs().max())


def _image(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 0, 1)[None].astype(np.float32)  # (H, W, 3) uint8 -> (1, 3, H, W)


def test_conversion_writes_the_files_and_sidecar(fp32):
    out, done = fp32
    assert {p.name for p in out.iterdir()} == FILES  # no temporary file left
    assert done == [(1, 3), (2, 3), (3, 3)]
    meta = read_sidecar(out)
    assert (meta["quantize"], meta["height"], meta["width"], meta["source"]) == ("none", 64, 64, "zoo:sd-small")
    assert "litert-torch" in meta["versions"] and "ai-edge-litert" in meta["versions"]
    shapes = {name: entry["signatures"] for name, entry in meta["components"].items()}
    assert shapes == {"text_encoder": {"encode": {"input_ids": [1, 77]}},
                      "unet": {"diffusion_b2": {"sample": [2, 4, 8, 8], "timestep": [2],
                                                "encoder_hidden_states": [2, 77, 32]}},
                      "decoder": {"decode": {"latents": [1, 4, 8, 8]}}}
    for name, entry in meta["components"].items():
        info = tflite_info(out / entry["file"])
        assert list(info["signatures"]) == list(entry["signatures"])
        ins = info["signatures"][next(iter(entry["signatures"]))]["inputs"]
        assert [list(t["shape"]) for t in ins] == list(next(iter(entry["signatures"].values())).values())
        assert entry["size_bytes"] == (out / entry["file"]).stat().st_size
        assert entry["check"]["max_rel_error"] <= FP32_REL_TOL
    out_info = tflite_info(out / "decoder.tflite")["signatures"]["decode"]["outputs"]
    assert [list(t["shape"]) for t in out_info] == [[1, 3, 64, 64]]


@pytest.mark.parametrize("variant", ["fp32", "wo8"])
def test_each_litert_component_matches_pytorch(sd, fp32, wo8, variant):
    folder = fp32[0] if variant == "fp32" else wo8
    gen = torch.Generator().manual_seed(7)  # inputs other than the conversion's own samples
    ids = tokenize(sd, "a red horse on mars")[0]
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 10])  # int64, as the schedulers give them
    calls = litert_components(folder, threads=2)
    try:
        with torch.inference_mode():
            text = torch.cat([sd.encode_text(tokenize(sd, "")[0]), sd.encode_text(ids)])
            pairs = [(sd.encode_text(ids), calls["encode_text"](ids)),
                     (sd.unet_step(latents, t, text), calls["unet_step"](latents, t, text)),
                     (sd.decode_latents(latents[:1]), calls["decode_latents"](latents[:1]))]
    finally:
        for call in calls.values():
            call.close()
    rel = [_rel(want, got) for want, got in pairs]
    cos = [compare([want.numpy()], [got.numpy()])["min_cosine"] for want, got in pairs]
    assert all(got.dtype == torch.float32 and got.shape == want.shape for want, got in pairs)
    if variant == "fp32":
        assert max(rel) <= FP32_REL_TOL, rel
    else:
        assert min(cos) >= MIN_COSINE["weight_only_int8"] and min(rel) > 10 * FP32_REL_TOL, (rel, cos)  # int8: lossy
        for name in ("text_encoder", "unet", "decoder"):
            q, f = tflite_info(wo8 / f"{name}.tflite"), tflite_info(fp32[0] / f"{name}.tflite")
            assert q["weight_dtypes"].get("int8", 0) > 0 and "int8" not in f["weight_dtypes"]
            assert q["size_bytes"] < 0.7 * f["size_bytes"]
        assert read_sidecar(wo8)["recipe"] == "weight_only_wi8_afp32"


@pytest.mark.parametrize("variant, min_psnr", [("fp32", 60.0), ("wo8", 35.0)])
def test_text_to_image_on_litert_is_close_to_pytorch(sd, fp32, wo8, variant, min_psnr):
    want, _ = text_to_image(sd, "a photo of a cat", 3, seed=2)
    calls = litert_components(fp32[0] if variant == "fp32" else wo8, threads=2)
    try:
        got, st = text_to_image(dataclasses.replace(sd, **calls), "a photo of a cat", 3, seed=2)
    finally:
        for call in calls.values():
            call.close()
    assert got.shape == want.shape == (64, 64, 3) and st.unet_batch == 2 and st.unet_calls >= 3
    assert want.std() > 5  # a real picture, not a flat one
    assert psnr(_image(want), _image(got), data_range=255.0) >= min_psnr


def test_convert_one_component_with_int8_weights(sd, tmp_path):
    meta = convert_sd(sd, tmp_path / "te", "weight_only_int8", components=("text_encoder",), height=64, width=64)
    assert {p.name for p in (tmp_path / "te").iterdir()} == {"text_encoder.tflite", SIDECAR}
    assert meta["components"]["text_encoder"]["check"]["min_cosine"] >= MIN_COSINE["weight_only_int8"]
    assert tflite_info(tmp_path / "te" / "text_encoder.tflite")["weight_dtypes"].get("int8", 0) > 0
    with pytest.raises(InputError, match="no unet in sd_litert.json"):
        litert_components(tmp_path / "te")
    calls = litert_components(tmp_path / "te", components=("text_encoder",))
    assert list(calls) == ["encode_text"]
    calls["encode_text"].close()


def test_dynamic_int8_variant_quantizes_each_component(sd, fp32, tmp_path):
    meta = quantize_sd(sd, fp32[0], tmp_path / "dyn8", "dynamic_int8")
    assert meta["recipe"] == "dynamic_wi8_afp32"
    for name, entry in meta["components"].items():
        assert entry["check"]["min_cosine"] >= MIN_COSINE["dynamic_int8"]
        assert tflite_info(tmp_path / "dyn8" / entry["file"])["weight_dtypes"].get("int8", 0) > 0, name


def test_quantize_only_the_components_asked_for(sd, fp32, tmp_path):
    meta = quantize_sd(sd, fp32[0], tmp_path / "dec8", "weight_only_int8", components=("decoder",))
    assert list(meta["components"]) == ["decoder"]
    assert {p.name for p in (tmp_path / "dec8").iterdir()} == {"decoder.tflite", SIDECAR}
    assert tflite_info(tmp_path / "dec8" / "decoder.tflite")["weight_dtypes"].get("int8", 0) > 0
    with pytest.raises(InputError, match="unknown 'vae'"):
        quantize_sd(sd, fp32[0], tmp_path / "x", components=("vae",))
    only = tmp_path / "te-only"
    convert_sd(sd, only, components=("text_encoder",), height=64, width=64)
    with pytest.raises(InputError, match="holds no unet"):
        quantize_sd(sd, only, tmp_path / "y", components=("unet",))


def test_compare_components_times_each_runtime_beside_pytorch(sd, fp32, tmp_path):
    partial = tmp_path / "dec8"
    quantize_sd(sd, fp32[0], partial, "weight_only_int8", components=("decoder",))
    seen: list[str] = []
    res = compare_sd_components(sd, {"fp32": fp32[0], "wo8 decoder": partial}, threads=1, runs=2, warmup=0,
                                progress=seen.append)
    assert seen == ["text_encoder", "unet", "decoder"] == list(res["components"])
    assert res["setup"]["unet_batch"] == 2 and (res["setup"]["height"], res["setup"]["width"]) == (64, 64)
    assert res["setup"]["isa"] and res["setup"]["threads"] == 1
    for name, rows in res["components"].items():
        by = {r["runtime"]: r for r in rows}
        assert list(by) == ["pytorch", "fp32", "wo8 decoder"]
        assert by["pytorch"]["ms"]["n"] == 2 and by["pytorch"]["speedup"] is None
        fp = by["fp32"]
        assert fp["ms"]["n"] == 2 and fp["speedup"]["lo"] <= fp["speedup"]["ratio"] <= fp["speedup"]["hi"]
        assert fp["max_rel_error"] <= FP32_REL_TOL and fp["min_cosine"] > 0.9999, name
        assert fp["size_bytes"] == read_sidecar(fp32[0])["components"][name]["size_bytes"]
        if name == "decoder":
            q = by["wo8 decoder"]
            assert q["quantize"] == "weight_only_int8" and q["size_bytes"] < fp["size_bytes"]
            assert MIN_COSINE["weight_only_int8"] <= q["min_cosine"] < 1.0 and q["max_rel_error"] > fp["max_rel_error"]
        else:
            assert by["wo8 decoder"]["missing"] == "not converted"


def test_compare_components_refuses_bad_rows(sd, fp32, tmp_path):
    with pytest.raises(InputError, match="'pytorch' is the PyTorch row"):
        compare_sd_components(sd, {"pytorch": fp32[0]})
    with pytest.raises(InputError, match="runs must be >= 1"):
        compare_sd_components(sd, {"fp32": fp32[0]}, runs=0)
    other = tmp_path / "128"
    convert_sd(sd, other, components=("text_encoder",), height=128, width=128)
    with pytest.raises(InputError, match="different image sizes"):
        compare_sd_components(sd, {"fp32": fp32[0], "big": other})
    with pytest.raises(InputError, match="converted from other weights"):
        compare_sd_components(load_sd("zoo:sd-small", seed=1), {"fp32": fp32[0]})


def test_resume_keeps_what_is_converted_and_refuses_mixing(sd, fp32, wo8, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fp32[0], folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tflite")}
    done: list[tuple[int, int]] = []
    convert_sd(sd, folder, height=64, width=64, progress=lambda i, n: done.append((i, n)))  # nothing to convert
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tflite")} == before and done[-1] == (3, 3)
    with pytest.raises(InputError, match="holds a none 64x64 conversion, not none 128x128"):
        convert_sd(sd, folder, height=128, width=128, components=("text_encoder",))
    other = load_sd("zoo:sd-small", seed=1)  # other weights: the kept UNet and decoder would not fit its encoder
    with pytest.raises(InputError, match="unet.tflite: converted from other unet weights"):
        convert_sd(other, folder, height=64, width=64, components=("text_encoder",))
    with pytest.raises(InputError, match="converted from other text_encoder weights"):
        quantize_sd(other, folder, tmp_path / "q")
    with pytest.raises(InputError, match="starts from an fp32 one"):
        quantize_sd(sd, wo8, tmp_path / "again")


def test_a_run_the_files_were_not_converted_for_is_an_input_error(sd, fp32):
    calls = litert_components(fp32[0], threads=1)
    lite = dataclasses.replace(sd, **calls)
    try:
        with pytest.raises(InputError, match=r"converted for sample\[2, 4, 8, 8\].*got \[2, 4, 16, 16\]"):
            text_to_image(lite, "a cat", 1, height=128, width=128)
        with pytest.raises(InputError, match="unet_batches for the guidance"):  # guidance 1: batch 1, not converted
            text_to_image(lite, "a cat", 1, guidance=1.0)
    finally:
        for call in calls.values():
            call.close()


def test_bad_folders_and_settings_are_input_errors(sd, fp32, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        litert_components(tmp_path / "missing")
    with pytest.raises(InputError, match=f"no {SIDECAR}"):
        litert_components(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(fp32[0], broken)
    (broken / "unet.tflite").unlink()
    with pytest.raises(InputError, match=r"unet\.tflite: missing"):
        litert_components(broken)
    (broken / SIDECAR).write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        litert_components(broken)
    (broken / SIDECAR).write_text(json.dumps({"format": 99}))
    with pytest.raises(InputError, match="not a format-1"):
        litert_components(broken)
    for kwargs, match in [({"height": 60}, "height must be a positive multiple of 8"),
                          ({"quantize": "int3"}, "quantize 'int3': known"),
                          ({"components": ("vae",)}, "unknown 'vae'"),
                          ({"unet_batches": (4,)}, "unet_batches: each one of")]:
        with pytest.raises(InputError, match=match):
            convert_sd(sd, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()  # refused before anything was written


class CumMaxEncoder(nn.Module):
    """A text encoder with an op litert-torch cannot lower (cummax)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)

    def forward(self, input_ids, return_dict=False):
        return (torch.cummax(self.embed(input_ids), dim=1).values,)


def test_a_conversion_failure_names_the_component_and_op(sd, tmp_path):
    bad = dataclasses.replace(sd, text_encoder=CumMaxEncoder(sd.text_encoder.config), encode_text=None)
    with pytest.raises(InputError, match=r"^text_encoder: litert-torch cannot lower op aten\.cummax") as e:
        convert_sd(bad, tmp_path / "bad", components=("text_encoder",), height=64, width=64)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "bad").iterdir())  # nothing half-written


def test_running_out_of_memory_while_converting_says_so_in_one_line(sd, tmp_path, monkeypatch):
    litert_torch = pytest.importorskip("litert_torch")

    class OutOfMemory:  # what litert-torch's converter raises under an address-space limit (SD-1.4's UNet at 18 GB)
        def signature(self, *args, **kwargs):
            return self

        def convert(self):
            raise MemoryError()

    monkeypatch.setattr(litert_torch, "Converter", OutOfMemory)
    with pytest.raises(InputError, match=r"^unet: too big to convert here: out of memory \(peak RSS [\d.]+ GiB") as e:
        convert_sd(sd, tmp_path / "oom", components=("unet",), height=64, width=64)
    assert "machine" in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "oom").iterdir())  # nothing half-written
