"""LLM benchmark (issue 12): SmolLM2-135M-Instruct (real weights) on PyTorch, ONNX Runtime GenAI and every LiteRT
variant edgeopt exports, measured side by side on THIS CPU with 2 threads.

Rows: PyTorch eager fp32 (Hugging Face model with its KV cache, the loop `generate` runs), PyTorch dynamic int8 on
the Linear layers, ONNX Runtime GenAI int8 (its model builder run on the same local folder: 8-bit MatMulNBits,
block 32, int8 compute), and LiteRT fp32 / dynamic int8 / weight-only int8 / fp16 / int4 variants, all exported by
edgeopt from one conversion (prefill_32 / prefill_128 / decode / score_128 signatures, a `--kv-cache`-position KV
cache, default 1024, in `--kv-layout`, default transposed), and the `--engine` rows: the same .tflite bundled as
.litertlm and run by the LiteRT-LM engine (text in, text out: its fidelity is that of the .tflite it holds).
Columns: TTFT for a 128-token prompt, prefill tok/s, decode tok/s (median per-token time over `--decode-tokens` x
`--repeats`), peak RSS, size, and on `--sequences` held-out sequences x 128 tokens (generated text, never
calibration text) next-token top-1 agreement with PyTorch fp32, mean KL and perplexity; the greedy answer to
"The capital of France is"; the decode rate as a share of this machine's memory-bandwidth limit (weight bytes
read per token / measured copy bandwidth). Timing: each row in a child process of its own, rounds rotating over
the rows (runtimes never share a process). Prints the CPU flags and checks the issue's claims (exit 1 when one
fails):
- the best LiteRT variant with top-1 agreement >= 0.95 decodes >= 5x faster than PyTorch eager fp32 and >= 1.2x
  faster than ONNX Runtime GenAI int8, with a TTFT no worse than either;
  (the SQ rows come from a second export that SmoothQuant re-weighted first; the rot rows from an export whose
  residual stream was rotated (edgeopt.llm.rotate), and the rot+GPTQ rows from exports whose weights GPTQ also
  rounded onto that row's grid (edgeopt.llm.gptq), as recipes/llm-litert.yaml does)
- an int4 variant is listed and keeps the France answer.

    .venv/bin/python benchmarks/llm.py [--out runs/bench-llm] [--repeats 3] [--decode-tokens 64] [--sequences 64]
                                       [--kv-cache 1024] [--kv-layout transposed] [--decode-windows W ...]
                                       [--engine ROW ...] [--rows TEXT ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from edgeopt.report.claims import Claim, statement

# LiteRT variants: label -> quantize_file arguments (None: the fp32 export itself)
LITERT: dict[str, dict[str, str] | None] = {
    "LiteRT fp32": None,
    "LiteRT dynamic int8": {"variant": "dynamic_int8"},
    "LiteRT weight-only int8": {"variant": "weight_only_int8"},
    "LiteRT fp16": {"variant": "fp16"},
    "LiteRT int4 b32 (emb int8)": {"variant": "dynamic_int4_block32", "embedding": "dynamic_int8"},
    "LiteRT int4 b32 FFN, int8 rest": {"variant": "dynamic_int8", "feedforward": "dynamic_int4_block32"},
    # the tied embedding / output layer with weight-only int8 (float activations into the logits), the rest int8
    "LiteRT dynamic int8, wo-int8 output": {"variant": "dynamic_int8", "embedding": "weight_only_int8"},
}
# the same from a SmoothQuant-ed export (alpha 0.5, calibrated on 16 x 128 tokens of calibration text)
SMOOTHED: dict[str, dict[str, str]] = {
    "LiteRT SQ dynamic int8": {"variant": "dynamic_int8"},
    "LiteRT SQ int4 b32 FFN, int8 rest": {"variant": "dynamic_int8", "feedforward": "dynamic_int4_block32"},
    "LiteRT SQ dynamic int8, wo-int8 output": {"variant": "dynamic_int8", "embedding": "weight_only_int8"},
}
# the same from a rotated export (edgeopt.llm.rotate: residual stream rotated, online Hadamard before down_proj)
ROTATED: dict[str, dict[str, str]] = {
    "LiteRT rot dynamic int8": {"variant": "dynamic_int8"},
    "LiteRT rot int4 b32 FFN, int8 rest": {"variant": "dynamic_int8", "feedforward": "dynamic_int4_block32"},
}
INT4_FFN = {"variant": "dynamic_int8", "feedforward": "dynamic_int4_block32"}
# export families: fp32 folder label -> (re-weighting before conversion, its variants). A GPTQ export holds weights
# already on its variant's grid, so it serves that variant only; re-weighted fp32 exports compute what fp32 does
# and are not rows of their own.
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, dict[str, str] | None]]] = {
    "LiteRT fp32": ({}, LITERT),
    "LiteRT SQ fp32": ({"smooth": 0.5}, SMOOTHED),
    "LiteRT rot fp32": ({"rotate": True}, ROTATED),
    "LiteRT rot+GPTQ int8 fp32": ({"rotate": True, "gptq": {"variant": "dynamic_int8"}},
                                  {"LiteRT rot+GPTQ dynamic int8": {"variant": "dynamic_int8"}}),
    "LiteRT rot+GPTQ int4 FFN fp32": ({"rotate": True, "gptq": INT4_FFN},
                                      {"LiteRT rot+GPTQ int4 b32 FFN, int8 rest": INT4_FFN}),
}
PROBE = "The capital of France is"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def _convert(hf: Any, folder: Path, d: Path, console: Any, reweight: dict[str, Any], kv_cache: int = 1024,
             kv_layout: str = "default", windows: Sequence[int] = ()) -> dict[str, Any]:
    """The fp32 export in `d` (made once; reused when there), re-weighted first as `reweight` says (smooth:
    SmoothQuant alpha; rotate; gptq: the variant whose grid GPTQ rounds onto), calibrated as the passes do. A GPTQ
    family is the export of its family without GPTQ with the GPTQ-ed weights swapped in, as quantize.litert_llm's
    gptq does (edgeopt.llm.swap.gptq_into)."""
    from edgeopt.llm import export as E
    from edgeopt.llm.generate import load_tokenizer

    fp32 = d / "model.tflite"
    if fp32.exists():
        return E.read_sidecar(d)
    if "gptq" in reweight:
        from edgeopt.llm.swap import gptq_into

        plain = {k: v for k, v in reweight.items() if k != "gptq"}
        base = next(label for label, (rw, _) in FAMILIES.items() if rw == plain)
        facts = _convert(hf, folder, d.parent / _slug(base), console, plain, kv_cache, kv_layout, windows)
        console.print(f"GPTQ onto {reweight['gptq']} into the {base} export …")
        done = gptq_into(hf, load_tokenizer(folder), d.parent / _slug(base) / "model.tflite", fp32, facts,
                         reweight["gptq"])
        console.print(f"  GPTQ: {done['gptq']}; written by {done['gptq_export']['method']}")
        E.write_sidecar(d, {**facts, **done}, folder)
        return E.read_sidecar(d)
    console.print(f"converting SmolLM2-135M to LiteRT {reweight or ''} (~2-8 min) …")
    model, done = hf, {}
    if reweight:  # as convert.litert_llm does (same order, same calibration text)
        import copy

        from edgeopt.llm.calibrate import reweight as apply

        model = copy.deepcopy(hf)
        done = apply(model, load_tokenizer(folder), smooth=reweight.get("smooth"), rotate=bool(reweight.get("rotate")))
    facts = E.convert(model, fp32, prefill_lens=(32, 128), kv_cache_max_len=kv_cache, score_len=128,
                      kv_layout=kv_layout, decode_windows=windows)
    facts.update(hf_config=model.config.to_dict(), **done)
    facts.setdefault("smooth", None)
    E.write_sidecar(d, facts, folder)
    return E.read_sidecar(d)


def exports(folder: Path, out: Path, console: Any, kv_cache: int = 1024, kv_layout: str = "default",
            windows: Sequence[int] = (), wanted: Any = lambda label: True) -> dict[str, Path]:
    """The LiteRT files (converted once per export family, then quantized per variant), reused when in `out`;
    only the families with a `wanted` row are converted."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from edgeopt.llm import export as E

    paths: dict[str, Path] = {}
    hf = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    for fp32_label, (reweight, variants) in FAMILIES.items():
        if not any(wanted(label) for label in variants) and fp32_label != "LiteRT fp32":
            continue
        fp32_dir = out / _slug(fp32_label)
        facts = _convert(hf, folder, fp32_dir, console, reweight, kv_cache, kv_layout, windows)
        got = (facts["kv_cache_max_len"], facts.get("kv_layout", "default"), facts.get("decode_windows", []))
        if got != (kv_cache, kv_layout, sorted(windows)):
            raise SystemExit(f"error: {fp32_dir} holds an export with a {got[0]}-position {got[1]} KV cache and "
                             f"decode windows {got[2]}; use another --out")
        for label, kw in variants.items():
            if not wanted(label):
                continue
            d = out / _slug(label)
            if kw is not None and not (d / "model.tflite").exists():
                d.mkdir(parents=True, exist_ok=True)
                E.quantize_file(fp32_dir / "model.tflite", d / "model.tflite",
                                hf_config=SimpleNamespace(**facts["hf_config"]), **kw)
                E.write_sidecar(d, {**facts, "quantize": kw["variant"],
                                    **{k: v for k, v in kw.items() if k != "variant"}}, folder)
            paths[label] = fp32_dir / "model.tflite" if kw is None else d / "model.tflite"
    return paths


