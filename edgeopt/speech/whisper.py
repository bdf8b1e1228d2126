"""Whisper on each runtime: ONNX export of encoder and decoder-with-past, one greedy transcription loop, WER and RTF.

The export is two graphs with fixed, explicit signatures:
- `encoder.onnx`: input_features (B, mels, 3000) -> cross_k, cross_v (layers, B, heads, 1500, head_dim), the
  cross-attention keys and values every decoder step reads (computed once per utterance, as whisper.cpp and
  sherpa-onnx split it);
- `decoder.onnx`: input_ids (B, n), self_k, self_v (layers, B, heads, past, head_dim; past may be 0), cross_k,
  cross_v -> logits of the last token (B, vocab), new self_k, self_v (past + n). One graph serves the prompt
  (n = 2, past = 0) and every later token (n = 1).
The decoder step is written by hand over the Hugging Face model's own submodules (embeddings, projections,
layer norms, fc1/fc2): transformers' cache objects do not trace to a graph with explicit past tensors, and
numerical equivalence with `WhisperForConditionalGeneration` is checked in the tests.

Runners share one protocol: `encode(features) -> state`, `step(ids, state) -> (logits, state)`. `TorchWhisper`
is the untouched Hugging Face model in eager PyTorch with its own KV cache (the baseline); `OrtWhisper` and
`OvWhisper` run the exported graphs, `MixedWhisper` one component on each. `transcribe` runs the same greedy loop (Whisper's suppress lists, no
timestamps) on any runner and records encoder and per-token decoder latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeopt.errors import InputError

SAMPLE_RATE = 16000
MAX_NEW_TOKENS = 120


def load_whisper(folder: str | Path) -> tuple[Any, Any, Any]:
    """(model, tokenizer, feature extractor) of a local HF Whisper folder (safetensors only)."""
    import warnings

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    f = Path(folder)
    if not (f / "config.json").is_file():
        raise InputError(f"{f}: not a Whisper folder (no config.json)")
    if not any(p.suffix == ".safetensors" for p in f.iterdir()):
        raise InputError(f"{f}: no .safetensors weights (pickled .bin weights are refused: they can run code)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = WhisperForConditionalGeneration.from_pretrained(str(f), local_files_only=True,
                                                                    use_safetensors=True,
                                                                    attn_implementation="eager").eval()
            tok = WhisperTokenizerFast.from_pretrained(str(f), local_files_only=True)
            fe = WhisperFeatureExtractor.from_pretrained(str(f), local_files_only=True)
    except Exception as e:
        raise InputError(f"{f}: cannot load Whisper: {(str(e).strip().splitlines() or [''])[0][:200]}") from None
    return model, tok, fe


def load_processing(folder: str | Path) -> tuple[Any, Any]:
    """(tokenizer, feature extractor) of a local Whisper folder, without its weights."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    try:
        return (WhisperTokenizerFast.from_pretrained(str(folder), local_files_only=True),
                WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True))
    except Exception as e:
        raise InputError(f"{folder}: cannot load Whisper's tokenizer or feature extractor: "
                         f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None


@dataclass(frozen=True)
class Tokens:
    """Whisper's special tokens and suppress lists for greedy English transcription without timestamps."""

    prompt: tuple[int, ...]
    eot: int
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]

    @staticmethod
    def of(model: Any) -> "Tokens":
        g, c = model.generation_config, model.config
        sot = int(getattr(g, "decoder_start_token_id", None) or c.decoder_start_token_id)
        prompt = [sot]
        if getattr(g, "is_multilingual", False):  # <|en|> <|transcribe|>
            lang = (getattr(g, "lang_to_id", None) or {}).get("<|en|>", sot + 1)
            task = (getattr(g, "task_to_id", None) or {}).get("transcribe", sot + 101)
            prompt += [int(lang), int(task)]
        nots = getattr(g, "no_timestamps_token_id", None)
        prompt.append(int(nots) if nots is not None else sot + 105)
        eot = int(getattr(g, "eos_token_id", None) or c.eos_token_id)
        # every timestamp token (after <|notimestamps|>) is suppressed too: the loop transcribes text only
        ts = range(prompt[-1] + 1, int(c.vocab_size))
        suppress = tuple(sorted(set(int(t) for t in (getattr(g, "suppress_tokens", None) or [])) | set(ts)))
        begin = tuple(int(t) for t in (getattr(g, "begin_suppress_tokens", None) or [220, eot]))
        return Tokens(tuple(prompt), eot, suppress, begin)


