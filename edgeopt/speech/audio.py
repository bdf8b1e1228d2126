"""Reading users' audio for speech models: WAV to 16 kHz mono float32, with a note for every conversion made.

Bad input answers with one line: a missing, empty or corrupt file is an InputError; stereo is downmixed and a
rate other than the model's is resampled (scipy's polyphase filter), each with a note returned to the caller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import InputError

SAMPLE_RATE = 16000


def to_mono_16k(x: np.ndarray, rate: int, what: str = "audio", sr: int = SAMPLE_RATE) -> tuple[np.ndarray, list[str]]:
    """`x` (samples,) or (samples, channels), any numeric dtype, as float32 mono at `sr`, and the notes on what
    was converted. Integer PCM is scaled to [-1, 1]."""
    notes: list[str] = []
    a = np.asarray(x)
    if a.size == 0 or (a.ndim == 2 and a.shape[0] == 0):
        raise InputError(f"{what}: empty audio (no samples)")
    if a.ndim > 2:
        raise InputError(f"{what}: audio with shape {a.shape}; expected (samples,) or (samples, channels)")
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        a = (a.astype(np.float32) - (info.max + info.min + 1) / 2) / (info.max - info.min + 1) * 2
    a = a.astype(np.float32)
    if a.ndim == 2:
        if a.shape[1] > 1:
            notes.append(f"{what}: {a.shape[1]} channels downmixed to mono")
        a = a.mean(axis=1)
    if not np.isfinite(a).all():
        raise InputError(f"{what}: audio holds NaN or infinite samples")
    if rate <= 0:
        raise InputError(f"{what}: sample rate {rate} Hz is not positive")
    if rate != sr:
        from scipy.signal import resample_poly

        g = int(np.gcd(int(rate), sr))
        a = resample_poly(a, sr // g, int(rate) // g).astype(np.float32)
        notes.append(f"{what}: resampled from {rate} Hz to {sr} Hz")
    return a, notes


def read_wav(path: str | Path, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, list[str]]:
    """A WAV file as float32 mono at `sr`, and the notes on what was converted (downmix, resampling)."""
    from scipy.io import wavfile

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such audio file")
    try:
        rate, x = wavfile.read(p)
    except (ValueError, EOFError, OSError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise InputError(f"{p}: not a readable WAV file ({first[:120]})") from None
    return to_mono_16k(x, int(rate), str(p), sr)


def write_wav(path: str | Path, x: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Float audio as 16-bit PCM WAV, written atomically (a temporary file beside it, then renamed)."""
    import io

    from scipy.io import wavfile

    from edgeopt.artifact import write_bytes_atomic

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    wavfile.write(buf, sr, (np.clip(x, -1, 1) * 32767).astype(np.int16))
    write_bytes_atomic(p, buf.getvalue())
    return p
