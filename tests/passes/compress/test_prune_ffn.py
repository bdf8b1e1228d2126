"""prune.ffn: blocks found (BERT, fc1/fc2), widths and rounding, OBS compensation beats plain removal, the
sensitivity allocation, rebuild for resume, ONNX export, recovery, and the one-shot result on a tiny BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import interrupt_run, run_onnx, spy_runs

from edgeopt.artifact import get_builder
from edgeopt.errors import PassError, RecipeError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.compress import padding
from edgeopt.passes.compress import prune_ffn as pf
from edgeopt.train import TensorData


def _padded_feeds(n: int, seq: int = 16, vocab: int = 120, seed: int = 3) -> list[dict[str, np.ndarray]]:
    """Text-like feeds: random ids, right padding of random length (as tokenized sentences are)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        length = int(rng.integers(4, seq + 1))
        ids = np.zeros((1, seq), np.int64)
        ids[0, :length] = rng.integers(1, vocab, length)
        mask = (ids != 0).astype(np.int64)
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return feeds


@pytest.fixture()
def bert_ctx(tmp_path):
    return PassContext(stage_dir=tmp_path / "stage", calibration=_padded_feeds(64))


def _cos(a, b) -> float:
    return float(F.cosine_similarity(a, b, dim=1).mean())


def test_blocks_of_bert_and_fc_pairs(tiny_bert_torch):
    blocks = pf.find_ffn(tiny_bert_torch.module)
    assert [b.down for b in blocks] == [f"encoder.encoder.layer.{i}.output.dense" for i in range(2)]
    assert all(b.width == 64 and b.residual_parent.endswith(".output") for b in blocks)

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up_proj, self.gate_proj, self.down_proj = torch.nn.Linear(8, 24), torch.nn.Linear(8, 24), torch.nn.Linear(24, 8)

    model = torch.nn.ModuleDict({"a": Mlp(), "b": Gated()})
    found = {b.down: b for b in pf.find_ffn(model)}
    assert found["a.fc2"].ups == ["a.fc1"] and found["a.fc2"].residual_parent is None
    assert found["b.down_proj"].ups == ["b.up_proj", "b.gate_proj"]
    pf.set_neurons(model, found["b.down_proj"], [0, 3, 5])
    assert model["b"].gate_proj.out_features == model["b"].up_proj.out_features == model["b"].down_proj.in_features == 3


def test_width_rounding_and_allocation():
    assert pf.round_width(300.0, 1536, 32) == 288 and pf.round_width(5.0, 1536, 32) == 32 and pf.round_width(40, 40, 64) == 40
    full = [100, 100, 100, 100]
    assert pf.allocate(full, 0.5, None, 0.8) == [0.5] * 4
    spars = pf.allocate(full, 0.5, [1.0, 2.0, 4.0, 8.0], 0.8)
    assert abs(sum(spars) / 4 - 0.5) < 1e-9, "the neuron-weighted mean is the asked sparsity"
    assert spars == sorted(spars, reverse=True), "the least sensitive block loses most"
    capped = pf.allocate(full, 0.5, [1e-6, 1.0, 1.0, 1.0], 0.6)
    assert max(capped) <= 0.6 + 1e-12 and abs(sum(capped) / 4 - 0.5) < 1e-9


def test_half_the_neurons_of_bert(tiny_bert_torch, bert_ctx):
    state = {k: v.clone() for k, v in tiny_bert_torch.module.state_dict().items()}
    out = build_pass("prune.ffn", {"sparsity": 0.5, "round_to": 8})(tiny_bert_torch, bert_ctx)
    notes = bert_ctx.notes["prune.ffn"]
    assert notes["total"] == 128 and notes["kept"] == 64 and notes["sparsity"] == 0.5
    assert notes["allocation"] == "sensitivity" and len(notes["sensitivity"]) == 2 and notes["refitted"] == 2
    for layer, w in zip(out.module.encoder.encoder.layer, notes["widths"].values()):
        assert w % 8 == 0 and layer.intermediate.dense.out_features == layer.output.dense.in_features == w
    assert out.meta["ffn"] == {"total": 128, "kept": 64, "sparsity": 0.5}
    assert notes["params_after"] < notes["params_before"]
    assert all(torch.equal(tiny_bert_torch.module.state_dict()[k], v) for k, v in state.items()), "input untouched"


