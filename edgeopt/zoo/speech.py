"""zoo:speech — speech-like audio for audio models without data, synthesized in code (no download, no TTS engine).

Written by hand because no maintained offline speech corpus or TTS ships with the project's packages (espeak-ng is
used instead when it is installed: `espeak_available()`). Each utterance is a source-filter vowel chain: a glottal
source (harmonics of a pitch contour with declination, vibrato and a 1/k spectral tilt) shaped by three formant
resonances that glide between vowels (Peterson & Barney's averages, scaled per speaker), with fricative noise
between syllables, pauses between words and syllable envelopes, at 16 kHz. Deterministic: utterance i is drawn from
a generator seeded by i. Features for models that take log-mel spectrograms come from the model's own Hugging
Face feature extractor when its folder has one, else from transformers' Whisper log-mel extractor sized to the
model's input.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.zoo.sentences import sentences

SAMPLE_RATE = 16000
N_UTTERANCES = 640
DEFAULT_SECONDS = 1.0  # the window of a waveform model whose input length is not fixed
# vowel formants F1, F2, F3 in Hz (adult averages, Peterson & Barney 1952)
VOWELS = ((270, 2290, 3010), (390, 1990, 2550), (530, 1840, 2480), (660, 1720, 2410), (730, 1090, 2440),
          (570, 840, 2410), (440, 1020, 2240), (300, 870, 2240), (490, 1350, 1690), (640, 1190, 2390))
BANDWIDTHS = (90.0, 110.0, 170.0)
FORMANT_GAINS = (1.0, 0.6, 0.3)


def espeak_available() -> bool:
    """Whether the espeak-ng speech synthesizer is installed (then utterances are spoken sentences)."""
    return shutil.which("espeak-ng") is not None


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` samples (edges held): piecewise targets become glides."""
    if width <= 1:
        return x
    pad = np.concatenate([np.full(width, x[0]), x, np.full(width, x[-1])])
    c = np.cumsum(pad, dtype=np.float64)
    out = (c[width:] - c[:-width]) / width
    return out[width // 2: width // 2 + len(x)].astype(np.float32)


def synthesize(i: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Utterance `i`: 0.8–2.5 s of speech-like audio, float32 in [-0.5, 0.5], starting within 60 ms."""
    rng = np.random.default_rng(10_000 + i)
    f0_base = rng.uniform(85, 240)  # speaker pitch
    scale = 1.25 - 0.0015 * f0_base + rng.uniform(-0.05, 0.05)  # higher voices: shorter vocal tracts
    total = int(sr * rng.uniform(0.8, 2.5))
    f0_t = np.zeros(total, np.float32)
    formants = np.zeros((3, total), np.float32)
    voiced = np.zeros(total, np.float32)
    noise = np.zeros(total, np.float32)
    pos = int(sr * rng.uniform(0.0, 0.06))
    vowel = VOWELS[rng.integers(len(VOWELS))]
    while pos < total:
        if rng.random() < 0.35:  # a consonant before the vowel: fricative noise or a stop's silence + burst
            n = int(sr * rng.uniform(0.03, 0.09))
            if rng.random() < 0.6:
                noise[pos:pos + n] = rng.uniform(0.15, 0.4)
            else:
                burst = max(1, n // 6)
                noise[pos + n - burst:pos + n] = rng.uniform(0.3, 0.6)
            pos += n
            if pos >= total:
                break
        n = int(sr * rng.uniform(0.09, 0.28))  # the vowel
        vowel = VOWELS[rng.integers(len(VOWELS))]
        seg = slice(pos, min(pos + n, total))
        formants[:, seg] = np.asarray(vowel, np.float32)[:, None] * scale
        f0_t[seg] = f0_base * rng.uniform(0.85, 1.2)
        ramp = np.sin(np.linspace(0, np.pi, seg.stop - seg.start)) ** 0.6  # syllable envelope
        voiced[seg] = rng.uniform(0.6, 1.0) * ramp
        pos += n
        if rng.random() < 0.2:  # a pause between words
            pos += int(sr * rng.uniform(0.06, 0.2))
    # hold formants and pitch through unvoiced stretches, then glide between targets
    for arr in (*formants, f0_t):
        idx = np.nonzero(arr)[0]
        if len(idx):
            arr[:] = np.interp(np.arange(total), idx, arr[idx])
        else:
            arr[:] = 500.0
    formants = np.stack([_smooth(f, int(sr * 0.03)) for f in formants])
    t = np.arange(total, dtype=np.float32) / sr
    f0 = _smooth(f0_t, int(sr * 0.05)) * (1 - 0.12 * t / t[-1]) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0.astype(np.float64)) / sr
    # harmonics below 4.5 kHz of the lowest pitch, each weighted by the formant filter's gain at its frequency
    n_harm = int(4500 // float(f0.min()))
    k = np.arange(1, n_harm + 1, dtype=np.float32)[:, None]
    step = 32  # the filter's gain is computed every 32 samples and held (formants move slowly)
    fk = k * f0[None, ::step]  # (K, T/step)
    gain = np.zeros_like(fk)
    for f, bw, g in zip(formants[:, ::step], BANDWIDTHS, FORMANT_GAINS):
        gain += g / np.sqrt((1 - (fk / f) ** 2) ** 2 + (fk * bw / f ** 2) ** 2)
    gain *= k ** -0.8 * (fk < sr / 2 - 1000)
    gain = np.repeat(gain, step, axis=1)[:, :total]
    wave = (np.sin(k * phase[None, :].astype(np.float32)) * gain).sum(0)
    wave = wave / (np.abs(wave).max() + 1e-9) * _smooth(voiced, int(sr * 0.01))
    hiss = np.diff(rng.standard_normal(total + 1)).astype(np.float32) * 0.5  # brighter than white noise
    wave = wave + hiss * _smooth(noise, int(sr * 0.005)) + 0.002 * rng.standard_normal(total).astype(np.float32)
    return (0.5 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


def say(text: str, sr: int = SAMPLE_RATE, words_per_minute: int = 160, voice: str = "en-us") -> np.ndarray | None:
    """`text` spoken by espeak-ng at `sr` (float32 peaking at 0.5), or None when espeak-ng is missing or fails."""
    from scipy.io import wavfile  # lazy: scipy loads only where espeak-ng speaks
    from scipy.signal import resample_poly

    if not espeak_available():
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "u.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), "-s", str(words_per_minute), text], check=True,
                           capture_output=True, timeout=60)
            rate, x = wavfile.read(out)
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
    x = x.astype(np.float32) / (np.abs(x).max() + 1e-9) * 0.5
    if rate != sr:
        g = int(np.gcd(rate, sr))
        x = resample_poly(x, sr // g, rate // g).astype(np.float32)
    return x


def _espeak(i: int, sr: int) -> np.ndarray | None:
    """Utterance `i` spoken by espeak-ng (a generated sentence, resampled to `sr`), or None when it fails."""
    return say(sentences()[i % N_UTTERANCES], sr, 150 + (i * 7) % 40)


def transcripts(n: int = 10, seed: int = 7) -> list[str]:
    """`n` short sentences (6–14 words, a few seconds spoken) with known text, for word error rates."""
    from edgeopt.zoo import sentences as sent

    rng = np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(n):
        s, v, o = (str(rng.choice(x)) for x in (sent._SUBJECTS, sent._VERBS, sent._OBJECTS))
        tail = str(rng.choice(sent._PLACES))
        out.append(f"{s[0].upper()}{s[1:]} {v} {o} {tail}.")
    return out


def spoken(n: int = 10, sr: int = SAMPLE_RATE) -> list[tuple[np.ndarray, str]]:
    """`n` (waveform, transcript) pairs spoken by espeak-ng (voices and speeds vary); InputError without it."""
    from edgeopt.errors import InputError

    if not espeak_available():
        raise InputError("speech with known transcripts needs espeak-ng (make espeak; Debian: apt-get "
                         "install espeak-ng)")
    pairs = []
    for i, text in enumerate(transcripts(n)):  # espeak's British voice at 150-180 words a minute: Whisper tiny.en
        x = say(text, sr, 150 + (i * 7) % 31, "en")  # reads it best of the voices tried (WER ~0.26)
        if x is None:
            raise InputError(f"espeak-ng failed to speak utterance {i}: {text!r}")
        pairs.append((x, text))
    return pairs


def utterance(i: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Utterance `i` (espeak-ng where installed, else synthesized)."""
    x = _espeak(i, sr) if espeak_available() else None
    if x is None:
        x = synthesize(i, sr)
    return x


def fit(x: np.ndarray, n: int) -> np.ndarray:
    """`x` cut to `n` samples or padded with silence."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def waves(indices: range | list[int], n_samples: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(N, n_samples) float32 utterances `indices`, each cut or padded to `n_samples`."""
    return np.stack([fit(utterance(int(i), sr), n_samples) for i in indices]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- features
def audio_settings(folder: str | Path | None) -> dict[str, Any]:
    """The audio facts of a Hugging Face folder: feature_extractor_type, sampling_rate, feature_size (mel bins),
    n_samples, nb_max_frames (preprocessor_config.json) and max_source_positions (config.json); {} for none."""
    out: dict[str, Any] = {}
    if folder is None:
        return out
    for name in ("config.json", "preprocessor_config.json"):
        p = Path(folder) / name
        try:
            cfg = json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, ValueError):
            cfg = {}
        if isinstance(cfg, dict):
            for key in ("feature_extractor_type", "sampling_rate", "feature_size", "n_samples", "nb_max_frames",
                        "max_source_positions", "num_mel_bins"):
                if key in cfg:
                    out[key] = cfg[key]
    return out


def feature_extractor(folder: str | Path | None) -> Any | None:
    """The folder's Hugging Face feature extractor (offline), or None when it has none or it cannot be read."""
    if folder is None or "feature_extractor_type" not in audio_settings(folder):
        return None
    from transformers import AutoFeatureExtractor  # lazy: transformers loads only for audio models
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # an unknown or broken extractor: the caller falls back to its own features
        return None


def log_mel(x: np.ndarray, n_mels: int, frames: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(N, n_mels, frames) Whisper-style log-mel features of waveforms (N, samples), by transformers'
    WhisperFeatureExtractor sized to `n_mels` bins and `frames` frames (hop 10 ms)."""
    from transformers import WhisperFeatureExtractor  # lazy: transformers loads only for audio models

    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=sr)
    fe.n_samples = frames * fe.hop_length
    fe.nb_max_frames = frames
    out = fe(list(x), sampling_rate=sr, return_tensors="np", padding="max_length", max_length=fe.n_samples,
             truncation=True)["input_features"]
    return fit_frames(out.astype(np.float32), frames)


def fit_frames(x: np.ndarray, frames: int) -> np.ndarray:
    """Features (N, bins, T) cut or padded (with their minimum) to `frames` on the last axis."""
    if x.shape[-1] >= frames:
        return np.ascontiguousarray(x[..., :frames])
    pad = np.full((*x.shape[:-1], frames - x.shape[-1]), x.min(), x.dtype)
    return np.concatenate([x, pad], axis=-1)


def extract(fe: Any, x: np.ndarray, n_samples: int) -> dict[str, np.ndarray]:
    """The feature extractor `fe`'s outputs (numpy, by name) for waveforms (N, samples), padded to `n_samples`."""
    sr = int(getattr(fe, "sampling_rate", SAMPLE_RATE) or SAMPLE_RATE)
    enc = fe(list(x), sampling_rate=sr, return_tensors="np", padding="max_length", max_length=n_samples,
             truncation=True)
    return {k: np.asarray(v) for k, v in enc.items()}
