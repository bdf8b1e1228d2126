"""The pipeline's measurement of LLM stages: one session per stage (PyTorch fp32 baseline, LiteRT exports),
fidelity against the baseline, probe answers, interleaved TTFT / prefill / decode timing, bandwidth share and
peak RSS, written into each Stage's `llm`, `fidelity`, `gate` and `latency_ms` (per generated token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeopt.errors import EdgeoptError
from edgeopt.ledger import Gate, Latency, Stage
from edgeopt.llm import measure as lm
from edgeopt.llm.reauthor import hf_shape
from edgeopt.measure import fidelity as fid
from edgeopt.measure.latency import LatencyStats

TaskFn = Callable[[str, int], Callable[[], None]]


def is_llm(art: Any) -> bool:
    """A causal-LM artifact: the torch baseline (meta task) or an exported LLM .tflite (meta llm)."""
    return art.meta.get("task") == "causal-lm"


def _baseline_session(art: Any, threads: int, max_cache: int) -> Any:
    from edgeopt.llm.torch_session import TorchLlm

    return TorchLlm(art.module.lm, threads=threads, max_cache=max_cache, name="torch")


def _tokenizer(art: Any) -> Any:
    tok = art.meta.get("tokenizer")
    if not tok:
        return None
    from edgeopt.llm.generate import load_tokenizer

    return load_tokenizer(Path(tok))


def _reload_source(art: Any) -> str | None:
    """Where a child can reload the baseline from: a Hugging Face folder (zoo:smollm2-135m's cached one)."""
    src = str(art.meta.get("source") or "")
    if src == "zoo:smollm2-135m":
        from edgeopt.zoo.llm import smollm2_folder

        return str(smollm2_folder())
    return src if src and Path(src).is_dir() else None


def measure_llm_stages(stages: list[tuple[Stage, Any]], spec: Any, gates: Any, threads: int, task: TaskFn,
                       environment: dict[str, Any]) -> dict[str, tuple[float, ...]]:
    """Measure every LLM stage of `stages` (the first is the baseline) per `spec` (recipe measure.llm); returns
    the per-token decode samples by stage name (the pipeline's choice of the best stage compares them)."""
    base_stage, base_art = stages[0]
    tok = _tokenizer(base_art)
    vocab = int(base_art.meta.get("vocab_size") or 32000)
    sessions: dict[str, Any] = {}
    measured: list[tuple[Stage, Any]] = []
    kv = max([int(a.meta["llm"]["kv_cache_max_len"]) for _, a in stages[1:] if a.meta.get("llm")] or [2048])
    try:
        sessions[base_stage.name] = _baseline_session(base_art, threads, kv)
        measured.append((base_stage, base_art))
        for stage, art in stages[1:]:
            if stage.status != "done":
                continue
            if art.kind == "tflite" and art.meta.get("llm"):
                from edgeopt.llm.litert_session import LiteRtLlm

                sessions[stage.name] = LiteRtLlm(art.path, threads=threads)
                measured.append((stage, art))
            else:
                stage.notes["not_measured"] = (f"a {art.kind} LLM stage: LLM stages are measured on LiteRT exports "
                                               "(convert.litert_llm) and the PyTorch baseline")
        return _measure(sessions, measured, tok, vocab, spec, gates, threads, task, environment, base_art)
    finally:
        for s in sessions.values():
            s.close()


def _measure(sessions: dict[str, Any], measured: list[tuple[Stage, Any]], tok: Any, vocab: int, spec: Any,
             gates: Any, threads: int, task: TaskFn, environment: dict[str, Any],
             base_art: Any) -> dict[str, tuple[float, ...]]:
    base = measured[0][0].name
    seqs = lm.heldout_sequences(tok, spec.sequences, spec.seq_len, vocab)
    cands = {n: s for n, s in sessions.items() if n != base}
    figures = lm.fidelity(sessions[base], cands, seqs, advance=task("LLM fidelity (teacher-forced)", len(seqs)))
    by_name = {s.name: (s, a) for s, a in measured}
    ppl_ref = next(iter(figures.values()))["ppl_ref"] if figures else None
    for name, (stage, art) in by_name.items():
        f = figures.get(name) or {"top1_agreement": 1.0, "kl": 0.0, "ppl": ppl_ref, "ppl_ref": ppl_ref,
                                  "positions": len(seqs) * (spec.seq_len - 1)}
        if f["ppl"] is None:  # the baseline alone: its own perplexity
            acc = lm.FidelityAccumulator()
            for ids in seqs[: min(8, len(seqs))]:
                logits = sessions[name].score(ids)
                acc.add(logits, logits, ids)
            f = {**f, "ppl": acc.result()["ppl"], "ppl_ref": acc.result()["ppl"]}
        stage.fidelity = {k: float(v) for k, v in f.items()}
        passed, why = (True, "baseline") if name == base else fid.gate(stage.fidelity, gates)
        stage.gate = Gate(passed=passed, why=why)
        stage.llm = {"runtime": getattr(sessions[name], "label", sessions[name].name), "sequences": len(seqs),
                     "seq_len": spec.seq_len, **{k: stage.fidelity[k] for k in ("top1_agreement", "kl", "ppl")}}
        if tok is not None:
            try:
                stage.llm["answer"] = lm.greedy_answer(sessions[name], tok, spec.prompt, spec.answer_tokens)
                stage.llm["prompt"] = spec.prompt
            except EdgeoptError as e:
                stage.warnings.append(f"probe prompt not answered: {e}")
    prompt = lm.prompt_ids(tok, spec.prompt_tokens, vocab)
    where = {name: (art.path, "litert") if art.kind == "tflite" else (_reload_source(art), "torch")
             for name, (stage, art) in by_name.items()}
    in_children = all(w for w, _ in where.values())
    if in_children:  # each stage in a process of its own, rounds rotating over them (see time_in_children)
        for s in sessions.values():  # free this process's copies (and thread pools) before the children run
            s.close()
        times = lm.time_in_children(where, prompt, spec.decode_tokens, spec.repeats, threads,
                                    advance=task("LLM timing and peak memory (a child per stage and round)",
                                                 spec.repeats * len(sessions)))
        for name, (stage, _) in by_name.items():
            if spec.memory:
                stage.peak_rss_mb = times[name].pop("peak_rss_mb")
            else:
                times[name].pop("peak_rss_mb")
    else:  # a baseline built in code cannot be reloaded by a child: all in this process, interleaved
        times = lm.timing(sessions, prompt, spec.decode_tokens, spec.repeats,
                          advance=task("LLM timing (TTFT, decode; interleaved)", spec.repeats * len(sessions)))
    bandwidth = lm.copy_bandwidth_gbs()
    environment["copy_bandwidth_gbs"] = round(bandwidth, 2)
    samples: dict[str, tuple[float, ...]] = {}
    for name, (stage, art) in by_name.items():
        t = dict(times[name])
        decode = t.pop("decode_samples_ms")
        samples[name] = tuple(decode)
        stats = LatencyStats.from_samples(decode)
        stage.latency_ms = Latency(**stats.to_dict(), runtime=sessions[name].name, threads=threads, batch=1,
                                   shapes={"tokens": [1, 1]})
        stage.llm.update(t)
        hf = getattr(art.module, "lm", None) if art.kind == "torch" else None
        weights = (lm.weight_bytes_per_token(art.path) if art.kind == "tflite"
                   else lm.decoder_weight_bytes(hf_shape(hf.config).to_dict(), 4) if hf is not None
                   else int(art.size_bytes))
        ceiling = lm.ceiling_tok_s(bandwidth, weights)
        stage.llm.update(weight_bytes_per_token=weights, bandwidth_ceiling_tok_s=ceiling,
                         bandwidth_pct=100.0 * t["decode_tok_s"] / ceiling)
    if spec.memory and not in_children:
        advance = task("LLM peak memory (child per stage)", len(by_name))
        for name, (stage, art) in by_name.items():
            path, runtime = where[name]
            if path is None:
                stage.warnings.append("peak memory not measured: the baseline has no folder a child could reload "
                                      "(random weights built in code)")
            else:
                try:
                    stage.peak_rss_mb = lm.peak_rss_mb(path, runtime, spec.prompt_tokens, 16, threads)
                except EdgeoptError as e:
                    stage.warnings.append(f"peak memory not measured: {e}")
            advance()
    for name, (stage, _) in by_name.items():
        stage.llm["timed_in"] = "a child process per stage and round" if in_children else "this process, interleaved"
    return samples