def tokens_from_folder(folder: str | Path) -> Tokens:
    """`Tokens` from a Whisper folder's config and generation config, without loading the weights."""
    from types import SimpleNamespace

    from transformers import GenerationConfig, WhisperConfig

    try:
        cfg = SimpleNamespace(config=WhisperConfig.from_pretrained(str(folder)),
                              generation_config=GenerationConfig.from_pretrained(str(folder)))
    except Exception as e:
        raise InputError(f"{folder}: cannot read Whisper's config: {(str(e).strip().splitlines() or [''])[0][:200]}"
                         ) from None
    return Tokens.of(cfg)


def features(fe: Any, waves: list[np.ndarray]) -> np.ndarray:
    """Log-mel input features (B, mels, 3000) of 16 kHz waveforms, padded to Whisper's 30 s window."""
    for i, w in enumerate(waves):
        if len(w) == 0:
            raise InputError(f"utterance {i}: empty audio")
        if len(w) > 30 * SAMPLE_RATE:
            raise InputError(f"utterance {i}: {len(w) / SAMPLE_RATE:.1f} s is longer than Whisper's 30 s window")
    return fe(waves, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features.astype(np.float32)


class Runner(Protocol):
    name: str

    def encode(self, feats: np.ndarray) -> Any: ...

    def step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]: ...


@dataclass
class Transcript:
    """One utterance's greedy transcription and its timings."""

    text: str
    tokens: list[int]
    encoder_ms: float
    step_ms: list[float] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return self.encoder_ms + sum(self.step_ms)


def transcribe(runner: Runner, feats: np.ndarray, tokens: Tokens, tokenizer: Any,
               max_new_tokens: int = MAX_NEW_TOKENS) -> Transcript:
    """Greedy transcription of one utterance's features (1, mels, frames) on `runner`, with timings."""
    t0 = time.perf_counter()
    state = runner.encode(feats)
    enc_ms = (time.perf_counter() - t0) * 1e3
    ids = np.array([tokens.prompt], dtype=np.int64)
    out: list[int] = []
    steps: list[float] = []
    suppress = np.array(tokens.suppress, dtype=np.int64)
    for i in range(max_new_tokens):
        t0 = time.perf_counter()
        logits, state = runner.step(ids, state)
        steps.append((time.perf_counter() - t0) * 1e3)
        scores = np.array(logits[0], dtype=np.float32, copy=True)
        scores[suppress[suppress < scores.shape[0]]] = -np.inf
        if i == 0:
            scores[list(tokens.begin_suppress)] = -np.inf
        nxt = int(scores.argmax())
        if nxt == tokens.eot:
            break
        out.append(nxt)
        ids = np.array([[nxt]], dtype=np.int64)
    return Transcript(tokenizer.decode(out, skip_special_tokens=True).strip(), out, enc_ms, steps)


def normalize(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), single spaces: the text WER is computed on."""
    import re

    t = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(t.split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate (jiwer) of `hypotheses` against `references` after `normalize`; 0 for identical lists."""
    import jiwer

    if len(references) != len(hypotheses):
        raise InputError(f"WER: {len(references)} references but {len(hypotheses)} transcripts")
    refs = [normalize(r) or "<empty>" for r in references]
    hyps = [normalize(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


# --- runners -------------------------------------------------------------------------------------------------


class TorchWhisper:
    """The untouched Hugging Face model in eager PyTorch (its encoder, its decoder with its own KV cache)."""

    def __init__(self, model: Any, threads: int = 2, name: str = "pytorch"):
        self.model, self.threads, self.name = model.eval(), threads, name

    def encode(self, feats: np.ndarray) -> Any:
        import torch

        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            enc = self.model.model.encoder(torch.from_numpy(feats)).last_hidden_state
        return {"enc": enc, "cache": None}

    def step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        import torch
        from transformers import DynamicCache, EncoderDecoderCache

        cache = state["cache"]
        if cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        with torch.inference_mode():
            out = self.model(encoder_outputs=(state["enc"],), decoder_input_ids=torch.from_numpy(ids),
                             cache=cache, use_cache=True)
        return out.logits[:, -1].numpy(), {"enc": state["enc"], "cache": out.cache}


def _encoder_class():
    import torch

    class WhisperCrossKV(torch.nn.Module):
        """Whisper's encoder followed by every decoder layer's cross-attention key and value projections."""

        def __init__(self, model: Any):
            super().__init__()
            self.encoder = model.model.encoder
            self.layers = model.model.decoder.layers
            c = model.config
            self.heads, self.head_dim = c.decoder_attention_heads, c.d_model // c.decoder_attention_heads

        def forward(self, input_features):
            h = self.encoder(input_features).last_hidden_state
            b, s, _ = h.shape
            ks, vs = [], []
            for layer in self.layers:
                att = layer.encoder_attn
                ks.append(att.k_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2))
                vs.append(att.v_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2))
            return torch.stack(ks), torch.stack(vs)

    return WhisperCrossKV


