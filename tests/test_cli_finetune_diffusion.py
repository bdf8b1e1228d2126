"""`edgeopt finetune-diffusion`: the summary (images used and skipped, steps, losses, output), a fine-tuned SD folder
that `edgeopt diffuse` draws with, --resume, and bad input as one line with nothing written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeopt.cli import app

pytest.importorskip("diffusers")
runner = CliRunner()


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate([(230, 30, 30), (30, 60, 220)]):
        im = Image.new("RGB", (16, 16))
        im.paste(colour, (4, 4, 12, 12))
        im.save(folder / f"dog{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (folder / "notes.txt").write_text("my dog")
    return folder


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert text.startswith("error:")
    for n in needles:
        assert n in text, text


def test_summary_names_the_images_the_skipped_files_the_losses_and_the_output(tmp_path, images):
    out = tmp_path / "tuned"
    args = ["finetune-diffusion", "new:16", "--images", str(images), "-o", str(out), "--steps", "6", "--lr", "1e-3",
            "--batch", "2", "--threads", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    text = res.stdout
    for line in ("fine-tuned new:16 (UNet2DModel) on 2 images of 16x16", "skipped 2 files:", "broken.png: cannot read",
                 "notes.txt: not an image file", "steps 6 (", "loss ", f"model: {out}", "DDPMPipeline.from_pretrained"):
        assert line in text, text
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    _one_line_error(runner.invoke(app, args), "already exists; pass --resume")
    again = runner.invoke(app, args + ["--resume"])
    assert again.exit_code == 0 and "steps 6 (already finished)" in again.stdout, again.output


def test_json_and_the_fine_tuned_sd_folder_draws_with_diffuse(tmp_path, images):
    out = tmp_path / "sd"
    res = runner.invoke(app, ["finetune-diffusion", "zoo:sd-small", "--images", str(images), "-o", str(out), "-n", "3",
                              "--size", "32", "-p", "a photo of a dog", "--json", "--threads", "1"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert (got["kind"], got["steps"], got["size"], got["prompt"]) == ("stable-diffusion", 3, 32, "a photo of a dog")
    assert got["images"] == ["dog0.png", "dog1.png"] and [s["file"] for s in got["skipped"]] == [
        str(images / "broken.png"), str(images / "notes.txt")]
    assert got["loss_first_10pct"] > 0 and got["loss_last_10pct"] > 0
    png = tmp_path / "dog.png"
    drawn = runner.invoke(app, ["diffuse", str(out), "-p", "a photo of a dog", "-n", "2", "--size", "32x32", "-o",
                                str(png), "--threads", "1"])
    assert drawn.exit_code == 0 and png.is_file(), drawn.output


@pytest.mark.parametrize("extra, needles", [
    (["new:16", "--steps", "0"], ["steps must be > 0"]),
    (["zoo:sd-9"], ["zoo:sd-9: unknown model to fine-tune"]),
    (["new:16", "--prompt", "a dog"], ["takes no prompt"]),
    (["zoo:digits-diffusion"], ["class-conditional (10 classes)"]),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, images, extra, needles):
    res = runner.invoke(app, ["finetune-diffusion", *extra, "--images", str(images), "-o", str(tmp_path / "out")])
    _one_line_error(res, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_bad_folders_are_one_line_and_write_nothing(tmp_path, images):
    (tmp_path / "empty").mkdir()
    for folder, needle in ((tmp_path / "nope", "no such folder of images"), (tmp_path / "empty", "no readable image")):
        res = runner.invoke(app, ["finetune-diffusion", "new:16", "--images", str(folder), "-o", str(tmp_path / "out")])
        _one_line_error(res, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "images"]