def test_zero_sparsity_is_the_identity(tiny_bert_torch, bert_ctx):
    out = build_pass("prune.ffn", {"sparsity": 0.0})(tiny_bert_torch, bert_ctx)
    ids = tiny_bert_torch.meta["example_inputs"]
    with torch.no_grad():
        assert torch.equal(out.module(**ids), tiny_bert_torch.module(**ids))


def test_obs_compensation_beats_plain_removal(tiny_bert_torch, tmp_path):
    """On held-out inputs, OBS (+ refit) keeps the output closer to the unpruned model than magnitude pruning."""
    feeds = _padded_feeds(128, seed=7)
    held_out = _padded_feeds(32, seed=11)
    names = tiny_bert_torch.input_spec.names
    x = tuple(torch.from_numpy(np.concatenate([f[n] for f in held_out])) for n in names)
    with torch.no_grad():
        ref = tiny_bert_torch.module(*x)
    got = {}
    for key, cfg in {"obs": {}, "obs-norefit": {"refit": False},
                     "magnitude": {"importance": "magnitude", "refit": False}}.items():
        ctx = PassContext(stage_dir=tmp_path / key, calibration=feeds)
        out = build_pass("prune.ffn", {"sparsity": 0.75, "round_to": 8, "allocation": "uniform", **cfg})(tiny_bert_torch, ctx)
        with torch.no_grad():
            got[key] = _cos(out.module(*x), ref)
    assert got["obs"] > got["magnitude"] and got["obs-norefit"] > got["magnitude"], got
    assert got["obs"] > 0.95, got


def test_rebuild_restores_the_architecture(tiny_bert_torch, bert_ctx):
    out = build_pass("prune.ffn", {"sparsity": 0.5, "round_to": 8})(tiny_bert_torch, bert_ctx)
    builder, args = out.rebuild["builder"], out.rebuild["args"]
    assert builder == "prune.ffn"
    rebuilt = get_builder(builder)(tiny_bert_torch, args, None)
    rebuilt.load_state_dict(out.module.state_dict(), strict=True)
    ids = tiny_bert_torch.meta["example_inputs"]
    with torch.no_grad():
        assert torch.equal(rebuilt(**ids), out.module(**ids))
    with pytest.raises(ValueError, match="no feed-forward block"):
        get_builder(builder)(tiny_bert_torch, {"widths": {"nope.dense": 8}}, None)


def test_pruned_bert_exports_to_onnx(tiny_bert_torch, bert_ctx, tmp_path):
    out = build_pass("prune.ffn", {"sparsity": 0.5, "round_to": 8})(tiny_bert_torch, bert_ctx)
    onnx_art = build_pass("convert.onnx", {})(out, PassContext(stage_dir=tmp_path / "onnx"))
    feeds = _padded_feeds(2, seed=1)
    got = run_onnx(onnx_art.path, feeds)
    with torch.no_grad():
        want = [out.module(*(torch.from_numpy(f[n]) for n in onnx_art.input_spec.names)).numpy() for f in feeds]
    assert all(abs(g - w).max() < 1e-4 for g, w in zip(got, want))


def test_recovery_distills_from_the_input(tiny_bert_torch, bert_ctx):
    build_pass("prune.ffn", {"sparsity": 0.75, "round_to": 8, "recover": "distill",
                             "train": {"epochs": 2, "lr": 1e-3, "batch_size": 8}})(tiny_bert_torch, bert_ctx)
    notes = bert_ctx.notes["prune.ffn"]
    assert notes["fit"]["steps"] > 0 and notes["hidden_pairs"] == 2
    assert notes["score"] >= notes["score_before_recovery"], "fit keeps the best-scoring weights"


def test_cut_batches_give_the_same_outputs(tiny_bert_torch):
    """The padding cut that calibration and training rely on does not change a masked encoder's outputs."""
    feeds = _padded_feeds(20, seed=5)
    names = tiny_bert_torch.input_spec.names
    data = TensorData(tuple(torch.from_numpy(np.concatenate([f[n] for f in feeds])) for n in names))
    mask_at = padding.mask_index(names)
    with torch.no_grad():
        full = tiny_bert_torch.module(*data.inputs)
    assert torch.allclose(padding.predict(tiny_bert_torch.module, data, mask_at, batch_size=4), full, atol=1e-5)
    lengths = []
    bucketed = padding.BucketedData(data.inputs, None, mask_at=mask_at)
    seen = 0
    for xs, _ in bucketed.batches(4, torch.Generator().manual_seed(0)):
        lengths.append(xs[0].shape[1])
        assert int(xs[mask_at][:, -1].max()) == 1, "cut to the longest sequence of the batch"
        seen += xs[0].shape[0]
    assert seen == 20 and min(lengths) < 16


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="sparsity"):
        build_pass("prune.ffn", {"sparsity": 1.0})
    with pytest.raises(RecipeError, match="importance"):
        build_pass("prune.ffn", {"importance": "random"})
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten()).eval()
    from edgeopt.load import load_model

    art = load_model(conv, {"x": torch.randn(1, 1, 8, 8)})
    with pytest.raises(PassError, match="no feed-forward block"):
        build_pass("prune.ffn", {})(art, PassContext(stage_dir=tmp_path))


