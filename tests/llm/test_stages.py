"""edgeopt.llm.stages through the pipeline: an LLM recipe exports, quantizes and measures every stage."""

from __future__ import annotations

import json

import pytest

from edgeopt.ledger import SCHEMA_VERSION, Ledger

RECIPE = {
    "model": {"source": "zoo:tinyllama-mini"},
    "passes": [
        # one prefill length (the 12-token prompt's); every signature takes seconds to convert
        {"convert.litert_llm": {"stage": "litert", "prefill_lens": [16], "kv_cache_max_len": 48, "score_len": 24}},
        # GPTQ-ed weights swapped into the fp32 export (the baseline is the run's model)
        {"quantize.litert_llm": {"from": "litert", "stage": "litert-int8", "variant": "dynamic_int8", "gptq": True,
                                 "gptq_sequences": 2}},
        {"quantize.litert_llm": {"from": "litert", "stage": "litert-int4", "variant": "dynamic_int4_block32"}},
    ],
    "measure": {"threads": 1, "energy": False,
                "llm": {"prompt_tokens": 12, "decode_tokens": 8, "repeats": 2, "sequences": 3, "seq_len": 20}},
    "gates": {"min_top1_agreement": 0.9},
}


@pytest.mark.slow
def test_llm_recipe_measures_every_stage(tmp_path):
    from edgeopt.pipeline import optimize

    res = optimize(None, recipe=RECIPE, out=tmp_path / "run", progress=False)
    led = Ledger.load(tmp_path / "run")
    assert led.schema_version == SCHEMA_VERSION and [s.name for s in led.stages] == ["baseline", "litert", "litert-int8",
                                                                         "litert-int4"]
    for s in led.stages:
        assert s.llm is not None and s.latency_ms is not None and s.latency_ms.n == 16  # 8 tokens x 2 repeats
        for key in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "top1_agreement", "kl", "ppl", "bandwidth_pct"):
            assert s.llm[key] is not None, (s.name, key)
        assert s.llm["prompt_tokens"] == 12
    base, fp32 = led.stages[0], led.stages[1]
    assert base.llm["runtime"] == "torch" and "LiteRT" in fp32.llm["runtime"]
    assert fp32.fidelity["top1_agreement"] == 1.0 and fp32.gate.passed  # fp32 export = the model
    assert led.stages[2].artifact["size_bytes"] < 0.4 * fp32.artifact["size_bytes"]
    int8 = json.loads((tmp_path / "run" / "litert-int8" / "llm.json").read_text())
    assert int8["gptq_export"]["method"] == "swap" and int8["gptq"]["gptq_output_error"] < int8["gptq"]["rtn_output_error"]
    # random weights built in code: no folder for a child, so timed in this process and no peak RSS for the baseline
    assert base.llm["timed_in"] == "this process, interleaved" and fp32.peak_rss_mb is not None
    assert led.best in {"litert", "litert-int8", "litert-int4"} and led.stage(led.best).gate.passed
    assert (res.best / "llm.json").is_file() and (res.best / "model.tflite").is_file()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "LLM" in md and "decode" in md
    # resume reuses every stage and measures again
    again = optimize(None, recipe=RECIPE, out=tmp_path / "run", progress=False, resume=True)
    assert json.loads((tmp_path / "run" / "ledger.json").read_text())["stages"][1]["cache_key"] == fp32.cache_key
    assert again.failed == {}
