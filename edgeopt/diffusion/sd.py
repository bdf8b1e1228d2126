"""Stable Diffusion 1.x offline: SD-1.4's real configuration and a tiny one, built with random weights, a CLIP
tokenizer built in code, or a local diffusers folder (safetensors only), as the components of a text-to-image run.

`load_sd("zoo:sd-1.4" | "zoo:sd-small" | FOLDER)` gives a `StableDiffusion`. Its three calls — `encode_text`,
`unet_step`, `decode_latents` — are small torch modules over the components, so a later stage can swap one
for an optimized or LiteRT version (`dataclasses.replace(sd, unet_step=fast)`) while the loop stays the same.
diffusers comes with the `diffusion` extra and is imported when a model is built or loaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from edgeopt.errors import InputError, first_line
from edgeopt.extras import require
from edgeopt.zoo.unet import UNET_CONFIGS, unet_step_class

ZOO_PREFIX = "zoo:"
TensorFn = Callable[[torch.Tensor], torch.Tensor]
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (sample, timesteps, text) -> noise
COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")

# SD-1.4 as published (CompVis/stable-diffusion-v1-4: text_encoder/, unet/, vae/, scheduler/ config.json), the
# keys that differ from the library defaults written out. diffusers' UNet2DConditionModel takes the number of
# heads in `attention_head_dim` (a known misnomer): 8 heads of 40, 80, 160 channels.
_SD14_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
_CROSS_DOWN, _CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
SD_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sd-1.4": {
        "text_encoder": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                             projection_dim=768, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        "unet": UNET_CONFIGS["sd-1.4"]["config"],  # zoo:unet-sd-1.4, the kernel tables' UNet
        "vae": dict(sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
                    scaling_factor=0.18215),
        "scheduler": _SD14_SCHEDULER,
    },
    # the same family, tiny (tests): 2-layer 32-wide text encoder, a 2-level UNet, a 4-level VAE so that the
    # latents are 1/8 of the image as in SD (64x64 pixels -> 8x8 latents)
    "sd-small": {
        "text_encoder": dict(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                             projection_dim=32, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                     down_block_types=(_CROSS_DOWN, "DownBlock2D"), up_block_types=("UpBlock2D", _CROSS_UP),
                     cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8, norm_eps=1e-5, act_fn="silu"),
        "vae": dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                    block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, act_fn="silu",
                    scaling_factor=0.18215),
        "scheduler": _SD14_SCHEDULER,
    },
}

# Words the built-in tokenizer knows whole (merged letter by letter); any other text falls back to byte tokens.
TOKENIZER_WORDS = ("a", "an", "the", "of", "and", "in", "on", "with", "photo", "painting", "cat", "dog", "horse",
                   "astronaut", "riding", "mars", "red", "blue", "sky", "city", "portrait", "mountain", "lake")


# ---------------------------------------------------------------------------------------------- the three calls
class TextEncode(nn.Module):
    """CLIP text encoder: token ids (B, T) -> last hidden states (B, T, D) (no attention mask, as SD-1.x)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]  # (B, T, D)


# one UNet evaluation: latents (B, 4, h, w), timesteps (B,), text states (B, T, D) -> predicted noise
UNetStep = unet_step_class()