def _decoder_class():
    import torch

    class WhisperDecoderStep(torch.nn.Module):
        """One decoder call with explicit past self-attention keys/values and precomputed cross keys/values.

        Written by hand over the HF modules' weights (see the module docstring): q is scaled before the product
        as Whisper does, a causal mask covers the new tokens, positions continue from the past length."""

        def __init__(self, model: Any):
            super().__init__()
            d = model.model.decoder
            self.embed_tokens, self.embed_positions, self.layers = d.embed_tokens, d.embed_positions, d.layers
            self.layer_norm, self.proj_out = d.layer_norm, model.proj_out
            c = model.config
            self.heads, self.head_dim = c.decoder_attention_heads, c.d_model // c.decoder_attention_heads
            self.scale = self.head_dim ** -0.5

        def _heads(self, x):
            b, n, _ = x.shape
            return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        def forward(self, input_ids, self_k, self_v, cross_k, cross_v):
            b, n = input_ids.shape
            past = self_k.shape[3]
            pos = torch.arange(n, device=input_ids.device) + past
            h = self.embed_tokens(input_ids) + self.embed_positions.weight[pos]
            # causal over the new tokens: new token i sees every past token and new tokens j <= i
            col = torch.arange(past + n, device=input_ids.device)
            mask = torch.where(col[None, :] <= (pos[:, None]), 0.0, float("-inf"))
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                r = layer.self_attn_layer_norm(h)
                att = layer.self_attn
                q = self._heads(att.q_proj(r) * self.scale)
                k = torch.cat([self_k[i], self._heads(att.k_proj(r))], dim=2)
                v = torch.cat([self_v[i], self._heads(att.v_proj(r))], dim=2)
                new_k.append(k)
                new_v.append(v)
                w = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
                h = h + att.out_proj((w @ v).transpose(1, 2).reshape(b, n, -1))
                r = layer.encoder_attn_layer_norm(h)
                xa = layer.encoder_attn
                q = self._heads(xa.q_proj(r) * self.scale)
                w = torch.softmax(q @ cross_k[i].transpose(-1, -2), dim=-1)
                h = h + xa.out_proj((w @ cross_v[i]).transpose(1, 2).reshape(b, n, -1))
                r = layer.final_layer_norm(h)
                h = h + layer.fc2(layer.activation_fn(layer.fc1(r)))
            logits = self.proj_out(self.layer_norm(h[:, -1]))
            return logits, torch.stack(new_k), torch.stack(new_v)

    return WhisperDecoderStep


