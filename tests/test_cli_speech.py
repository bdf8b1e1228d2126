"""`edgeopt transcribe` and `edgeopt demo whisper`: real Whisper tiny.en on spoken audio, and bad input as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import wavfile
from typer.testing import CliRunner

from edgeopt.cli import app
from edgeopt.zoo import speech

runner = CliRunner()


def _one_line_error(res, *words):
    assert res.exit_code != 0, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_audio_and_models_are_one_line_errors(tmp_path):
    _one_line_error(runner.invoke(app, ["transcribe", str(tmp_path / "none.wav")]), "no such audio file")
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEnope")
    _one_line_error(runner.invoke(app, ["transcribe", str(tmp_path / "bad.wav")]), "not a readable WAV")
    wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, np.int16))
    _one_line_error(runner.invoke(app, ["transcribe", str(tmp_path / "empty.wav")]), "empty audio")
    wavfile.write(tmp_path / "ok.wav", 16000, np.zeros(1600, np.int16))
    (tmp_path / "ct2").mkdir()
    (tmp_path / "ct2" / "vocabulary.txt").write_text("a\n")
    _one_line_error(runner.invoke(app, ["transcribe", str(tmp_path / "ok.wav"), "-m", str(tmp_path / "ct2")]),
                    "without model.bin")
    _one_line_error(runner.invoke(app, ["demo", "whisper", "--target", "tpu"]), "unknown optimization target 'tpu'")


@pytest.mark.slow
def test_transcribe_stereo_44k_speech_with_notes(tmp_path):
    if not speech.espeak_available():
        pytest.skip("espeak-ng is not installed (make espeak)")
    (x, text), = speech.spoken(1)
    from scipy.signal import resample_poly

    y = resample_poly(x, 441, 160).astype(np.float32)  # 16 kHz -> 44.1 kHz
    wavfile.write(tmp_path / "s.wav", 44100, (np.stack([y, y], 1) * 32767).astype(np.int16))
    res = runner.invoke(app, ["transcribe", str(tmp_path / "s.wav"), "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)  # --json: stdout is the JSON alone
    assert any("downmixed" in n for n in rows[0]["notes"]) and any("44100 Hz" in n for n in rows[0]["notes"])
    from edgeopt.speech.whisper import wer

    assert wer([text], [rows[0]["text"]]) <= 0.35, rows[0]["text"]
