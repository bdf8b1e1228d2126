"""zoo:silero-vad: the whole-waveform PyTorch model computes what the package's streaming ONNX graph computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.load import load_model
from edgeopt.speech.vad import streaming_reference
from edgeopt.zoo import speech
from edgeopt.zoo import vad as zv


def _audio() -> np.ndarray:
    x = np.concatenate([np.zeros(6000, np.float32), speech.synthesize(3), np.zeros(6000, np.float32)])
    return x[: x.size // zv.CHUNK * zv.CHUNK]


def test_whole_waveform_model_matches_the_packages_streaming_graph():
    x = _audio()
    with torch.no_grad():
        ours = zv.silero_vad()(torch.from_numpy(x)[None]).numpy()[0]
    ref = streaming_reference(x)
    assert ours.shape == ref.shape == (x.size // 512,)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert (ref > 0.5).any() and (ref < 0.5).any()  # speech and silence both present: the check means something


def test_zoo_artifact_is_an_lstm_vad_with_a_decision_threshold():
    art = load_model("zoo:silero-vad")
    assert art.meta["task"] == "vad" and art.meta["decision_threshold"] == 0.5
    assert art.input_spec.names == ["audio"] and art.meta["sampling_rate"] == 16000
    assert isinstance(art.module.lstm, torch.nn.LSTM)


def test_bad_weight_files_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no such weights file"):
        zv.silero_vad(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable safetensors"):
        zv.silero_vad(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="do not fit Silero VAD"):
        zv.silero_vad(tmp_path / "other.safetensors")