def export_onnx(model: Any, out: str | Path, opset: int = 17) -> dict[str, Path]:
    """`encoder.onnx` and `decoder.onnx` (see the module docstring) in folder `out`, each written atomically."""
    import os
    import tempfile
    import warnings

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    layers, heads = c.decoder_layers, c.decoder_attention_heads
    hd = c.d_model // heads
    frames = 2 * c.max_source_positions
    enc = _encoder_class()(model).eval()
    dec = _decoder_class()(model).eval()
    feats = torch.zeros(1, c.num_mel_bins, frames)
    with torch.inference_mode():
        ck, cv = enc(feats)
    past = torch.zeros(layers, 1, heads, 3, hd)
    jobs = {
        "encoder": (enc, (feats,), ["input_features"], ["cross_k", "cross_v"],
                    {"input_features": {0: "batch"}, "cross_k": {1: "batch"}, "cross_v": {1: "batch"}}),
        "decoder": (dec, (torch.tensor([[c.decoder_start_token_id, c.decoder_start_token_id]]), past, past, ck, cv),
                    ["input_ids", "self_k", "self_v", "cross_k", "cross_v"], ["logits", "new_self_k", "new_self_v"],
                    {"input_ids": {0: "batch", 1: "tokens"}, "self_k": {1: "batch", 3: "past"},
                     "self_v": {1: "batch", 3: "past"}, "cross_k": {1: "batch"}, "cross_v": {1: "batch"},
                     "logits": {0: "batch"}, "new_self_k": {1: "batch", 3: "total"},
                     "new_self_v": {1: "batch", 3: "total"}}),
    }
    paths = {}
    for name, (mod, args, ins, outs, dyn) in jobs.items():
        dst = out / f"{name}.onnx"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".onnx", dir=out)
        os.close(fd)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(mod, args, tmp, input_names=ins, output_names=outs, dynamic_axes=dyn,
                                  opset_version=opset, dynamo=False, do_constant_folding=True)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths[name] = dst
    return paths


def _empty_cache(dims: tuple[int, int, int], batch: int) -> np.ndarray:
    layers, heads, head_dim = dims
    return np.zeros((layers, batch, heads, 0, head_dim), np.float32)