class VaeDecode(nn.Module):
    """VAE decoder: denoised latents (B, 4, h, w) -> image (B, 3, 8h, 8w) in about [-1, 1] (latents unscaled here)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]  # (B, 3, H, W)


@dataclass
class StableDiffusion:
    """The components of one SD-1.x model and the three calls the text-to-image loop makes.

    `encode_text`, `unet_step` and `decode_latents` default to `TextEncode`, `UNetStep` and `VaeDecode` over the
    components; replace one to run an optimized or converted version. The components stay for their configs and
    for `save_sd`.
    """

    tokenizer: Any = field(repr=False)
    text_encoder: Any = field(repr=False)
    unet: Any = field(repr=False)
    vae: Any = field(repr=False)
    scheduler: Any = field(repr=False)
    source: str
    encode_text: TensorFn = field(default=None, repr=False)  # type: ignore[assignment]  # None: TextEncode
    unet_step: UNetFn = field(default=None, repr=False)  # type: ignore[assignment]  # None: UNetStep
    decode_latents: TensorFn = field(default=None, repr=False)  # type: ignore[assignment]  # None: VaeDecode

    def __post_init__(self) -> None:
        if self.encode_text is None:
            self.encode_text = TextEncode(self.text_encoder).eval()
        if self.unet_step is None:
            self.unet_step = UNetStep(self.unet).eval()
        if self.decode_latents is None:
            self.decode_latents = VaeDecode(self.vae).eval()

    @property
    def max_tokens(self) -> int:
        """Tokens the text encoder reads (77 for SD-1.x)."""
        return int(self.tokenizer.model_max_length)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD-1.x)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels the UNet was configured for (512x512 for SD-1.x)."""
        side = int(self.unet.config.sample_size) * self.vae_scale_factor
        return side, side


# ---------------------------------------------------------------------------------------------- building
def _word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges that join each word letter by letter into one end-of-word token ("c a" -> "ca", "ca t</w>")."""
    merges: list[tuple[str, str]] = []
    for word in words:
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def build_tokenizer(max_tokens: int = 77) -> Any:
    """A CLIP byte-level BPE tokenizer made in memory: the 256 byte symbols, their "</w>" end-of-word forms, the
    merges of TOKENIZER_WORDS and <|startoftext|> / <|endoftext|> (587 ids). transformers >= 5 builds a
    CLIPTokenizer from a vocab dict and merge list directly, so no files are written."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _word_merges(TOKENIZER_WORDS)
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=max_tokens)


def _config(name: str) -> dict[str, dict[str, Any]]:
    if name not in SD_CONFIGS:
        raise InputError(f"{ZOO_PREFIX}{name}: unknown Stable Diffusion model; known: "
                         f"{', '.join(ZOO_PREFIX + k for k in SD_CONFIGS)}")
    return SD_CONFIGS[name]


def build_sd(name: str, seed: int = 0) -> StableDiffusion:
    """SD_CONFIGS[name] with random weights (seeded; nothing downloaded) and the built-in tokenizer."""
    cfg = _config(name)
    diffusers = require("diffusers", f"Stable Diffusion ({ZOO_PREFIX}{name})")
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's random state
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        unet = diffusers.UNet2DConditionModel(**cfg["unet"])
        vae = diffusers.AutoencoderKL(**cfg["vae"])
    tokenizer = build_tokenizer(cfg["text_encoder"]["max_position_embeddings"])
    return _checked(StableDiffusion(tokenizer, text_encoder.eval(), unet.eval(), vae.eval(),
                                    diffusers.PNDMScheduler.from_config(cfg["scheduler"]), f"{ZOO_PREFIX}{name}"))


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters of each model component of SD_CONFIGS[name], counted on the meta device (nothing allocated)."""
    cfg = _config(name)
    diffusers = require("diffusers", f"Stable Diffusion ({ZOO_PREFIX}{name})")
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        models = {"text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
                  "unet": diffusers.UNet2DConditionModel(**cfg["unet"]),
                  "vae": diffusers.AutoencoderKL(**cfg["vae"])}
    return {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}


# ---------------------------------------------------------------------------------------------- loading
_WEIGHTS = {"text_encoder": "model", "unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
_CONFIG = {"text_encoder": "config.json", "unet": "config.json", "vae": "config.json",
           "scheduler": "scheduler_config.json"}


def _has_component(folder: Path, name: str) -> bool:
    sub = folder / name
    if name == "tokenizer":
        return (sub / "tokenizer.json").is_file() or ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file())
    return (sub / _CONFIG[name]).is_file()


def check_folder(folder: Path) -> None:
    """InputError unless `folder` holds every SD component, each model one with safetensors weights."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (expected zoo:sd-1.4, zoo:sd-small or a Stable Diffusion folder)")
    missing = [c for c in COMPONENTS if not _has_component(folder, c)]
    if missing:
        raise InputError(f"{folder}: not a complete Stable Diffusion folder: missing {', '.join(missing)} "
                         f"(each of {', '.join(COMPONENTS)} is a subfolder)")
    for name, stem in _WEIGHTS.items():
        sub = folder / name
        if not ((sub / f"{stem}.safetensors").is_file() or (sub / f"{stem}.safetensors.index.json").is_file()):
            raise InputError(f"{sub}: no {stem}.safetensors (only safetensors weights are loaded, never pickle files)")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards" bars off for the block (a library call, not a run)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _load_folder(folder: Path) -> StableDiffusion:
    check_folder(folder)
    diffusers = require("diffusers", f"Stable Diffusion ({folder})")
    from transformers import CLIPTextModel, CLIPTokenizer

    opts = dict(use_safetensors=True, local_files_only=True)
    loaders: dict[str, Callable[[], Any]] = {
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32,
                                                              **opts).eval(),
        "unet": lambda: diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet",
                                                                       torch_dtype=torch.float32, **opts).eval(),
        "vae": lambda: diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32,
                                                               **opts).eval(),
        "scheduler": lambda: diffusers.PNDMScheduler.from_pretrained(folder, subfolder="scheduler",
                                                                     local_files_only=True),
    }
    parts: dict[str, Any] = {}
    with _quiet_transformers():
        for name, load in loaders.items():
            try:
                parts[name] = load()
            except Exception as e:  # corrupt or mismatched files: one line naming the component
                raise InputError(f"{folder / name}: cannot load: {first_line(e)}") from None
    return _checked(StableDiffusion(**parts, source=str(folder)))


