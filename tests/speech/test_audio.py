"""Reading users' audio: 16 kHz mono float32, with a note for each conversion and one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import wavfile

from edgeopt.errors import InputError
from edgeopt.speech.audio import read_wav, to_mono_16k, write_wav


def tone(sr: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_mono_16k_passes_through_without_notes(tmp_path):
    p = write_wav(tmp_path / "a.wav", tone(16000))
    x, notes = read_wav(p)
    assert notes == [] and x.dtype == np.float32 and len(x) == 8000
    assert np.abs(x - tone(16000)).max() < 1e-3  # 16-bit PCM round trip


def test_stereo_is_downmixed_and_another_rate_resampled_with_notes(tmp_path):
    st = np.stack([tone(44100), -tone(44100) * 0.0 + tone(44100)], axis=1)
    wavfile.write(tmp_path / "s.wav", 44100, (st * 32767).astype(np.int16))
    x, notes = read_wav(tmp_path / "s.wav")
    assert len(x) == 8000 and any("downmixed" in n for n in notes) and any("44100 Hz to 16000 Hz" in n for n in notes)
    # the 440 Hz tone survives resampling: its spectrum peaks at 440 Hz
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spec) * 16000 / len(x) - 440) < 5


def test_bad_audio_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no such audio file"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "c.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(InputError, match="not a readable WAV"):
        read_wav(tmp_path / "c.wav")
    with pytest.raises(InputError, match="empty audio"):
        to_mono_16k(np.zeros(0, np.int16), 16000)
    with pytest.raises(InputError, match="NaN"):
        to_mono_16k(np.array([0.0, np.nan], np.float32), 16000)