class _GraphRunner:
    """What the runners of exported graphs share: the state after the encoder (cross K/V, an empty self cache)."""

    dims: tuple[int, int, int]  # the decoder's layers, heads, head_dim

    def cross(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode(self, feats: np.ndarray) -> Any:
        ck, cv = self.cross(feats)
        empty = _empty_cache(self.dims, feats.shape[0])
        return {"cross_k": ck, "cross_v": cv, "self_k": empty, "self_v": empty}


class OrtWhisper(_GraphRunner):
    """The exported encoder and decoder on ONNX Runtime (CPU, `threads` intra-op threads). Either graph may be None
    when another runner serves that component (`MixedWhisper`)."""

    def __init__(self, encoder: str | Path | None, decoder: str | Path | None, threads: int = 2, name: str = "ort"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3
        self.name = name
        self.enc = self.dec = None
        try:
            if encoder is not None:
                self.enc = ort.InferenceSession(str(encoder), so, providers=["CPUExecutionProvider"])
            if decoder is not None:
                self.dec = ort.InferenceSession(str(decoder), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InputError(f"{encoder or decoder}: ONNX Runtime cannot load the Whisper graphs: "
                             f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
        if self.dec is not None:
            shp = self.dec.get_inputs()[1].shape
            self.dims = tuple(int(d) if isinstance(d, int) else 0 for d in (shp[0], shp[2], shp[4]))

    def cross(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ck, cv = self.enc.run(None, {"input_features": feats})
        return ck, cv

    def step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        logits, k, v = self.dec.run(None, {"input_ids": ids, **state})
        return logits, {**state, "self_k": k, "self_v": v}


class OvWhisper(_GraphRunner):
    """The exported encoder and decoder on OpenVINO (CPU, `threads` inference threads, latency hint; `hint` the
    inference precision). Either graph may be None when another runner serves that component (`MixedWhisper`)."""

    def __init__(self, encoder: str | Path | None, decoder: str | Path | None, threads: int = 2,
                 name: str = "openvino", hint: str | None = None):
        import openvino as ov

        core = ov.Core()
        cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if hint:
            cfg["INFERENCE_PRECISION_HINT"] = hint
        self.name = name
        self.enc = self.dec = None
        if encoder is not None:
            self.enc = core.compile_model(str(encoder), "CPU", cfg).create_infer_request()
        if decoder is not None:
            dec_model = core.read_model(str(decoder))
            shp = dec_model.input("self_k").get_partial_shape()
            self.dims = (shp[0].get_length(), shp[2].get_length(), shp[4].get_length())
            self.dec = core.compile_model(dec_model, "CPU", cfg).create_infer_request()

    def cross(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.enc.infer({"input_features": feats})
        ck, cv = (np.array(t) for t in r.values())
        return ck, cv

    def step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        r = self.dec.infer({"input_ids": ids, **state})
        logits, k, v = (np.array(t) for t in r.values())
        return logits, {**state, "self_k": k, "self_v": v}


class MixedWhisper(_GraphRunner):
    """The encoder on one runtime and the decoder on another (e.g. OpenVINO bf16 encoder, ONNX Runtime fp32
    decoder): the cross keys/values pass between them as plain arrays."""

    def __init__(self, encoder: OrtWhisper | OvWhisper, decoder: OrtWhisper | OvWhisper, name: str = "mixed"):
        self.encoder, self.decoder, self.name = encoder, decoder, name
        self.dims = decoder.dims

    def cross(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.cross(feats)

    def step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self.decoder.step(ids, state)


def resolve_folder(model: str | Path) -> Path:
    """A Whisper model argument as an HF folder: zoo:whisper-tiny-en, an HF folder, or a CTranslate2 folder (converted
    once into the edgeopt cache, keyed by its path and model.bin's size and time)."""
    from edgeopt.zoo.whisper import ct2_to_hf, whisper_folder

    if str(model) == "zoo:whisper-tiny-en":
        return whisper_folder()
    p = Path(model)
    if not p.is_dir():
        raise InputError(f"{p}: no such Whisper folder (give zoo:whisper-tiny-en, a Hugging Face Whisper folder or "
                         "a CTranslate2 one)")
    if (p / "config.json").is_file() and any(f.suffix == ".safetensors" for f in p.iterdir()):
        return p
    if (p / "model.bin").is_file() or (p / "vocabulary.txt").is_file() or (p / "vocabulary.json").is_file():
        import hashlib

        from edgeopt.zoo.llm import cache_root

        st = (p / "model.bin").stat() if (p / "model.bin").is_file() else None
        if st is None:
            raise InputError(f"{p}: a CTranslate2 folder without model.bin")
        key = hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        dst = cache_root() / f"whisper-ct2-{key}"
        return dst if (dst / "config.json").is_file() else ct2_to_hf(p, dst)
    raise InputError(f"{p}: neither a Hugging Face Whisper folder (config.json + safetensors) nor a CTranslate2 one "
                     "(model.bin)")


def transcribe_files(files: list[str | Path], model: str | Path = "zoo:whisper-tiny-en",
                     onnx_dir: str | Path | None = None, threads: int = 2) -> list[dict[str, Any]]:
    """Transcribe WAV files (any rate, mono or stereo: converted with a note) with PyTorch, or with the exported
    graphs in `onnx_dir` (encoder.onnx and decoder.onnx, e.g. a stage folder of `edgeopt demo whisper`)."""
    from edgeopt.speech.audio import read_wav

    if not files:
        raise InputError("no audio files given")
    waves = [read_wav(f) for f in files]  # every file checked before any model loads
    folder = resolve_folder(model)
    if onnx_dir is not None:
        d = Path(onnx_dir)
        enc, dec = _stage_graph(d, "encoder"), _stage_graph(d, "decoder")
        tok, fe = load_processing(folder)
        runner: Any = OrtWhisper(enc, dec, threads=threads)
        tokens = tokens_from_folder(folder)
    else:
        model_, tok, fe = load_whisper(folder)
        runner, tokens = TorchWhisper(model_, threads=threads), Tokens.of(model_)
    out = []
    for f, (x, notes) in zip(files, waves):
        if len(x) > 30 * SAMPLE_RATE:
            notes = [*notes, f"{f}: {len(x) / SAMPLE_RATE:.1f} s; only the first 30 s are transcribed"]
            x = x[: 30 * SAMPLE_RATE]
        t = transcribe(runner, features(fe, [x]), tokens, tok)
        out.append({"file": str(f), "text": t.text, "notes": notes, "audio_s": len(x) / SAMPLE_RATE,
                    "seconds": t.total_ms / 1e3, "rtf": t.total_ms / 1e3 / max(len(x) / SAMPLE_RATE, 1e-9)})
    return out


def _stage_graph(d: Path, comp: str) -> Path:
    for cand in (d / f"{comp}.onnx", d / comp / "model.onnx"):
        if cand.is_file():
            return cand
    raise InputError(f"{d}: no {comp}.onnx (nor {comp}/model.onnx) here")