def _stamp(path: Path) -> str:
    """A fingerprint of a model file or folder (names, sizes, modification times)."""
    import hashlib

    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return hashlib.sha256("|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:16]


def file_mb(path: Path) -> float:
    p = Path(path)
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
    return sum(f.stat().st_size for f in files
               if f.suffix in (".tflite", ".onnx", ".data", ".safetensors", ".litertlm")) / 1e6


def check(results: dict[str, dict[str, Any]], bw: float, weight_bytes: dict[str, int]) -> list[Claim]:
    """The issue's claims on the rows (label -> runtime, decode_tok_s, ttft_ms, top1_agreement, answer, size_mb,
    bandwidth_pct): the best LiteRT variant with top-1 >= 0.95 against PyTorch fp32 and ORT GenAI int8, and an
    int4 variant that keeps the France answer."""
    claims: list[Claim] = []
    good = {k: v for k, v in results.items()
            if v["runtime"] in ("litert", "litert-lm") and v["top1_agreement"] >= 0.95}
    if not good:
        claims.append(Claim("a LiteRT variant keeps top-1 agreement >= 0.95", False, "none does"))
    else:
        best = max(good, key=lambda k: good[k]["decode_tok_s"])
        b, pt = results[best], results["PyTorch fp32"]
        claims.append(Claim(f"{best} (top-1 {b['top1_agreement']:.3f}) decodes >= 5x PyTorch eager fp32",
                            b["decode_tok_s"] >= 5 * pt["decode_tok_s"],
                            f"{b['decode_tok_s']:.1f} vs {pt['decode_tok_s']:.1f} tok/s = "
                            f"{b['decode_tok_s'] / pt['decode_tok_s']:.2f}x"))
        ttft_ok = b["ttft_ms"] <= pt["ttft_ms"]
        numbers = f"TTFT {b['ttft_ms']:.0f} ms vs PyTorch {pt['ttft_ms']:.0f}"
        if "ORT GenAI int8" in results:
            og = results["ORT GenAI int8"]
            claims.append(Claim(f"{best} decodes >= 1.2x ONNX Runtime GenAI int8",
                                b["decode_tok_s"] >= 1.2 * og["decode_tok_s"],
                                f"{b['decode_tok_s']:.1f} vs {og['decode_tok_s']:.1f} tok/s = "
                                f"{b['decode_tok_s'] / og['decode_tok_s']:.2f}x"))
            ttft_ok = ttft_ok and b["ttft_ms"] <= og["ttft_ms"]
            numbers += f", ORT GenAI {og['ttft_ms']:.0f}"
        claims.append(Claim(f"{best}: TTFT no worse than PyTorch and ORT GenAI", ttft_ok, numbers))
        claims.append(statement(f"{best}: decode at {b['bandwidth_pct']:.0f}% of the memory-bandwidth limit",
                                f"{b['decode_tok_s']:.1f} tok/s; limit 2 x {bw:.1f} GB/s / "
                                f"{weight_bytes.get(best, 0) / 1e6:.0f} MB per token"))
    int4 = {k: v for k, v in results.items() if "int4" in k}
    keeps = [k for k, v in int4.items() if "Paris" in v["answer"]]
    claims.append(Claim("an int4 variant keeps the France answer", bool(keeps),
                        "; ".join(f"{k}: {v['size_mb']:.0f} MB, top-1 {v['top1_agreement']:.3f}, "
                                  f"{v['answer'][:20]!r}" for k, v in int4.items()) or "no int4 row"))
    return claims


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-llm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--no-ortgenai", action="store_true", help="leave out the ONNX Runtime GenAI row")
    ap.add_argument("--kv-cache", type=int, default=1024, help="KV cache positions of the LiteRT exports")
    ap.add_argument("--kv-layout", default="transposed", choices=("default", "transposed"),
                    help="KV cache layout of the LiteRT exports (see edgeopt.llm.export.convert)")
    ap.add_argument("--decode-windows", type=int, nargs="*", default=[],
                    help="decode_<W> signatures attending over the first W positions (transposed layout)")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="only the LiteRT rows whose label contains one of these strings (PyTorch and GenAI rows "
                         "always run); default: every row")
    ap.add_argument("--engine", nargs="*", default=["LiteRT SQ dynamic int8", "LiteRT SQ dynamic int8, wo-int8 output"],
                    help="LiteRT rows also bundled as .litertlm and timed on the LiteRT-LM engine (transposed "
                         "layout only)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from edgeopt.llm import measure as lm
    from edgeopt.llm.generate import load_tokenizer
    from edgeopt.report.claims import exit_code, summary, table
    from edgeopt.target import detect_target
    from edgeopt.zoo.llm import smollm2_folder

    console = Console()
    t = detect_target()
    console.print(f"CPU: {t.cpu_model}; flags: {' '.join(t.isa)}; cores {t.cores}; threads {args.threads}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = smollm2_folder()
    tok = load_tokenizer(folder)
    rows: dict[str, tuple[Path, str]] = {"PyTorch fp32": (folder, "torch"),
                                         "PyTorch dynamic int8": (folder, "torch-int8")}
    if not args.no_ortgenai:
        from edgeopt.llm.ortgenai import build_ortgenai

        og = out / "ortgenai-int8"
        if not (og / "genai_config.json").exists():
            console.print("building the ONNX Runtime GenAI int8 model with its model builder …")
            build_ortgenai(folder, og, precision="int8")
        rows["ORT GenAI int8"] = (og, "ortgenai")
    wanted = (lambda label: True) if args.rows is None else (lambda label: any(r in label for r in args.rows))
    for label, path in exports(folder, out, console, args.kv_cache, args.kv_layout, args.decode_windows,
                               wanted).items():
        rows[label] = (path, "litert")
    engine_of: dict[str, str] = {}  # LiteRT-LM engine row -> the LiteRT row whose .tflite it bundles
    if args.kv_layout == "transposed":
        from edgeopt.llm.litertlm import bundle

        for label in args.engine:
            if label not in rows and not wanted(label):
                continue
            if label not in rows:
                raise SystemExit(f"error: --engine {label!r} is not a LiteRT row "
                                 f"({', '.join(k for _, v in FAMILIES.values() for k in v)})")
            path = rows[label][0]
            lm_file = path.with_suffix(".litertlm")
            if not lm_file.exists():
                bundle(path, lm_file)
            engine_of[f"LiteRT-LM engine: {label.removeprefix('LiteRT ')}"] = label
            rows[f"LiteRT-LM engine: {label.removeprefix('LiteRT ')}"] = (lm_file, "litert-lm")

    # fidelity and the probe answer, in this process (never timed); kept in fidelity.json per row and file, so a
    # rerun (or an interrupted run) recomputes only the rows whose files changed
    seqs = lm.heldout_sequences(tok, args.sequences, 128)
    fid_file = out / "fidelity.json"
    known = json.loads(fid_file.read_text()) if fid_file.is_file() else {}
    keys = {label: f"{_stamp(p)}|{args.sequences}" for label, (p, rt) in rows.items() if rt != "litert-lm"}
    fid = {k: known[k]["fidelity"] for k in keys if known.get(k, {}).get("key") == keys[k]}
    answers = {k: known[k]["answer"] for k in fid}
    todo = [k for k in keys if k not in fid]
    if todo:
        ref = lm.open_session(folder, "torch", args.threads)
        cands = {label: lm.open_session(rows[label][0], rows[label][1], args.threads)
                 for label in todo if label != "PyTorch fp32"}
        with console.status(f"teacher-forced fidelity on held-out text ({len(cands)} rows) …"):
            fid.update(lm.fidelity(ref, cands, seqs) if cands else {})
        if "PyTorch fp32" in todo:
            ppl_ref = next((v["ppl_ref"] for v in fid.values() if "ppl_ref" in v), None)
            if ppl_ref is None:  # every other row was known: the reference scores itself
                ppl_ref = lm.fidelity(ref, {"self": ref}, seqs)["self"]["ppl"]
            fid["PyTorch fp32"] = {"top1_agreement": 1.0, "kl": 0.0, "ppl": ppl_ref}
        answers.update({label: lm.greedy_answer(s, tok, PROBE, 8) for label, s in
                        {"PyTorch fp32": ref, **cands}.items() if label in todo})
        for s in [ref, *cands.values()]:
            s.close()
        known.update({k: {"key": keys[k], "fidelity": fid[k], "answer": answers[k]} for k in todo})
        fid_file.write_text(json.dumps(known, indent=1))
    for label, src in engine_of.items():  # the engine returns text only: fidelity is its .tflite's (fp32 activations)
        from edgeopt.llm.litertlm import LiteRtLmGenerator

        fid[label] = dict(fid[src])
        gen = LiteRtLmGenerator(rows[label][0], args.threads)
        answers[label] = gen.generate(PROBE, max_new_tokens=8, chat=False).text  # (after the engine's BOS)
        gen.session.close()

    prompt = lm.prompt_ids(tok, args.prompt_tokens)
    with console.status("timing: a child process per row and round …"):
        times = lm.time_in_children(rows, prompt, args.decode_tokens, args.repeats, args.threads)
    bw = lm.copy_bandwidth_gbs()
    shape = json.loads((out / _slug("LiteRT fp32") / "llm.json").read_text())["shape"]

    tab = Table(title=f"SmolLM2-135M-Instruct, {args.threads} threads, prompt {len(prompt)} tokens, "
                      f"copy bandwidth {bw:.1f} GB/s")
    for col in ("runtime / variant", "TTFT ms", "prefill tok/s", "decode tok/s", "× PyTorch", "% bw limit",
                "peak RSS MB", "size MB", "top-1", "KL", "ppl", "France"):
        tab.add_column(col, justify="left" if col in ("runtime / variant", "France") else "right")
    results = {}
    base_dec = times["PyTorch fp32"]["decode_tok_s"]
    for label, (path, rt) in rows.items():
        tm, f = times[label], fid[label]
        size = file_mb(path if rt != "torch-int8" else path)
        src = rows[engine_of[label]][0] if label in engine_of else path
        weights = (lm.weight_bytes_per_token(src) if rt in ("litert", "litert-lm")
                   else lm.onnx_weight_bytes_per_token(path) if rt == "ortgenai"
                   else lm.decoder_weight_bytes(shape, 1 if rt == "torch-int8" else 4))
        pct = 100 * tm["decode_tok_s"] / lm.ceiling_tok_s(bw, weights)
        results[label] = {**{k: v for k, v in tm.items() if k != "decode_samples_ms"}, **f, "size_mb": size,
                          "bandwidth_pct": pct, "answer": answers[label], "runtime": rt}
        tab.add_row(label, f"{tm['ttft_ms']:.0f}", f"{tm['prefill_tok_s']:.0f}", f"{tm['decode_tok_s']:.1f}",
                    f"{tm['decode_tok_s'] / base_dec:.2f}×", f"{pct:.0f}%", f"{tm['peak_rss_mb']:.0f}",
                    f"{size:.0f}" + ("*" if rt == "torch-int8" else ""), f"{f['top1_agreement']:.3f}",
                    f"{f['kl']:.4f}", f"{f['ppl']:.2f}", repr(answers[label][:24]))
    console.print(tab)
    console.print("* PyTorch int8 quantizes in memory at load: the size is the fp32 folder it loads. "
                  "% bw limit: decode tok/s over (2 x copy bandwidth, the traffic of a copy / weight bytes read per token; "
                  "an embedding table that is only looked up counts one row).")
    (out / "results.json").write_text(json.dumps({"cpu": t.cpu_model, "flags": t.isa, "threads": args.threads,
                                                  "copy_bandwidth_gbs": bw, "rows": results}, indent=1))

    claims = check(results, bw, {k: lm.weight_bytes_per_token(rows[engine_of.get(k, k)][0])
                                 for k, (p, rt) in rows.items() if rt in ("litert", "litert-lm")})
    console.print(table(claims, title=f"checks on {t.cpu_model}"))
    console.print(summary(claims))
    return exit_code(claims)


if __name__ == "__main__":
    sys.exit(main())
