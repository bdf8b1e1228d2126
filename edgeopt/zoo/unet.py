"""zoo:unet-tiny|small|medium — a diffusers UNet2DConditionModel with random weights (no download), one denoising step.

The kernel micro-benchmarks (`edgeopt.measure.kernels`: the UNet table, `edgeopt winograd unet:NAME`) and the
kernel-pass tests build it; `load_model("zoo:unet-small")` gives it as an Artifact. diffusers comes with the
`diffusion` extra and is imported on first build only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.extras import require
from edgeopt.load import load_model, register_zoo

# diffusers' UNet2DConditionModel takes the number of heads in `attention_head_dim` (a known misnomer):
# 2 heads over 80 / 160 channels give head dims 40 and 80, two of Stable Diffusion's (40, 80, 160).
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"latent": 16, "text_tokens": 8, "config": dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)},
    "small": {"latent": 32, "text_tokens": 77, "config": dict(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(80, 160, 160), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=2, norm_num_groups=16)},
}
UNET_CONFIGS["medium"] = {**UNET_CONFIGS["small"], "latent": 64,  # 4096 tokens at the top level, as SD at 512 px
                          "config": {**UNET_CONFIGS["small"]["config"], "sample_size": 64}}
# Stable Diffusion 1.4's UNet as published (CompVis/stable-diffusion-v1-4 unet/config.json, the keys that differ
# from diffusers' defaults): 859.5M parameters, 8 heads of 40/80/160 channels, 64x64 latents for 512x512 images,
# 77 CLIP ViT-L/14 text states of 768. edgeopt.diffusion.sd builds the whole SD-1.4 pipeline from this entry.
_CROSS_DOWN, _CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
UNET_CONFIGS["sd-1.4"] = {"latent": 64, "text_tokens": 77, "config": dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=(_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, "DownBlock2D"),
    up_block_types=("UpBlock2D", _CROSS_UP, _CROSS_UP, _CROSS_UP),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1)}


@lru_cache(maxsize=1)
def unet_step_class() -> type:
    """The wrapper class, defined on first use so that importing the zoo does not import torch."""
    import torch
    from torch import nn

    class UNetStep(nn.Module):
        """One denoising step of a diffusers UNet2DConditionModel: (sample, timestep, text) -> predicted noise."""

        def __init__(self, unet: nn.Module):
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # (B, 4, h, w)

    return UNetStep


def check_size(size: str) -> str:
    """`size` if UNET_CONFIGS has it, else an InputError naming `unet:SIZE` and the known ones."""
    if size not in UNET_CONFIGS:
        raise InputError(f"unet:{size}: unknown UNet size; known: {', '.join('unet:' + k for k in UNET_CONFIGS)}")
    return size


def build_unet(size: str = "small", seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(module, example inputs) of a diffusers UNet2DConditionModel from UNET_CONFIGS, random weights, no download.

    The module is a `UNetStep` wrapper returning the predicted noise tensor; the example is one latent
    (1, 4, L, L), timestep 500 and (1, text_tokens, cross_attention_dim) text states, all seeded.
    """
    check_size(size)
    diffusers = require("diffusers", f"the diffusers UNet (unet:{size})")
    import torch

    spec = UNET_CONFIGS[size]
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**spec["config"]).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    L, T, D = spec["latent"], spec["text_tokens"], spec["config"]["cross_attention_dim"]
    example = {"sample": torch.randn(1, 4, L, L, generator=gen), "timestep": torch.tensor([500]),
               "encoder_hidden_states": torch.randn(1, T, D, generator=gen)}
    return unet_step_class()(unet).eval(), example


def load_unet(size: str = "small", seed: int = 0) -> Artifact:
    """`build_unet` as a torch Artifact (its example inputs in meta, source `zoo:unet-SIZE`)."""
    module, example = build_unet(size, seed)
    art = load_model(module, example)
    art.meta["source"] = f"zoo:unet-{size}"
    return art


def _zoo_unet(name: str, *, seq_len: int, batch: int) -> Artifact:
    return load_unet(name.removeprefix("unet-"))


for _size, _spec in UNET_CONFIGS.items():
    register_zoo(f"unet-{_size}", f"diffusers UNet2DConditionModel, {_spec['latent']}x{_spec['latent']} latents, "
                                  f"random weights (needs the diffusion extra)")(_zoo_unet)
