"""`-r auto` on a spread of architectures with no data given: tiny random-weight transformers models (vision, text,
audio), saved as Hugging Face folders or exported to ONNX files, run to the end with the right data chosen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgeopt.data import describe, effective_spec
from edgeopt.load import load_model
from edgeopt.pipeline import optimize
from edgeopt.recipe import load_recipe

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<|endoftext|>"]
FAMILIES = ("ort-fp32", "ort-int8-dynamic", "ort-int8-static")  # static INT8 calibrates on the chosen data


def _quick_auto() -> dict[str, Any]:
    """The auto recipe with a small search (the ONNX Runtime fp32, dynamic and static INT8 families, one trial
    each) and a short measurement: what these tests check is the data and that every step runs, not the timing."""
    r = load_recipe("auto").to_dict()
    r["measure"] = {**r.get("measure", {}), "runs": 3, "warmup": 0, "block": 2, "settle": 1, "pause_ms": 0,
                    "memory": False, "energy": False, "fidelity_samples": 4, "seq_len": 16, "torch_latency": False}
    r["search"] = {**(r.get("search") or {}), "families": list(FAMILIES), "trials": len(FAMILIES), "runs": 6}
    return r


def _save_tokenizer(folder: Path, *, decoder: bool = False) -> int:
    """A word-level tokenizer over the words of zoo:sentences, saved as tokenizer.json (offline); its size.
    `decoder`: GPT-2 style, no padding token (edgeopt pads with the end-of-text token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from edgeopt.zoo.sentences import sentences

    words = sorted({w for s in sentences() for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if decoder:
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>")
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]")
    tok.save_pretrained(str(folder))
    return len(vocab)


def _config(arch: str, vocab: int) -> Any:
    import transformers as T

    return {
        "vit": lambda: T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64),
        "resnet": lambda: T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
        "convnext": lambda: T.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
        "distilbert": lambda: T.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                 max_position_embeddings=64),
        "bert": lambda: T.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64),
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=4, eos_token_id=4),
        "wav2vec2": lambda: T.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(10, 8, 4),
                                             conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16,
                                             num_conv_pos_embedding_groups=4, vocab_size=32),
        "whisper": lambda: T.WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2,
                                           encoder_attention_heads=4, decoder_layers=1, decoder_attention_heads=4,
                                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=50,
                                           max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                                           decoder_start_token_id=3),
    }[arch]()


TEXT = {"distilbert", "bert", "gpt2"}
PREPROCESSORS = {  # what the model's folder says about its inputs (as a hub model's preprocessor_config.json does)
    "resnet": {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 64}},
    "convnext": {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 64}},
    "vit": {"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "size": {"height": 32, "width": 32}, "do_normalize": True},
    "wav2vec2": {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
                 "padding_value": 0.0, "do_normalize": True, "return_attention_mask": False},
    "whisper": {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000,
                "hop_length": 160, "chunk_length": 1, "n_fft": 400, "n_samples": 16000, "nb_max_frames": 100},
}


def hf_folder(arch: str, root: Path) -> Path:
    """A tiny random-weight `arch` saved as a Hugging Face folder (config, safetensors, tokenizer or preprocessor)."""
    import torch
    from transformers import AutoModel

    folder = root / arch
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _save_tokenizer(folder, decoder=arch == "gpt2") if arch in TEXT else 0
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(arch, vocab)).eval()
    with torch.no_grad():  # trained models' biases differ; all-zero ones are folded into one shared initializer
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(folder), safe_serialization=True)
    if arch in PREPROCESSORS:
        (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSORS[arch]))
    return folder


def onnx_file(arch: str, root: Path, with_files: bool = False) -> Path:
    """`arch`'s HF folder exported by edgeopt's convert.onnx (opset 17) to a bare .onnx file, or (`with_files`)
    to a folder holding the HF folder's config, tokenizer and preprocessor files too (as optimum exports)."""
    import shutil

    from edgeopt.passes.base import PassContext, build_pass

    src = hf_folder(arch, root / "hf")
    art = load_model(src, seq_len=16)
    out = build_pass("convert.onnx", {})(art, PassContext(stage_dir=root / "export"))
    dst = root / ("exported" if with_files else "bare") / f"{arch}.onnx"
    dst.parent.mkdir(parents=True)
    Path(out.path).replace(dst)
    if with_files:
        for f in src.iterdir():
            if f.suffix == ".json" or f.name == "vocab.txt":
                shutil.copy(f, dst.parent / f.name)
    return dst


def _run(model: Path, out: Path):
    res = optimize(str(model), recipe=_quick_auto(), out=out, progress=False)
    led = res.ledger
    base = led.stage("baseline")
    return led, base, any("random inputs" in w for w in base.warnings)


def make(arch: str, saved: str, root: Path) -> Path:
    """`arch` saved as "hf" (a Hugging Face folder), "onnx" (a bare .onnx file) or "onnx+files" (an .onnx file
    with the folder's config, tokenizer and preprocessor files beside it)."""
    if saved == "hf":
        return hf_folder(arch, root / "hf")
    return onnx_file(arch, root, with_files=saved == "onnx+files")


# (arch, saved as, the data auto picks): one case per way the data is chosen and fed (each runs the whole auto
# recipe); the fast ones run by default, the heavier ones are marked slow
CASES = [
    pytest.param("resnet", "onnx", "zoo:images", id="resnet-onnx"),
    pytest.param("vit", "hf", "zoo:images", id="vit-hf"),
    pytest.param("distilbert", "onnx+files", "zoo:sentences", id="distilbert-onnx-with-tokenizer"),
    pytest.param("bert", "onnx", "random", id="bert-onnx-no-tokenizer"),
    pytest.param("wav2vec2", "hf", "zoo:speech", id="wav2vec2-hf"),
    pytest.param("convnext", "hf", "zoo:images", id="convnext-hf", marks=pytest.mark.slow),
    pytest.param("gpt2", "hf", "zoo:sentences", id="gpt2-hf", marks=pytest.mark.slow),
    pytest.param("whisper", "onnx+files", "zoo:speech", id="whisper-encoder-onnx-with-extractor",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,saved,data", CASES)
def test_auto_recipe_runs_with_the_right_data(tmp_path, arch, saved, data):
    model = make(arch, saved, tmp_path)
    art = load_model(str(model), seq_len=16)
    spec = effective_spec(None, art, slice(64, 320))
    assert spec.startswith(data)
    if arch in PREPROCESSORS and data == "zoo:images":
        assert "the model's preprocessor" in describe(spec, art) or "ImageNet" in describe(spec, art)
    led, base, random_note = _run(model, tmp_path / "run")
    assert random_note == (data == "random")  # the ledger says so only where no data fits the model
    trials = (led.search or {}).get("trials", [])
    assert sorted(t["family"] for t in trials) == sorted(FAMILIES)  # simplify, fuse, dynamic and static INT8 ran
    assert [(t["family"], t["error"]) for t in trials if t["status"] != "done"] == []
    assert [(s.name, s.error) for s in led.stages if s.status != "done"] == []
    assert led.stages[0].name == "baseline" and len(led.stages) >= 2 and all(s.fidelity for s in led.stages)
