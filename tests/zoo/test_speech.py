"""zoo:speech: synthesized speech-like audio (pitched, formant-shaped, with pauses) and its log-mel features."""

from __future__ import annotations

import json

import numpy as np

from edgeopt.zoo import speech


def test_utterances_are_deterministic_and_bounded():
    a, b = speech.synthesize(3), speech.synthesize(3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and 0.8 * speech.SAMPLE_RATE <= len(a) <= 2.5 * speech.SAMPLE_RATE
    assert np.isfinite(a).all() and abs(np.abs(a).max() - 0.5) < 1e-6
    assert not np.array_equal(speech.synthesize(4)[:8000], a[:8000])


def test_utterances_sound_like_voiced_speech():
    x = speech.synthesize(7).astype(np.float64)
    sr = speech.SAMPLE_RATE
    frames = x[: len(x) // 400 * 400].reshape(-1, 400)  # 25 ms frames
    energy = (frames ** 2).mean(1)
    assert (energy < energy.max() * 1e-3).any() and (energy > energy.max() * 0.1).mean() > 0.3  # pauses and syllables
    # a loud frame is periodic at a voice pitch (70-300 Hz): its autocorrelation peaks at the pitch lag
    f = frames[int(np.argmax(energy))]
    ac = np.correlate(f, f, "full")[len(f) - 1:]
    lag = int(np.argmax(ac[sr // 300: sr // 70])) + sr // 300
    assert ac[lag] > 0.5 * ac[0]
    # most of the energy lies below 4 kHz, as in speech (noise would spread it up to 8 kHz)
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    assert spec[freqs < 4000].sum() > 0.9 * spec.sum()


def test_waves_are_cut_or_padded():
    w = speech.waves(range(3), 4000)
    assert w.shape == (3, 4000) and w.dtype == np.float32
    n = len(speech.utterance(0)) + 4000  # espeak-ng's sentence where it is installed, else the synthesized one
    long = speech.waves([0], n)
    assert long.shape == (1, n) and np.all(long[0, -4000:] == 0)  # silence after the utterance
    assert isinstance(speech.espeak_available(), bool)


def test_log_mel_features_sized_to_the_model():
    f = speech.log_mel(speech.waves(range(2), 16000), 80, 100)
    assert f.shape == (2, 80, 100) and f.dtype == np.float32 and np.isfinite(f).all()
    assert f[0].std() > 0.05  # structure, not a constant
    assert speech.fit_frames(f, 120).shape == (2, 80, 120) and speech.fit_frames(f, 60).shape == (2, 80, 60)


def test_folder_feature_extractor(tmp_path):
    assert speech.feature_extractor(None) is None and speech.feature_extractor(tmp_path) is None
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": True}))
    assert speech.audio_settings(tmp_path)["sampling_rate"] == 16000
    fe = speech.feature_extractor(tmp_path)
    out = speech.extract(fe, speech.waves(range(2), 8000), 8000)
    assert out["input_values"].shape == (2, 8000) and out["attention_mask"].shape == (2, 8000)
    assert abs(float(out["input_values"][0].std()) - 1.0) < 0.05  # normalized as the model was trained
