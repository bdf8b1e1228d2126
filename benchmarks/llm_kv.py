"""What the KV cache costs a LiteRT LLM's decode: SmolLM2-135M-Instruct (real weights), dynamic int8, exported with
each cache length x layout asked for, every export timed side by side on THIS CPU (2 threads, a child process per
export and round, rounds rotating; `edgeopt.llm.measure.time_in_children`).

Every decode step attends over the whole cache and writes its new K/V into it, so decode time grows with
`kv_cache_max_len`, not with the tokens actually in the cache. The default layout also repeats every K/V head once
per query head (grouped-query attention through `repeat_interleave`) and transposes the result on every token;
the transposed layout (K (1, KV heads, len, dim), V (1, KV heads, dim, len)) attends per KV group with one
batched matmul and repeats nothing. Prints the CPU flags, decode tok/s and TTFT per export, and the ratio to the
default layout at the longest cache. One more export (`--windows`) has the longest cache, transposed, plus
`decode_<W>` signatures that attend over the first W positions only: the decode loop picks the smallest window
that holds the position, so a short conversation decodes at a short cache's speed in a long cache. Exports are kept in `--out` and reused (a conversion takes minutes).

    .venv/bin/python benchmarks/llm_kv.py [--out runs/bench-llm-kv] [--caches 256 1024] [--layouts default transposed]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def export(hf, folder: Path, d: Path, kv: int, layout: str, console, windows: tuple[int, ...] = ()) -> Path:
    """The dynamic int8 export with a `kv`-position cache in `layout` and `windows` decode windows (converted once,
    then reused)."""
    from edgeopt.llm import export as E

    q = d / "int8" / "model.tflite"
    if q.exists():
        return q
    fp32 = d / "fp32" / "model.tflite"
    if not fp32.exists():
        console.print(f"converting: {kv}-position cache, {layout} layout{f', windows {windows}' if windows else ''} "
                      "(~3-6 min) …")
        facts = E.convert(hf, fp32, prefill_lens=(32, 128), kv_cache_max_len=kv, score_len=None, kv_layout=layout,
                          decode_windows=windows)
        facts.update(hf_config=hf.config.to_dict())
        E.write_sidecar(fp32.parent, facts, folder)
    E.quantize_file(fp32, q, "dynamic_int8", hf.config)
    E.write_sidecar(q.parent, {**E.read_sidecar(fp32), "quantize": "dynamic_int8"}, folder)
    return q


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-llm-kv")
    ap.add_argument("--caches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--layouts", nargs="+", default=["default", "transposed"], choices=("default", "transposed"))
    ap.add_argument("--windows", type=int, nargs="*", default=[256, 512],
                    help="decode windows of one more export: the longest cache, transposed, with decode_<W> "
                         "signatures (none: leave it out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    if min(args.caches) <= 128 + args.decode_tokens:
        raise SystemExit(f"error: every cache must hold the 128-token prompt and {args.decode_tokens} tokens")

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM

    from edgeopt.llm import measure as lm
    from edgeopt.llm.generate import load_tokenizer
    from edgeopt.target import detect_target
    from edgeopt.zoo.llm import smollm2_folder

    console = Console()
    t = detect_target()
    console.print(f"CPU: {t.cpu_model}; flags: {' '.join(t.isa)}; cores {t.cores}; threads {args.threads}")
    folder = smollm2_folder()
    hf = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    rows = {}
    for kv in sorted(args.caches):
        for layout in args.layouts:
            rows[f"{kv} positions, {layout}"] = (export(hf, folder, Path(args.out) / f"kv{kv}-{layout}", kv, layout,
                                                       console), "litert")
    if args.windows:
        kv = max(args.caches)
        w = tuple(sorted(x for x in args.windows if x < kv))
        rows[f"{kv} positions, transposed, windows {'/'.join(map(str, w))}"] = (
            export(hf, folder, Path(args.out) / f"kv{kv}-transposed-w{'-'.join(map(str, w))}", kv, "transposed",
                   console, w), "litert")
    del hf
    prompt = lm.prompt_ids(load_tokenizer(folder), 128)
    with console.status("timing: a child process per export and round …"):
        times = lm.time_in_children(rows, prompt, args.decode_tokens, args.repeats, args.threads)
    base_label = f"{max(args.caches)} positions, {args.layouts[0]}"
    base = times[base_label]["decode_tok_s"]
    tab = Table(title=f"SmolLM2-135M dynamic int8 on LiteRT, {args.threads} threads, 128-token prompt, "
                      f"{args.repeats} x {args.decode_tokens} decoded tokens")
    for col in ("KV cache", "TTFT ms", "decode tok/s", f"× {base_label}", "peak RSS MB"):
        tab.add_column(col, justify="left" if col == "KV cache" else "right")
    for label, tm in times.items():
        tab.add_row(label, f"{tm['ttft_ms']:.0f}", f"{tm['decode_tok_s']:.1f}", f"{tm['decode_tok_s'] / base:.2f}×",
                    f"{tm['peak_rss_mb']:.0f}")
    console.print(tab)
    Path(args.out, "results.json").write_text(json.dumps(
        {"cpu": t.cpu_model, "flags": t.isa, "threads": args.threads,
         "rows": {k: {kk: vv for kk, vv in v.items() if kk != "decode_samples_ms"} for k, v in times.items()}},
        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
