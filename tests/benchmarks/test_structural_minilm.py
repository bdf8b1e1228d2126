"""benchmarks/structural_minilm.py: every variant is a chain of valid pass configs on the generated sentences."""

from __future__ import annotations

from pathlib import Path

from edgeopt.passes.base import build_pass


def test_every_variant_is_a_chain_of_valid_pass_configs(load_benchmark):
    sm = load_benchmark("structural_minilm")
    for variant, chain in sm.CHAINS.items():
        resolved = sm.resolve(chain, Path("train.txt"))
        assert resolved[0][0] == "prune.ffn" and resolved[0][1]["data"] == "train.txt", variant
        for name, cfg in resolved:
            build_pass(name, cfg)  # raises on an invalid config
    assert [n for n, _ in sm.CHAINS["ffn60-distill2"]] == ["prune.ffn", "distill"]
    assert sm.CHAINS["ffn60-distill2"][1][1]["train"]["epochs"] == 2 and "limit" not in sm.CHAINS["ffn60-distill2"][1][1]
    assert sm.CHAINS["ffn60-distill"][1][1]["limit"] == 1000
