"""Calibration and evaluation data: resolve a recipe's data spec into feeds that fit the model's inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.artifact import Artifact, InputSpec
from edgeopt.errors import InputError
from edgeopt.zoo import digits, sentences

Feed = dict[str, np.ndarray]
LABEL_KEY = "__label__"  # a feed may carry its labels under this key (classification data); runners never see it


def split_labels(feeds: list[Feed]) -> tuple[list[Feed], list[np.ndarray] | None]:
    """Feeds without their labels, and the labels (None when the data has none)."""
    if not feeds or LABEL_KEY not in feeds[0]:
        return feeds, None
    return [{k: v for k, v in f.items() if k != LABEL_KEY} for f in feeds], [f[LABEL_KEY] for f in feeds]


def labelled_feeds(x: np.ndarray, y: np.ndarray, input_name: str, batch: int) -> list[Feed]:
    """Feeds of `batch` samples of `x` (the last one may be smaller) with their labels `y` under LABEL_KEY."""
    return [{input_name: x[i:i + batch].copy(), LABEL_KEY: y[i:i + batch].copy()} for i in range(0, len(y), batch)]


def tokenize(texts: list[str], tokenizer_path: str, seq_len: int, batch: int, names: list[str]) -> list[Feed]:
    """Sentences -> feeds of `batch` sentences padded/truncated to `seq_len` tokens."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    feeds = []
    for i in range(0, len(texts) - batch + 1, batch):
        enc = tok(texts[i:i + batch], padding="max_length", max_length=seq_len, truncation=True, return_tensors="np")
        feed = {}
        for n in names:
            arr = enc.get(n)
            if arr is None and n == "token_type_ids":
                arr = np.zeros_like(enc["input_ids"])
            if arr is None:
                raise InputError(f"tokenizer gives no {n!r} input")
            feed[n] = arr.astype(np.int64)
        feeds.append(feed)
    return feeds


def random_feeds(spec: InputSpec, n: int, dims: dict[str, int], seed: int = 0, vocab: int = 100) -> list[Feed]:
    """`n` random feeds shaped by `spec` (named dims from `dims`); integer inputs drawn in [0, vocab)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for t in spec.inputs:
            shape = t.concrete(dims)
            if t.dtype.startswith("int") or t.dtype.startswith("uint"):
                if "mask" in t.name:
                    feed[t.name] = np.ones(shape, dtype=t.dtype)
                elif "type" in t.name:
                    feed[t.name] = np.zeros(shape, dtype=t.dtype)
                else:
                    feed[t.name] = rng.integers(0, max(vocab, 2), size=shape).astype(t.dtype)
            elif t.dtype == "bool":
                feed[t.name] = np.ones(shape, dtype=bool)
            else:
                feed[t.name] = rng.standard_normal(shape).astype(t.dtype)
        feeds.append(feed)
    return feeds


def load_npz(path: Path, spec: InputSpec, batch: int) -> list[Feed]:
    """Feeds from an .npz holding one array per model input (first axis = samples); never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputError(f"{path}: not a readable .npz file ({e.__class__.__name__})") from None
    missing = [n for n in spec.names if n not in arrays]
    if missing:
        raise InputError(f"{path}: no array for model input {missing[0]!r} (has: {', '.join(arrays) or 'none'})")
    n = min(len(arrays[k]) for k in spec.names)
    return [{k: arrays[k][i:i + batch] for k in spec.names} for i in range(0, n - batch + 1, batch)]


def check_feeds(feeds: list[Feed], spec: InputSpec, what: str) -> None:
    """Refuse data whose names, dtypes, ranks or fixed dims do not fit the model's inputs (one line, naming them)."""
    if not feeds:
        raise InputError(f"{what}: no samples")
    for t in spec.inputs:
        arr = feeds[0].get(t.name)
        if arr is None:
            raise InputError(f"{what}: no data for model input {t.name!r}")
        if arr.ndim != len(t.shape) or any(isinstance(d, int) and d != a for d, a in zip(t.shape, arr.shape)):
            want = "(" + ", ".join(str(d) for d in t.shape) + ")"
            raise InputError(f"{what}: input {t.name!r} has shape {tuple(arr.shape)}, the model expects {want}")
        if np.dtype(arr.dtype) != np.dtype(t.dtype):
            raise InputError(f"{what}: input {t.name!r} is {np.dtype(arr.dtype).name}, the model expects {t.dtype}")


def effective_spec(spec: str | None, art: Artifact, default_slice: slice, count: int | None = None) -> str:
    """The data spec `resolve` uses: `spec`, or for None the model's own data (the digits splits for the digits
    zoo models, generated sentences for a model with a tokenizer) and random inputs for any other model."""
    if spec is not None:
        return spec
    if art.meta.get("dataset") == "digits":
        return "zoo:digits"  # calibration: the train split, eval: the test split
    if art.meta.get("tokenizer") is not None:
        return f"zoo:sentences[{default_slice.start or ''}:{default_slice.stop or ''}]"
    return f"random:{count or 16}"


def resolve(spec: str | None, art: Artifact, *, seq_len: int, batch: int, role: str,
            default_slice: slice, count: int | None = None) -> list[Feed]:
    """Feeds for `role` ("calibration" or "eval") from a data spec; None means the model's default data.

    Forms: `zoo:sentences[a:b]`, a `.txt` file (one sentence a line, text models), an `.npz` file with one
    array per input, or `random:N`.
    """
    what = f"{role} data"
    is_text = art.meta.get("tokenizer") is not None
    names = art.input_spec.names
    dims = {"batch": batch, "sequence": seq_len}
    for t in art.input_spec.inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, str) and d not in dims:
                dims[d] = batch if i == 0 else seq_len
    spec = effective_spec(spec, art, default_slice, count)
    if spec.startswith("zoo:digits"):
        try:
            x, y = digits.samples(spec[len("zoo:digits"):], role)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None
        feeds = labelled_feeds(x, y, names[0], batch)
    elif spec.startswith("zoo:sentences"):
        if not is_text:
            raise InputError(f"{what}: zoo:sentences is text, but the model has no tokenizer")
        try:
            texts = sentences.split(spec[len("zoo:sentences"):], default_slice)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None
        feeds = tokenize(texts, art.meta["tokenizer"], seq_len, batch, names)
    elif spec.startswith("random:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(f"{what}: expected random:N, got {spec!r}") from None
        feeds = random_feeds(art.input_spec, n, dims, seed=0 if role == "calibration" else 1,
                             vocab=int(art.meta.get("vocab_size") or 100))
    else:
        p = Path(spec)
        if not p.exists():
            raise InputError(f"{what}: {p}: no such file")
        if p.suffix == ".npz":
            feeds = load_npz(p, art.input_spec, batch)
        elif p.suffix == ".txt":
            if not is_text:
                raise InputError(f"{what}: {p} holds sentences, but the model has no tokenizer")
            try:
                texts = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            except UnicodeDecodeError:
                raise InputError(f"{what}: {p}: not a UTF-8 text file") from None
            feeds = tokenize(texts, art.meta["tokenizer"], seq_len, batch, names)
        else:
            raise InputError(f"{what}: {p}: unsupported data file (expected .npz or .txt)")
    if count is not None:
        feeds = feeds[:count]
    check_feeds(feeds, art.input_spec, what)
    return feeds


def to_torch_args(feed: Feed, names: list[str]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
