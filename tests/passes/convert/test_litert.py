"""convert.litert: .tflite files that match PyTorch (fp32 to 1e-4 relative), keep input names, quantize through the
LiteRT quantizer, export several signatures, and fail with one line naming what torch.export / litert-torch
cannot handle."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.analyze.tflite import op_census, tflite_info
from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import PassError, RecipeError
from edgeopt.load import load_model
from edgeopt.measure.fidelity import cosine_rows
from edgeopt.measure.litert import LiteRtRunner
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.convert._export import relative_error

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 1.5)
    return m


class TokenMLP(nn.Module):
    """Transformer-ish: token ids (int64) -> embedding -> Linear/GELU -> LayerNorm -> Linear, masked by a float mask."""

    def __init__(self, vocab: int = 50, width: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 8)

    def forward(self, input_ids, mask):
        h = self.emb(input_ids)
        h = self.norm(h + self.down(nn.functional.gelu(self.up(h))))
        return self.head(h) * mask.unsqueeze(-1)


def _images(n: int, batch: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _tokens(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 50, (batch, seq)).astype(np.int64),
            "mask": (rng.random((batch, seq)) > 0.2).astype(np.float32)}


def _torch(art, feed):
    with torch.no_grad():
        out = art.module(*(torch.from_numpy(feed[n]) for n in art.input_spec.names))
    return [out.numpy()]


def _convert(art, stage, config, calibration=(), batch=2, seq_len=8):
    ctx = PassContext(stage_dir=stage, calibration=list(calibration), evaluation=list(calibration)[:2],
                      measure=SimpleNamespace(batch=batch, seq_len=seq_len, threads=1))
    return build_pass("convert.litert", config)(art, ctx), ctx


@pytest.fixture(scope="module")
def cnn():
    return load_model(_cnn(), {"x": torch.randn(2, 3, 16, 16)})


@pytest.fixture(scope="module")
def cnn_fp32(cnn, tmp_path_factory):
    return _convert(cnn, tmp_path_factory.mktemp("litert_fp32"), {}, _images(4, 2, 1))


@pytest.fixture(scope="module")
def tokens_art():
    torch.manual_seed(0)
    spec = InputSpec((TensorSpec("input_ids", "int64", ("batch", "sequence")),
                      TensorSpec("mask", "float32", ("batch", "sequence"))))
    return Artifact.from_module(TokenMLP().eval(), spec)


def test_fp32_equals_torch_and_is_a_conv_graph(cnn, cnn_fp32, tmp_path):
    out, ctx = cnn_fp32
    assert out.kind == "tflite" and out.path.name == "model.tflite" and out.path.stat().st_size == out.size_bytes
    assert out.input_spec == cnn.input_spec
    assert [p.name for p in out.path.parent.iterdir()] == ["model.tflite"], "nothing else left in the stage"
    census = op_census(out.path)
    assert census["CONV_2D"] == 2 and census["FULLY_CONNECTED"] == 1, census
    assert out.meta["litert"]["quantize"] == "none" and out.meta["litert"]["signature"] is None
    notes = ctx.notes["litert"]
    assert notes["validation"]["max_rel_error"] <= 1e-4 and notes["ops"] == census
    assert notes["versions"]["litert-torch"] and "CONV_2D" in notes["census"]
    info = tflite_info(out.path)
    assert [t["name"] for t in info["inputs"]] == ["x"] and info["inputs"][0]["shape"] == [2, 3, 16, 16]
    with LiteRtRunner(out.path, 1) as runner:
        for feed in _images(3, 2, 7) + _images(1, 5, 8):  # batch 5 runs in chunks of the traced batch 2
            got, want = runner.run(feed), _torch(cnn, feed)
            assert got[0].shape == want[0].shape and relative_error(want, got) <= 1e-4


def test_transformer_mlp_keeps_names_ints_and_layernorm(tokens_art, tmp_path):
    """Two signatures traced at their own shapes, int64 token ids (stored as int32), input names kept."""
    sigs = [{"name": "short", "seq_len": 4}, {"name": "long", "seq_len": 16, "batch": 2}]
    out, ctx = _convert(tokens_art, tmp_path, {"signatures": sigs}, batch=1)
    info = tflite_info(out.path)
    assert list(info["signatures"]) == ["short", "long"]
    assert [t["name"] for t in info["signatures"]["long"]["inputs"]] == ["input_ids", "mask"]
    assert info["signatures"]["long"]["inputs"][0] == {"name": "input_ids", "dtype": "int32", "shape": [2, 16]}
    assert out.meta["litert"]["signature"] == "short" and out.meta["litert"]["signatures"] == ["short", "long"]
    assert ctx.notes["litert"]["validation"]["n"] >= 2
    census = op_census(out.path, signature="long")
    assert census["FULLY_CONNECTED"] == 3 and "GELU" in census, census
    assert op_census(out.path)["FULLY_CONNECTED"] == 6, "one subgraph per signature"
    for sig, (b, s) in {"short": (1, 4), "long": (2, 16)}.items():
        with LiteRtRunner(out.path, 1, signature=sig) as runner:
            feed = _tokens(b, s, 3)
            assert relative_error(_torch(tokens_art, feed), runner.run(feed)) <= 1e-4


def test_dynamic_int8_shrinks_and_keeps_cosine(tokens_art, tmp_path):
    q, ctx = _convert(tokens_art, tmp_path, {"quantize": "dynamic_int8"})
    assert q.size_bytes < 0.5 * tokens_art.size_bytes, (q.size_bytes, tokens_art.size_bytes)  # fp32 params' bytes
    assert tflite_info(q.path)["int8_weights"] >= 3
    assert ctx.notes["litert"]["quantizer"] == "dynamic_wi8_afp32"
    with LiteRtRunner(q.path, 1) as runner:
        feed = _tokens(2, 8, 11)
        assert cosine_rows(_torch(tokens_art, feed)[0], runner.run(feed)[0]).min() >= 0.99


def test_a_quantized_export_below_its_cosine_floor_is_refused_unless_the_floor_is_lowered(tokens_art, tmp_path):
    with pytest.raises(PassError, match="set min_cosine to keep it"):
        _convert(tokens_art, tmp_path / "strict", {"quantize": "dynamic_int8", "min_cosine": 1.0})
    assert not (tmp_path / "strict" / "model.tflite").exists(), "a refused model is not left behind"
    q, ctx = _convert(tokens_art, tmp_path / "kept", {"quantize": "dynamic_int8", "min_cosine": 0.0})
    assert q.path.exists() and ctx.notes["litert"]["validation"]["min_cosine"] < 1.0


@pytest.mark.parametrize("quantize, dtype", [("fp16", "float16"), ("weight_only_int8", "int8")])
def test_weight_only_variants_store_small_weights(tokens_art, tmp_path, quantize, dtype):
    out, ctx = _convert(tokens_art, tmp_path, {"quantize": quantize})
    census, info = op_census(out.path), tflite_info(out.path)
    assert census["DEQUANTIZE"] >= 3 and info["weight_dtypes"].get(dtype, 0) >= 3, (census, info["weight_dtypes"])
    assert ctx.notes["litert"]["validation"]["min_cosine"] >= 0.99


def test_static_int8_is_int8_throughout(cnn, tmp_path):
    out, ctx = _convert(cnn, tmp_path, {"quantize": "static_int8", "samples": 8}, _images(8, 2, 2))
    info = tflite_info(out.path)
    assert info["inputs"][0]["dtype"] == "int8" and info["outputs"][0]["dtype"] == "int8"
    assert info["weight_dtypes"].get("float32", 0) == 0 and info["int8_weights"] >= 3, info["weight_dtypes"]
    assert out.input_spec == cnn.input_spec, "the artifact still takes float images: the runner quantizes them"
    with LiteRtRunner(out.path, 1) as runner:
        feed = _images(1, 2, 9)[0]
        got = runner.run(feed)[0]
        assert got.dtype == np.float32 and cosine_rows(_torch(cnn, feed)[0], got).min() >= 0.95


def test_composite_lowering_keeps_group_norm_whole(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 4, 1)).eval()
    art = load_model(m, {"x": torch.randn(2, 3, 16, 16)})
    out, ctx = _convert(art, tmp_path, {"composite_lowering": True}, _images(2, 2, 4))
    census = op_census(out.path)
    assert census.get("STABLEHLO_COMPOSITE:odml.group_norm") == 1, census
    assert ctx.notes["litert"]["validation"]["max_rel_error"] <= 1e-4
    assert "ENABLE_GROUP_NORM_COMPOSITE" not in os.environ, "the switch is set for one conversion only"


def test_static_int8_without_fitting_calibration_fails_before_converting(cnn, tmp_path):
    with pytest.raises(PassError, match="static_int8 needs calibration feeds shaped like"):
        _convert(cnn, tmp_path, {"quantize": "static_int8"}, [{"x": np.zeros((2, 3, 8, 8), np.float32)}])
    assert not (tmp_path / "model.tflite").exists()


def test_unknown_quantize_is_refused_by_the_config():
    with pytest.raises(RecipeError, match="quantize"):
        build_pass("convert.litert", {"quantize": "int3"})
    with pytest.raises(RecipeError, match="appears twice"):
        build_pass("convert.litert", {"signatures": [{"name": "a"}, {"name": "a"}]})


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return y * 2
        return y - 1


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.pre(x))


class CumMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.cummax(self.fc(x), 1)[0]  # no LiteRT lowering for aten.cummax


def test_untraceable_module_is_one_line_naming_the_part(tmp_path, capfd):
    art = load_model(Gated().eval(), {"x": torch.randn(2, 8)})
    with pytest.raises(PassError) as e:
        _convert(art, tmp_path, {})
    msg = str(e.value)
    assert "\n" not in msg and "torch.export cannot trace" in msg and "data-dependent" in msg, msg
    assert "gate (Gate.forward)" in msg and "if y.sum() > 0" in msg, msg
    assert not (tmp_path / "model.tflite").exists()
    assert "def forward" not in capfd.readouterr().err, "torch's partial graph dump is not shown"


def test_unlowerable_op_is_named(tmp_path):
    art = load_model(CumMax().eval(), {"x": torch.randn(2, 8)})
    with pytest.raises(PassError, match=r"cannot lower op aten\.cummax\.default \(in CumMax\.forward") as e:
        _convert(art, tmp_path, {})
    assert "\n" not in str(e.value)
    assert not (tmp_path / "model.tflite").exists()


def test_weights_that_are_transposed_views_convert_exactly(tiny_bert_torch, tmp_path):
    """litert-torch exported a BERT whose Linear weights were strided views (w.T of a contiguous tensor) with the
    wrong layout (3 % off here, 80 % on MiniLM): the pass converts contiguous copies, and leaves the input as it was."""
    import copy

    from edgeopt.artifact import Artifact

    module = copy.deepcopy(tiny_bert_torch.module).eval()
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    for lin in linears:
        lin.weight.data = lin.weight.data.T.contiguous().T  # same values, transposed strides
    art = Artifact.from_module(module, tiny_bert_torch.input_spec, meta=dict(tiny_bert_torch.meta))
    out, ctx = _convert(art, tmp_path, {}, batch=1, seq_len=16)
    assert ctx.notes["litert"]["validation"]["max_rel_error"] <= 1e-4
    assert op_census(out.path)["FULLY_CONNECTED"] >= len(linears) - 1  # the pooler may be pruned away
    assert not any(lin.weight.is_contiguous() for lin in linears), "the input module is not modified"


def test_smooth_moves_an_outlier_channel_into_the_weights_before_dynamic_int8(tiny_bert_torch, tmp_path):
    """SmoothQuant (smooth: 0.5): query / key / value get one explicit scale (a MUL in front of each), the export
    still matches its PyTorch model, and with an outlier channel in their input the int8 model is closer to fp32."""
    import copy

    from edgeopt.artifact import Artifact
    from edgeopt.data import random_feeds

    module = copy.deepcopy(tiny_bert_torch.module).eval()
    ln = next(m for n, m in module.named_modules() if n.endswith("embeddings.LayerNorm"))
    with torch.no_grad():
        ln.weight[3] = 40.0
    art = Artifact.from_module(module, tiny_bert_torch.input_spec, meta=dict(tiny_bert_torch.meta))
    feeds = random_feeds(art.input_spec, 12, {"batch": 1, "sequence": 16}, seed=1, vocab=120)
    held = random_feeds(art.input_spec, 8, {"batch": 1, "sequence": 16}, seed=5, vocab=120)
    out = {}
    for smooth in (None, 0.5):
        cfg = {"quantize": "dynamic_int8", "min_cosine": 0.5, **({"smooth": smooth} if smooth else {})}
        out[smooth], ctx = _convert(art, tmp_path / str(smooth), cfg, calibration=feeds, batch=1, seq_len=16)
    notes = out[0.5].meta["litert"]["smooth"]
    assert (notes["groups"], notes["linears"], notes["samples"]) == (2, 6, 12)
    assert out[None].meta["litert"]["smooth"] is None
    plain, smoothed = op_census(out[None].path), op_census(out[0.5].path)
    assert smoothed["FULLY_CONNECTED"] == plain["FULLY_CONNECTED"] and smoothed["MUL"] > plain.get("MUL", 0)

    def worst(path):
        with LiteRtRunner(path, 1) as runner:
            got = [runner.run(f)[0] for f in held]
        want = [_torch(art, f)[0] for f in held]
        return min(float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(want, got))

    assert worst(out[0.5].path) > worst(out[None].path)


def test_smooth_needs_an_int8_variant_and_calibration_data(tiny_bert_torch, tmp_path):
    with pytest.raises(PassError, match="smooth applies to the int8 variants") as e:
        _convert(tiny_bert_torch, tmp_path / "a", {"smooth": 0.5}, batch=1, seq_len=16)
    assert "\n" not in str(e.value) and not (tmp_path / "a" / "model.tflite").exists()
    with pytest.raises(PassError, match="smooth needs calibration feeds"):
        _convert(tiny_bert_torch, tmp_path / "b", {"quantize": "dynamic_int8", "smooth": 0.5}, batch=1, seq_len=16)


@pytest.mark.slow
def test_zoo_digits_cnn_fp32(tmp_path):
    art = load_model("zoo:digits-cnn", batch=1)
    out, ctx = _convert(art, tmp_path, {}, batch=1)
    census = op_census(out.path)
    assert census["CONV_2D"] >= 10 and census["DEPTHWISE_CONV_2D"] >= 10, census
    assert ctx.notes["litert"]["validation"]["max_rel_error"] <= 1e-4
    feed = {"image": np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)}
    with LiteRtRunner(out.path, 2) as runner:
        assert relative_error(_torch(art, feed), runner.run(feed)) <= 1e-4
