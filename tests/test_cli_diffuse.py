"""`edgeopt diffuse`: writes the PNG and prints per-component latency; bad input is one line, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeopt.cli import app

pytest.importorskip("diffusers")
runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert text.startswith("error:")
    for n in needles:
        assert n in text, text


def test_diffuse_writes_the_image_and_prints_the_table(tmp_path):
    from PIL import Image

    out = tmp_path / "cat.png"
    res = runner.invoke(app, ["diffuse", "zoo:sd-small", "-p", "a photo of a cat", "--steps", "2", "--size", "32x48",
                              "-o", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    for row in ("text encoder", "UNet step", "median of 2 calls, batch 2", "VAE decode", "total", "peak RSS"):
        assert row in res.stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    assert [p.name for p in tmp_path.iterdir()] == ["cat.png"]


def test_diffuse_json_and_the_same_image_for_the_same_seed(tmp_path):
    args = ["diffuse", "zoo:sd-small", "-p", "a dog", "-n", "2", "--scheduler", "euler", "--guidance", "1",
            "--seed", "4", "--json", "--threads", "1"]
    a = runner.invoke(app, args + ["-o", str(tmp_path / "a.png")])
    b = runner.invoke(app, args + ["-o", str(tmp_path / "b.png")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    st = json.loads(a.stdout)
    assert (st["unet_calls"], st["unet_batch"], st["scheduler"]) == (2, 1, "euler")
    assert st["image"] == str(tmp_path / "a.png")
    assert st["unet_step_ms"] > 0 and st["warnings"] == []
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_diffuse_warns_on_a_long_prompt(tmp_path):
    res = runner.invoke(app, ["diffuse", "zoo:sd-small", "-p", "cat " * 100, "-n", "1", "-o", str(tmp_path / "x.png"),
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "warning: prompt is 102 tokens, the text encoder reads 77: truncated" in res.output
    assert (tmp_path / "x.png").exists()


@pytest.mark.parametrize("extra, needles", [
    (["-n", "0"], ["steps must be > 0"]),
    (["-n", "2", "--guidance", "-1"], ["guidance must be >= 0"]),
    (["-n", "2", "--size", "60x64"], ["height must be a positive multiple of 8"]),
    (["-n", "2", "--size", "big"], ["expected HEIGHTxWIDTH"]),
    (["-n", "2", "--scheduler", "lms"], ["unknown scheduler 'lms'"]),
])
def test_diffuse_bad_settings_are_one_line_and_write_nothing(tmp_path, extra, needles):
    res = runner.invoke(app, ["diffuse", "zoo:sd-small", "-p", "a cat", "-o", str(tmp_path / "x.png")] + extra)
    _one_line_error(res, *needles)
    assert list(tmp_path.iterdir()) == []


def test_diffuse_bad_model_and_output_folder(tmp_path):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    res = runner.invoke(app, ["diffuse", str(tmp_path / "sd"), "-p", "a cat", "-n", "1", "-o", str(tmp_path / "x.png")])
    _one_line_error(res, "missing text_encoder, tokenizer, unet, vae, scheduler")
    res = runner.invoke(app, ["diffuse", "zoo:sd-3", "-p", "a cat", "-n", "1", "-o", str(tmp_path / "x.png")])
    _one_line_error(res, "zoo:sd-3: unknown Stable Diffusion model")
    res = runner.invoke(app, ["diffuse", "zoo:sd-small", "-p", "a cat", "-n", "1", "-o",
                              str(tmp_path / "no" / "x.png")])
    _one_line_error(res, "does not exist")
    assert not (tmp_path / "x.png").exists()