def _checked(sd: StableDiffusion) -> StableDiffusion:
    """`sd` if its components fit together, else an InputError naming the two that do not."""
    te, unet, vae = sd.text_encoder.config, sd.unet.config, sd.vae.config
    if len(sd.tokenizer) > te.vocab_size:
        raise InputError(f"{sd.source}: tokenizer has {len(sd.tokenizer)} tokens, text encoder only {te.vocab_size}")
    if sd.max_tokens > te.max_position_embeddings:
        raise InputError(f"{sd.source}: tokenizer reads {sd.max_tokens} tokens, text encoder only "
                         f"{te.max_position_embeddings}")
    if te.hidden_size != unet.cross_attention_dim:
        raise InputError(f"{sd.source}: text encoder width {te.hidden_size} != UNet cross_attention_dim "
                         f"{unet.cross_attention_dim}")
    if unet.in_channels != vae.latent_channels:
        raise InputError(f"{sd.source}: UNet takes {unet.in_channels} latent channels, VAE makes {vae.latent_channels}")
    return sd


def load_sd(source: str | Path, seed: int = 0) -> StableDiffusion:
    """A StableDiffusion from `zoo:sd-1.4` / `zoo:sd-small` (random weights from `seed`) or a local SD-1.x
    diffusers folder (text_encoder, tokenizer, unet, vae, scheduler subfolders; safetensors only; offline).

    The zoo names are read here rather than registered with `edgeopt.load.register_zoo`: a zoo entry returns one
    Artifact (one module and its inputs), a pipeline of three models is not one yet, and zoo modules (layer 1)
    may not import this one (layer 2)."""
    s = str(source)
    if s.startswith(ZOO_PREFIX):
        return build_sd(s.removeprefix(ZOO_PREFIX), seed)
    return _load_folder(Path(source).expanduser())


def save_sd(sd: StableDiffusion, folder: str | Path) -> Path:
    """Write `sd`'s components as a diffusers SD folder (safetensors), through a temporary folder beside it and a
    rename; an existing non-empty `folder` is an InputError (never overwritten)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder}: already exists and is not empty")
    if not folder.parent.is_dir():
        raise InputError(f"{folder.parent}: no such folder")
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet_transformers():
            sd.tokenizer.save_pretrained(tmp / "tokenizer")
            sd.text_encoder.save_pretrained(tmp / "text_encoder")  # transformers 5 writes safetensors only
            sd.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            sd.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            sd.scheduler.save_pretrained(tmp / "scheduler")
        if folder.exists():
            folder.rmdir()
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
