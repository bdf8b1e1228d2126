"""Fine-tuning on a folder of images: the folder reader (crop, resize, skip and report), a fresh UNet2DModel, the
class-conditional digits model and zoo:sd-small trained a few steps (loss goes down on a repeated tiny batch, the
output loads and draws), interrupted runs resuming to the same weights, bad input as one line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeopt.diffusion import finetune as ft
from edgeopt.errors import InputError

pytest.importorskip("diffusers")
COLOURS = [(230, 30, 30), (30, 200, 60), (40, 60, 220)]


def _shapes(folder, extra: bool = True):
    """Three 16x16 coloured squares on black, plus (extra) a corrupt .png, a .txt, a hidden file and a subfolder."""
    from PIL import Image

    folder.mkdir()
    for i, colour in enumerate(COLOURS):
        im = Image.new("RGB", (16, 16))
        im.paste(colour, (4, 4, 12, 12))
        im.save(folder / f"shape{i}.png")
    if extra:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        (folder / "notes.txt").write_text("my dog")
        (folder / ".DS_Store").write_bytes(b"\0")
        (folder / "more").mkdir()
    return folder


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _unet_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


class _CtrlC:
    """A rich-Progress stand-in that raises KeyboardInterrupt once `at` training steps are done (Ctrl-C)."""

    def __init__(self, at: int):
        self.at, self.done = at, 0

    def add_task(self, description, total=None):
        return 0

    def update(self, task, advance=0, description=""):
        if description.startswith("fine-tuning"):
            self.done += advance
            if self.done >= self.at:
                raise KeyboardInterrupt

    def remove_task(self, task):
        pass


@pytest.fixture
def shapes(tmp_path):
    return _shapes(tmp_path / "images")


def test_load_image_folder_crops_resizes_and_reports_what_it_skips(tmp_path, shapes):
    from PIL import Image

    wide = Image.new("RGB", (48, 16), (0, 0, 255))
    wide.paste((255, 0, 0), (16, 0, 32, 16))  # red centre square, blue sides: the crop keeps only the red
    wide.save(shapes / "wide.jpg", quality=95)
    before = _snapshot(shapes)
    got = ft.load_image_folder(shapes, 8)
    assert [p.name for p in got.paths] == ["shape0.png", "shape1.png", "shape2.png", "wide.jpg"]
    assert got.images.shape == (4, 3, 8, 8) and got.images.dtype == torch.float32
    assert got.images.min() >= -1 and got.images.max() <= 1
    red = got.images[3]  # (3, 8, 8) in [-1, 1]
    assert (red[0] > 0.9).all() and (red[1:] < -0.8).all(), "center crop, then resize"
    assert torch.allclose(got.images[0][:, 4, 4], torch.tensor(COLOURS[0]) / 127.5 - 1, atol=0.05)
    assert got.images[0][:, 0, 0].max() == -1.0, "black border stays black"
    reasons = {p.name: r for p, r in got.skipped}
    assert set(reasons) == {"broken.png", "notes.txt"}, "hidden files and subfolders are left alone"
    assert reasons["broken.png"].startswith("cannot read:") and str(shapes) not in reasons["broken.png"]
    assert reasons["notes.txt"].startswith("not an image file")
    grey = ft.load_image_folder(shapes, 8, channels=1)
    assert grey.images.shape == (4, 1, 8, 8) and grey.sha256() != got.sha256()
    assert _snapshot(shapes) == before, "the input folder is only read"


def test_a_folder_without_readable_images_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no readable image"):
        ft.load_image_folder(tmp_path / "empty", 16)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad: no readable image .*skipped 1 file\(s\), e.g. x.png: cannot read"):
        ft.load_image_folder(bad, 16)
    with pytest.raises(InputError, match="no such folder of images"):
        ft.load_image_folder(tmp_path / "nope", 16)


def test_fresh_unet_loss_goes_down_and_the_output_is_a_ddpm_pipeline(tmp_path, shapes):
    import diffusers

    before = _snapshot(shapes)
    out = tmp_path / "out"
    res = ft.finetune_diffusion("new:16", shapes, out, steps=30, lr=2e-3, batch=3, progress=False)
    assert (res.kind, res.size, res.steps, res.resumed_from) == ("unet2d", 16, 30, 0)
    assert [p.name for p in res.images] == ["shape0.png", "shape1.png", "shape2.png"]
    assert {p.name for p, _ in res.skipped} == {"broken.png", "notes.txt"}
    losses = np.array(res.losses)
    assert np.isfinite(losses).all() and losses[-5:].mean() < 0.7 * losses[:5].mean(), losses
    assert _tree(out) == ["finetune.json", "model_index.json", "scheduler", "scheduler/scheduler_config.json", "unet",
                          "unet/config.json", "unet/diffusion_pytorch_model.safetensors"], "no checkpoint left"
    assert [p.name for p in tmp_path.iterdir()] == ["images", "out"], "no temporary folder left"
    log = json.loads((out / "finetune.json").read_text())
    assert log["status"] == "finished" and log["losses"] == res.losses and log["settings"]["steps"] == 30
    pipe = diffusers.DDPMPipeline.from_pretrained(out, local_files_only=True, use_safetensors=True)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    image = pipe(batch_size=1, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert image.images.shape == (1, 16, 16, 3) and np.isfinite(image.images).all()
    assert _snapshot(shapes) == before


def test_stable_diffusion_trains_the_unet_only_and_writes_a_loadable_sd_folder(tmp_path, shapes):
    from edgeopt.diffusion.sd import load_sd
    from edgeopt.diffusion.text2img import text_to_image

    out = tmp_path / "sd"
    res = ft.finetune_diffusion("zoo:sd-small", shapes, out, steps=30, lr=1e-3, batch=3, size=32,
                                prompt="a photo of a red square", progress=False)
    assert (res.kind, res.size, res.prompt, res.warnings) == ("stable-diffusion", 32, "a photo of a red square", [])
    losses = np.array(res.losses)
    assert np.isfinite(losses).all() and losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    tuned, base = load_sd(out), load_sd("zoo:sd-small")
    for part in ("text_encoder", "vae"):
        a, b = getattr(tuned, part).state_dict(), getattr(base, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), f"{part} is not trained"
    assert not all(torch.equal(v, base.unet.state_dict()[k]) for k, v in tuned.unet.state_dict().items())
    image, _ = text_to_image(tuned, "a photo of a red square", 2, height=32, width=32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert json.loads((out / "finetune.json").read_text())["noise_schedule"]["beta_schedule"] == "scaled_linear"
    assert not (out / ft.CHECKPOINT).exists()


@pytest.mark.parametrize("model, size", [("new:16", None), ("zoo:sd-small", 32)])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, shapes, model, size):
    kw = dict(steps=10, lr=1e-3, batch=2, size=size, seed=3, checkpoint_every=4)
    full = ft.finetune_diffusion(model, shapes, tmp_path / "full", progress=False, **kw)
    out = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune_diffusion(model, shapes, out, progress=_CtrlC(at=6), **kw)
    assert _tree(out) == ["checkpoint.safetensors", "finetune.json"], "training state only, no half-written model"
    assert json.loads((out / "finetune.json").read_text())["status"] == "training"
    with pytest.raises(InputError, match="already exists; pass --resume"):
        ft.finetune_diffusion(model, shapes, out, progress=False, **kw)
    with pytest.raises(InputError, match=r"other settings \(lr\)"):
        ft.finetune_diffusion(model, shapes, out, progress=False, resume=True, **{**kw, "lr": 5e-4})
    resumed = ft.finetune_diffusion(model, shapes, out, progress=False, resume=True, **kw)
    assert resumed.resumed_from == 4 and resumed.losses == full.losses
    a, b = _unet_weights(out), _unet_weights(tmp_path / "full")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "same weights as the uninterrupted run"
    again = ft.finetune_diffusion(model, shapes, out, progress=False, resume=True, **kw)
    assert again.resumed_from == again.steps == 10 and again.losses == full.losses, "a finished run is returned as is"


def test_class_conditional_digits_take_a_label_and_grey_images(tmp_path, shapes, monkeypatch):
    from edgeopt.zoo import digits_diffusion as dd

    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(dd.STEPS_ENV, "1")  # the zoo model's architecture with a one-step training budget
    with pytest.raises(InputError, match=r"class-conditional \(10 classes\): give the class"):
        ft.finetune_diffusion("zoo:digits-diffusion", shapes, tmp_path / "x", steps=3, progress=False)
    with pytest.raises(InputError, match="label 10 does not apply: classes are 0..9"):
        ft.finetune_diffusion("zoo:digits-diffusion", shapes, tmp_path / "x", steps=3, label=10, progress=False)
    out = tmp_path / "sevens"
    res = ft.finetune_diffusion("zoo:digits-diffusion", shapes, out, steps=3, batch=2, label=7, progress=False)
    assert res.size == 32 and len(res.losses) == 3 and np.isfinite(res.losses).all()
    pipe_unet = json.loads((out / "unet" / "config.json").read_text())
    assert (pipe_unet["num_class_embeds"], pipe_unet["in_channels"]) == (10, 1)
    again = ft.finetune_diffusion(str(out), shapes, tmp_path / "again", steps=2, batch=2, label=7, progress=False)
    assert again.kind == "unet2d" and again.steps == 2, "a written DDPM pipeline folder fine-tunes further"
    model = ft.model_spec(str(out))
    assert (model.size, model.channels, model.num_classes) == (32, 1, 10)


@pytest.mark.parametrize("model, kw, needle", [
    ("new:16", {"steps": 0}, "steps must be > 0"),
    ("new:16", {"lr": 0.0}, "lr must be > 0"),
    ("zoo:nope", {}, "zoo:nope: unknown model to fine-tune; known: zoo:digits-diffusion"),
    ("new:10", {}, "new:10: expected new:SIZE with SIZE a multiple of 4"),
    ("new:16", {"size": 32}, "new:16 draws 16x16 images; size 32 does not fit"),
    ("new:16", {"prompt": "a dog"}, "a UNet2DModel takes no prompt"),
    ("new:16", {"label": 1}, "label 1 does not apply: the model is unconditional"),
    ("zoo:sd-small", {"size": 36}, "size must be a multiple of 8 pixels"),
    ("zoo:sd-small", {"label": 1}, "conditioned on a prompt, not a class label"),
    ("MISSING", {}, "no such model folder"),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, shapes, model, kw, needle):
    model = str(tmp_path / "missing") if model == "MISSING" else model
    before = _tree(tmp_path)
    with pytest.raises(InputError, match=needle):
        ft.finetune_diffusion(model, shapes, tmp_path / "out", **{"steps": 2, **kw}, progress=False)
    assert _tree(tmp_path) == before


def test_bad_folders_are_one_line_and_write_nothing(tmp_path, shapes):
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken").mkdir()
    (tmp_path / "sd").mkdir()
    before = _tree(tmp_path)
    cases = [(("new:16", tmp_path / "nope", tmp_path / "out"), {}, "no such folder of images"),
             (("new:16", tmp_path / "empty", tmp_path / "out"), {}, "empty: no readable image"),
             (("new:16", shapes, tmp_path / "taken"), {}, "taken: already exists; pass --resume"),
             (("new:16", shapes, tmp_path / "taken"), {"resume": True}, "not a fine-tuning output folder"),
             (("new:16", shapes, shapes / "out"), {}, "inside the images folder"),
             (("new:16", shapes, tmp_path / "no" / "out"), {}, "no such folder"),
             ((str(tmp_path / "sd"), shapes, tmp_path / "out"), {}, "not a Stable Diffusion or UNet2DModel")]
    for args, kw, needle in cases:
        with pytest.raises(InputError, match=needle):
            ft.finetune_diffusion(*args, steps=2, progress=False, **kw)
    assert _tree(tmp_path) == before
