"""Calibration and evaluation data: resolve a recipe's data spec into feeds that fit the model's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError
from edgeopt.zoo import digits, images, sentences, speech

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
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    except Exception as e:  # a missing tokenizer library, a broken file: one line naming the folder
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        raise InputError(f"{tokenizer_path}: cannot load the tokenizer ({first})") from None
    if tok.pad_token is None:  # decoder tokenizers (GPT-2) have none: pad with the end-of-text token
        tok.pad_token = tok.eos_token or tok.unk_token or tok.convert_ids_to_tokens(0)
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


def fill(t: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, vocab: int = 100) -> np.ndarray:
    """Values for an input no data set covers: masks all ones (a bool `*masked*` input all False: nothing is
    masked), token types zeros, position ids 0..n-1, other integers drawn in [0, vocab), floats standard normal."""
    name = t.name.lower()
    if t.dtype.startswith("int") or t.dtype.startswith("uint"):
        if "mask" in name:
            return np.ones(shape, dtype=t.dtype)
        if "type" in name:
            return np.zeros(shape, dtype=t.dtype)
        if "position" in name and shape:
            return np.broadcast_to(np.arange(shape[-1]), shape).astype(t.dtype)
        return rng.integers(0, max(vocab, 2), size=shape).astype(t.dtype)
    if t.dtype == "bool":
        return np.zeros(shape, dtype=bool) if "masked" in name else np.ones(shape, dtype=bool)
    return rng.standard_normal(shape).astype(t.dtype)


def random_feeds(spec: InputSpec, n: int, dims: dict[str, int], seed: int = 0, vocab: int = 100) -> list[Feed]:
    """`n` random feeds shaped by `spec` (named dims from `dims`); integer inputs drawn in [0, vocab) (masks
    ones, token types zeros, position ids counting up)."""
    rng = np.random.default_rng(seed)
    return [{t.name: fill(t, t.concrete(dims), rng, vocab) for t in spec.inputs} for _ in range(n)]


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


# ---------------------------------------------------------------------------------------------- what a model takes
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # as edgeopt.zoo.hf decides for a Hugging Face folder
AUDIO_NAMES = ("input_values", "audio", "wave", "speech", "pcm", "signal", "sound")  # name hints of waveforms
FEATURE_NAMES = ("input_features", "mel", "fbank", "spectrogram")  # name hints of log-mel features
MIN_SPATIAL = 8
MIN_FIXED_SAMPLES = 8000  # a rank-2 float input this long (0.5 s at 16 kHz) is a waveform even without a name hint


@dataclass(frozen=True)
class ModelData:
    """What kind of data a model's inputs take: `kind` is "text", "image", "audio" or "random"; `name` the input
    the data set fills (the others get `fill`'s values), `layout` NCHW/NHWC (images) or wave/features (audio)."""

    kind: str
    name: str | None = None
    layout: str | None = None


def model_folder(art: Artifact) -> Path | None:
    """The folder whose Hugging Face files (preprocessor_config.json, config.json, tokenizer) describe the model:
    the HF folder it was loaded from, or the folder of a model file (exports such as optimum's keep them beside
    the .onnx); None for zoo and in-memory models."""
    for key in ("hf_folder", "source"):
        v = art.meta.get(key)
        if not isinstance(v, str) or not v or v.startswith(("zoo:", "module:")):
            continue
        p = Path(v)
        try:
            if p.is_dir():
                return p
            if p.is_file():
                return p.parent
        except OSError:
            continue
    return None


def tokenizer_path(art: Artifact) -> str | None:
    """The model's tokenizer: the one its loader recorded, else one beside an ONNX file that takes `input_ids`."""
    if art.meta.get("tokenizer") is not None:
        return str(art.meta["tokenizer"])
    folder = model_folder(art)
    if folder is None or "input_ids" not in art.input_spec.names:
        return None
    return str(folder) if any((folder / f).is_file() for f in TOKENIZER_FILES) else None


def _is_float(t: TensorSpec) -> bool:
    return t.dtype.startswith("float") or t.dtype == "bfloat16"


def image_layout(t: TensorSpec) -> str | None:
    """"NCHW" or "NHWC" when `t` is a picture (float, rank 4, 1 or 3 channels, sides >= 8 or dynamic), else None."""
    if not _is_float(t) or len(t.shape) != 4:
        return None
    s = t.shape

    def side(d: int | str) -> bool:
        return isinstance(d, str) or d >= MIN_SPATIAL

    if isinstance(s[1], int) and s[1] in (1, 3) and side(s[2]) and side(s[3]):
        return "NCHW"
    if isinstance(s[3], int) and s[3] in (1, 3) and side(s[1]) and side(s[2]):
        return "NHWC"
    if isinstance(s[1], str) and side(s[2]) and side(s[3]):
        return "NCHW"  # channels dynamic: the usual layout of exported vision models
    return None


def audio_layout(t: TensorSpec) -> str | None:
    """"wave" for a waveform (float [batch, samples]: a waveform name, a dynamic length or >= 0.5 s fixed),
    "features" for log-mel features (float [batch, bins, frames] named like input_features), else None."""
    if not _is_float(t):
        return None
    name = t.name.lower()
    if len(t.shape) == 2:
        d = t.shape[1]
        if any(h in name for h in AUDIO_NAMES) or isinstance(d, str) or d >= MIN_FIXED_SAMPLES:
            return "wave"
    if len(t.shape) == 3 and any(h in name for h in FEATURE_NAMES):
        return "features"
    return None


def model_data(art: Artifact) -> ModelData:
    """The data a model's inputs call for: text (a tokenizer), an image input, an audio input, else random."""
    if tokenizer_path(art) is not None:
        return ModelData("text")
    for t in art.input_spec.inputs:
        layout = image_layout(t)
        if layout:
            return ModelData("image", t.name, layout)
    for t in art.input_spec.inputs:
        layout = audio_layout(t)
        if layout:
            return ModelData("audio", t.name, layout)
    return ModelData("random")


def effective_spec(spec: str | None, art: Artifact, default_slice: slice, count: int | None = None) -> str:
    """The data spec `resolve` uses: `spec`, or for None the model's own data (the digits splits for the digits
    zoo models, generated sentences for a model with a tokenizer, bundled pictures for an image input,
    synthesized speech for an audio input) and random inputs for any other model."""
    if spec is not None:
        return spec
    if art.meta.get("dataset") == "digits":
        return "zoo:digits"  # calibration: the train split, eval: the test split
    rng = f"[{default_slice.start or ''}:{default_slice.stop or ''}]"
    kind = model_data(art).kind
    if kind == "text":
        return f"zoo:sentences{rng}"
    if kind == "image":
        return f"zoo:images{rng}"
    if kind == "audio":
        return f"zoo:speech{rng}"
    return f"random:{count or 16}"


def _batches(main: dict[str, np.ndarray], art: Artifact, batch: int, seed: int, vocab: int) -> list[Feed]:
    """Feeds of `batch` samples of the arrays in `main` (first axis = samples; the last short batch dropped),
    the model's other inputs filled by `fill`, their named dims taken from the main inputs' shapes."""
    dims: dict[str, int] = {"batch": batch}
    for t in art.input_spec.inputs:
        arr = main.get(t.name)
        if arr is not None:
            dims.update({d: a for d, a in zip(t.shape[1:], arr.shape[1:]) if isinstance(d, str)})
            if t.shape and isinstance(t.shape[0], str):
                dims[t.shape[0]] = batch
    rng = np.random.default_rng(seed)
    n = min(len(a) for a in main.values())
    feeds = []
    for i in range(0, n - batch + 1, batch):
        feed: Feed = {}
        for t in art.input_spec.inputs:
            arr = main.get(t.name)
            if arr is not None:
                feed[t.name] = np.ascontiguousarray(arr[i:i + batch]).astype(t.dtype, copy=False)
            else:
                feed[t.name] = fill(t, t.concrete(dims), rng, vocab)
        feeds.append(feed)
    return feeds


def _fixed(d: int | str, default: int) -> int:
    return d if isinstance(d, int) else int(default)


@dataclass(frozen=True)
class ImagePlan:
    """How zoo:images fills a model's image input: its name, layout, size and the preprocessor's settings."""

    name: str
    layout: str
    channels: int
    height: int
    width: int
    settings: dict[str, Any]


def image_plan(art: Artifact) -> ImagePlan | None:
    """The pictures a model's image input takes (fixed dims as they are; dynamic ones from its folder's
    preprocessor or config, else 224×224 and 3 channels); None without an image input."""
    md = model_data(art)
    if md.kind != "image" or md.name is None or md.layout is None:
        return None
    t = next(x for x in art.input_spec.inputs if x.name == md.name)
    st = images.preprocessor(model_folder(art))
    h0, w0 = st.get("size", (images.DEFAULT_SIZE, images.DEFAULT_SIZE))
    if md.layout == "NCHW":
        c, h, w = _fixed(t.shape[1], st.get("channels", 3)), _fixed(t.shape[2], h0), _fixed(t.shape[3], w0)
    else:
        h, w, c = _fixed(t.shape[1], h0), _fixed(t.shape[2], w0), _fixed(t.shape[3], st.get("channels", 3))
    return ImagePlan(t.name, md.layout, c, h, w, st)


def image_feeds(rest: str, art: Artifact, batch: int, default_slice: slice, seed: int, what: str) -> list[Feed]:
    """`zoo:images<rest>` as feeds of the model's image input: sized and normalized as its folder's
    preprocessor says (else 224×224, ImageNet's mean/std), its other inputs filled."""
    plan = image_plan(art)
    if plan is None:
        raise InputError(f"{what}: zoo:images is pictures, but the model has no image input "
                         "(a float input of rank 4 with 1 or 3 channels)")
    try:
        x = images.samples(rest, default_slice, plan.height, plan.width, plan.channels, plan.settings, plan.layout)
    except ValueError as e:
        raise InputError(f"{what}: {e}") from None
    t = next(x for x in art.input_spec.inputs if x.name == plan.name)
    return _batches({t.name: x}, art, _fixed(t.shape[0], batch), seed, int(art.meta.get("vocab_size") or 100))


@dataclass(frozen=True)
class SpeechPlan:
    """How zoo:speech fills a model's audio input: waveform length, or mel bins × frames, and the extractor."""

    name: str
    layout: str  # "wave" or "features"
    sampling_rate: int
    n_samples: int  # the audio behind one sample
    bins: int | None
    frames: int | None
    folder: Path | None
    extractor: str | None  # the folder's feature extractor type, None: raw waveform or edgeopt's log-mel


def speech_plan(art: Artifact) -> SpeechPlan | None:
    """The audio a model's audio input takes: a waveform of its fixed length (else the loader's, else 1 s), or
    log-mel features of its bins × frames (dynamic: the folder's settings, else Whisper's 80 × 3000)."""
    md = model_data(art)
    if md.kind != "audio" or md.name is None:
        return None
    t = next(x for x in art.input_spec.inputs if x.name == md.name)
    folder = model_folder(art)
    st = speech.audio_settings(folder)
    sr = int(st.get("sampling_rate") or speech.SAMPLE_RATE)
    fe_type = st.get("feature_extractor_type") if isinstance(st.get("feature_extractor_type"), str) else None
    if md.layout == "wave":
        n = _fixed(t.shape[1], art.meta.get("audio_samples") or speech.DEFAULT_SECONDS * sr)
        return SpeechPlan(t.name, "wave", sr, n, None, None, folder, fe_type)
    bins = _fixed(t.shape[1], st.get("num_mel_bins") or st.get("feature_size") or 80)
    frames = _fixed(t.shape[2], st.get("nb_max_frames") or 2 * int(st.get("max_source_positions") or 1500))
    hop = int(st.get("hop_length") or 160)
    return SpeechPlan(t.name, "features", sr, frames * hop, bins, frames, folder, fe_type)


def speech_feeds(rest: str, art: Artifact, batch: int, default_slice: slice, seed: int, what: str) -> list[Feed]:
    """`zoo:speech<rest>` as feeds of the model's audio input: through its folder's feature extractor when it has
    one, else raw 16 kHz waveforms (or Whisper-style log-mel features for a features input)."""
    plan = speech_plan(art)
    if plan is None:
        raise InputError(f"{what}: zoo:speech is audio, but the model has no audio input "
                         "(a float waveform [batch, samples] or log-mel input_features)")
    try:
        sl = images.parse_slice(rest, default_slice, "zoo:speech")
    except ValueError as e:
        raise InputError(f"{what}: {e}") from None
    x = speech.waves(range(speech.N_UTTERANCES)[sl], plan.n_samples, plan.sampling_rate)
    fe = speech.feature_extractor(plan.folder) if plan.extractor else None
    main: dict[str, np.ndarray] = {}
    if fe is not None:
        try:
            out = speech.extract(fe, x, plan.n_samples)
        except Exception as e:  # a feature extractor that refuses these settings: say which, in one line
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise InputError(f"{what}: the model's feature extractor ({plan.extractor}) failed on zoo:speech "
                             f"({e.__class__.__name__}: {first})") from None
        for t in art.input_spec.inputs:
            arr = out.get(t.name)
            if arr is not None:
                if arr.ndim == 3 and len(t.shape) == 3 and isinstance(t.shape[2], int):
                    arr = speech.fit_frames(arr, t.shape[2])
                main[t.name] = arr
    if plan.name not in main:  # no extractor, or one whose outputs carry other names
        main[plan.name] = x if plan.layout == "wave" else speech.log_mel(x, plan.bins or 80, plan.frames or 3000,
                                                                          plan.sampling_rate)
    t = next(x for x in art.input_spec.inputs if x.name == plan.name)
    return _batches(main, art, _fixed(t.shape[0], batch), seed, int(art.meta.get("vocab_size") or 100))


def describe(spec: str, art: Artifact) -> str:
    """One line saying what data a spec (as `effective_spec` gives it) feeds this model, for the ledger and
    the report: which data set, at what size, normalized or featurized how."""
    if spec.startswith("zoo:images"):
        p = image_plan(art)
        if p is None:
            return spec
        st = p.settings
        norm = ("not normalized (the model's preprocessor says so)" if st.get("do_normalize") is False else
                "normalized with the model's preprocessor mean/std" if st.get("image_mean") else
                "normalized with ImageNet's mean/std")
        return (f"{spec}: scikit-learn's digits tiled into pictures, {p.channels}×{p.height}×{p.width} "
                f"({p.layout}), {norm}")
    if spec.startswith("zoo:speech"):
        p = speech_plan(art)
        if p is None:
            return spec
        src = "spoken by espeak-ng" if speech.espeak_available() else "synthesized speech-like audio"
        how = (f"through the model's {p.extractor}" if p.extractor else
               "as raw waveforms" if p.layout == "wave" else f"as log-mel features ({p.bins}×{p.frames})")
        return f"{spec}: {src}, {p.n_samples / p.sampling_rate:g} s at {p.sampling_rate} Hz, {how}"
    if spec.startswith("zoo:sentences"):
        return f"{spec}: generated English sentences, tokenized by the model's tokenizer"
    if spec.startswith("zoo:digits"):
        return f"{spec}: scikit-learn's digits (labelled)"
    if spec.startswith("random:"):
        return f"{spec}: random inputs (fidelity on random inputs says little about real data)"
    return f"{spec}: the user's data"


def resolve(spec: str | None, art: Artifact, *, seq_len: int, batch: int, role: str,
            default_slice: slice, count: int | None = None) -> list[Feed]:
    """Feeds for `role` ("calibration" or "eval") from a data spec; None means the model's default data
    (`effective_spec`).

    Forms: `zoo:sentences[a:b]` or a `.txt` file (one sentence a line; models with a tokenizer),
    `zoo:images[a:b]` (models with an image input), `zoo:speech[a:b]` (audio input), `zoo:digits[...]`, an
    `.npz` file with one array per input, or `random:N`.
    """
    what = f"{role} data"
    tok = tokenizer_path(art)
    names = art.input_spec.names
    dims = {"batch": batch, "sequence": seq_len}
    for t in art.input_spec.inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, str) and d not in dims:
                dims[d] = batch if i == 0 else seq_len
    text_len = seq_len
    ids = next((t for t in art.input_spec.inputs if t.name == "input_ids"), None)
    if ids is not None and len(ids.shape) == 2 and isinstance(ids.shape[1], int):
        text_len = ids.shape[1]  # a model exported at a fixed length takes exactly that many tokens
    seed = 0 if role == "calibration" else 1
    spec = effective_spec(spec, art, default_slice, count)
    if spec.startswith("zoo:digits"):
        try:
            x, y = digits.samples(spec[len("zoo:digits"):], role)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None
        feeds = labelled_feeds(x, y, names[0], batch)
    elif spec.startswith("zoo:sentences"):
        if tok is None:
            raise InputError(f"{what}: zoo:sentences is text, but the model has no tokenizer")
        try:
            texts = sentences.split(spec[len("zoo:sentences"):], default_slice)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None
        feeds = tokenize(texts, tok, text_len, batch, names)
    elif spec.startswith("zoo:images"):
        feeds = image_feeds(spec[len("zoo:images"):], art, batch, default_slice, seed, what)
    elif spec.startswith("zoo:speech"):
        feeds = speech_feeds(spec[len("zoo:speech"):], art, batch, default_slice, seed, what)
    elif spec.startswith("random:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(f"{what}: expected random:N, got {spec!r}") from None
        feeds = random_feeds(art.input_spec, n, dims, seed=seed, vocab=int(art.meta.get("vocab_size") or 100))
    else:
        p = Path(spec)
        if not p.exists():
            raise InputError(f"{what}: {p}: no such file")
        if p.suffix == ".npz":
            feeds = load_npz(p, art.input_spec, batch)
        elif p.suffix == ".txt":
            if tok is None:
                raise InputError(f"{what}: {p} holds sentences, but the model has no tokenizer")
            try:
                texts = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            except UnicodeDecodeError:
                raise InputError(f"{what}: {p}: not a UTF-8 text file") from None
            feeds = tokenize(texts, tok, text_len, batch, names)
        else:
            raise InputError(f"{what}: {p}: unsupported data file (expected .npz or .txt)")
    if count is not None:
        feeds = feeds[:count]
    check_feeds(feeds, art.input_spec, what)
    return feeds


def to_torch_args(feed: Feed, names: list[str]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