def test_structural_chain_resumes_its_torch_stages(tiny_bert_torch, tmp_path, monkeypatch):
    """prune.heads (obs) → prune.ffn → convert.onnx, interrupted at the export: on --resume both torch stages are
    rebuilt from their saved weights (not pruned again) and compute what they computed before; the fused ONNX of
    the head-pruned model loads (graph.fuse gets the new head count from the meta)."""
    from helpers import record_reused

    from edgeopt.passes.compress.prune_ffn import PruneFFN
    from edgeopt.passes.compress.prune_heads import PruneHeads
    from edgeopt.passes.convert.onnx import ConvertOnnx
    from edgeopt.pipeline import optimize, stage_artifact

    recipe = {"data": {"calibration": "random:32", "eval": "random:6"},
              "passes": [{"prune.heads": {"stage": "heads", "sparsity": 0.5, "importance": "obs", "recover": "none"}},
                         {"prune.ffn": {"stage": "ffn", "sparsity": 0.5, "round_to": 8}},
                         {"convert.onnx": {"stage": "onnx"}}, {"graph.fuse": {"stage": "fused"}}],
              "measure": {"threads": 1, "seq_len": 16, "warmup": 0, "runs": 3, "memory": False, "energy": False},
              "gates": {"min_cosine": 0.0}}
    out = tmp_path / "run"
    made, calls = {}, {"prune.heads": 0, "prune.ffn": 0}

    spy_runs(monkeypatch, (PruneHeads, PruneFFN), calls, made)
    interrupt_run(monkeypatch, ConvertOnnx)
    with pytest.raises(KeyboardInterrupt):
        optimize(tiny_bert_torch, recipe=recipe, out=out, progress=False)
    assert calls == {"prune.heads": 1, "prune.ffn": 1}
    assert made["prune.heads"].meta["num_heads"] == 2 and made["prune.heads"].meta["hidden_size"] == 16

    monkeypatch.undo()
    spy_runs(monkeypatch, (PruneHeads, PruneFFN), calls, made)
    calls.update({"prune.heads": 0, "prune.ffn": 0})
    before = dict(made)
    reused = record_reused(monkeypatch)
    res = optimize(tiny_bert_torch, recipe=recipe, out=out, resume=True, progress=False)
    assert calls == {"prune.heads": 0, "prune.ffn": 0}, "finished torch stages were pruned again"
    stages = {s.name: s for s in res.ledger.stages}
    assert stages["heads"].notes.get("cached") and stages["ffn"].notes.get("cached")
    ids = tiny_bert_torch.meta["example_inputs"]
    with torch.no_grad():
        for stage, name in (("heads", "prune.heads"), ("ffn", "prune.ffn")):
            assert reused[stage].sha256 == before[name].sha256
            assert torch.equal(reused[stage].module(**ids), before[name].module(**ids))
    assert stages["fused"].status == "done" and stages["fused"].fidelity["mean_cosine"] > 0.5
    assert stages["fused"].notes["fuse"]["ort_transformer"] == "bert"
    assert stages["fused"].notes["fusions"].get("ort.Attention") == 2, "2-head attention fused"
    fused = stage_artifact(stages["fused"])
    feeds = _padded_feeds(3, seed=2)
    with torch.no_grad():
        want = [reused["ffn"].module(*(torch.from_numpy(f[n]) for n in fused.input_spec.names)).numpy() for f in feeds]
    # with the unpruned head count (4) in the meta the fused attention splits 16 columns into 4 heads: 1e-5 off
    assert max(float(abs(g - w).max()) for g, w in zip(run_onnx(fused.path, feeds), want)) < 2e-6
