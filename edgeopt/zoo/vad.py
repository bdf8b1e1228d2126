"""zoo:silero-vad — the real Silero VAD (weights from the silero-vad package) as one PyTorch graph over a whole waveform.

The package ships the 16 kHz weights as safetensors (and as ONNX/TorchScript graphs that run one 32 ms chunk
per call, the LSTM state carried by the caller). `SileroVAD` rebuilds the architecture the package documents
(its tinygrad model: an STFT as a strided convolution, magnitude, four convolutions, an LSTM cell, a 1×1
convolution and a sigmoid) over a whole waveform at once: the waveform is cut into 512-sample chunks, each with
the 64 samples before it as context (zeros before the first), the convolutions run on all chunks as a batch and
one `nn.LSTM` runs over the chunk sequence — the same computation as the streaming loop, exported as a single
ONNX `LSTM` op. Output: the speech probability of each chunk (batch, chunks). Written by hand because the package
has no PyTorch module for its weights (only the TorchScript and ONNX graphs, which hide the LSTM in `If` branches).
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError
from edgeopt.load import register_zoo

VAD_DIST = "silero-vad"
VAD_WEIGHTS = "silero_vad/data/silero_vad_16k_op15.onnx"  # v6's 16 kHz weights (the package's default model)
VAD_ONNX = "silero_vad/data/silero_vad.onnx"  # the package's own streaming graph: the reference in tests
# the package's silero_vad_16k.safetensors holds other (older) weights than its ONNX and TorchScript models: the
# v6 weights are read from the 16 kHz ONNX graph's initializers (onnx parses them; nothing is unpickled)
ONNX_NAMES = {"model.stft.forward_basis_buffer": "stft_conv.weight",
              **{f"model.encoder.{i}.reparam_conv.{w}": f"conv{i + 1}.{w}" for i in range(4) for w in ("weight", "bias")},
              **{f"model.decoder.rnn.{w}": f"lstm_cell.{w}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
              "model.decoder.decoder.2.weight": "final_conv.weight", "model.decoder.decoder.2.bias": "final_conv.bias"}
SAMPLE_RATE = 16000
CHUNK = 512  # samples per decision (32 ms at 16 kHz)
CONTEXT = 64  # samples of the chunk before, prepended
EXAMPLE_SAMPLES = 64 * CHUNK  # the zoo artifact's fixed input: 2.048 s


def package_file(rel: str) -> Path:
    """A file inside the installed silero-vad package."""
    try:
        p = Path(md.distribution(VAD_DIST).locate_file(rel))
    except md.PackageNotFoundError:
        raise InputError("zoo:silero-vad needs the package silero-vad (make install)") from None
    if not p.is_file():
        raise InputError(f"{p}: missing from the silero-vad package (reinstall it)")
    return p


def _vad_class():
    import torch
    from torch import nn

    class SileroVAD(nn.Module):
        """Silero VAD over a whole 16 kHz waveform (batch, samples), samples a multiple of 512 -> (batch, chunks)."""

        def __init__(self):
            super().__init__()
            self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
            self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
            self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
            self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
            self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
            self.lstm = nn.LSTM(128, 128, batch_first=True)
            self.final_conv = nn.Conv1d(128, 1, 1)

        def forward(self, audio):
            b = audio.shape[0]
            cur = audio.reshape(b, -1, CHUNK)  # (B, N, 512)
            prev = torch.cat([torch.zeros_like(cur[:, :1, -CONTEXT:]), cur[:, :-1, -CONTEXT:]], dim=1)
            x = torch.cat([prev, cur], dim=2).reshape(-1, 1, CHUNK + CONTEXT)  # (B*N, 1, 576)
            x = nn.functional.pad(x, (0, CONTEXT), mode="reflect")
            x = self.stft_conv(x)
            x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
                x = torch.relu(conv(x))
            x = x.reshape(b, -1, 128)  # (B, N, 128): the last conv leaves one frame per chunk
            h, _ = self.lstm(x)
            p = torch.sigmoid(self.final_conv(torch.relu(h).transpose(1, 2)))  # (B, 1, N)
            return p[:, 0]

    return SileroVAD


def _onnx_weights(path: Path) -> dict[str, Any]:
    """The named weights of a Silero VAD ONNX graph (its initializers, subgraphs included), by tinygrad's names."""
    import onnx
    import torch
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({e.__class__.__name__})") from None
    found: dict[str, Any] = {}

    def walk(g: Any) -> None:
        for t in g.initializer:
            if t.name in ONNX_NAMES:
                found[ONNX_NAMES[t.name]] = torch.from_numpy(numpy_helper.to_array(t).copy())
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(model.graph)
    return found


def silero_vad(weights: str | Path | None = None) -> Any:
    """`SileroVAD` with the package's v6 16 kHz weights, or a user's own file of the same layout: a Silero 16 kHz
    ONNX graph, or a safetensors file with the tinygrad model's names (as the package's silero_vad_16k.safetensors)."""
    from safetensors.torch import load_file

    path = Path(weights) if weights else package_file(VAD_WEIGHTS)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    if path.suffix == ".onnx":
        sd = _onnx_weights(path)
    else:
        try:
            sd = load_file(str(path))
        except Exception as e:
            raise InputError(f"{path}: not a readable safetensors file ({e.__class__.__name__})") from None
    model = _vad_class()()
    rename = {"lstm_cell.weight_ih": "lstm.weight_ih_l0", "lstm_cell.weight_hh": "lstm.weight_hh_l0",
              "lstm_cell.bias_ih": "lstm.bias_ih_l0", "lstm_cell.bias_hh": "lstm.bias_hh_l0"}
    state = {rename.get(k, k): v for k, v in sd.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit Silero VAD ({str(e).splitlines()[0][:200]})") from None
    return model.eval()


@register_zoo("silero-vad", "Silero VAD v6, real weights (silero-vad package): 16 kHz audio -> speech probability "
              "per 32 ms chunk, an LSTM over the chunks")
def _zoo_vad(name: str, *, seq_len: int, batch: int) -> Artifact:
    import torch

    model = silero_vad()
    gen = torch.Generator().manual_seed(0)
    example = {"audio": torch.randn(batch, EXAMPLE_SAMPLES, generator=gen) * 0.1}
    spec = InputSpec((TensorSpec("audio", "float32", ("batch", "samples")),))  # any multiple of 512
    meta = {"source": "zoo:silero-vad", "family": "silero-vad", "task": "vad", "sampling_rate": SAMPLE_RATE,
            "audio_samples": EXAMPLE_SAMPLES, "chunk": CHUNK, "decision_threshold": 0.5,
            "example_inputs": example, "input_names": ["audio"],
            "output_names": ["speech_prob"]}
    return Artifact.from_module(model, spec, meta=meta)
