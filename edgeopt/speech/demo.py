"""`edgeopt demo whisper`: real Whisper tiny.en through edgeopt's stages for a target, measured on spoken sentences.

Stages for the target (`edgeopt.operators.OptimizationTarget`): ONNX fp32, fused, the target's INT8 (ONNX
Runtime dynamic with its per-channel / reduce-range settings) on both graphs and on the encoder alone (the
decoder's INT8 costs WER), OpenVINO where installed, with the encoder in bf16 where the CPU has bf16;
`compare_fusion` adds INT8 on the fused graphs (each INT8 stage has its fusion twin) and ONNX Runtime's own
transformer optimizer beside edgeopt's fusions. Each stage transcribes the same espeak-ng
sentences; the table gives end-to-end seconds, RTF, encoder and decoder-step latency, WER, size and (with
`benchmark`) peak RSS. A target this host cannot run gets its graphs built and is reported as not measured here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeopt.errors import InputError


def whisper_demo(target: str = "cpu", benchmark: bool = False, compare_fusion: bool = False,
                 out: str | Path = "runs/demo-whisper", threads: int = 2, utterances: int | None = None,
                 rounds: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Build and measure Whisper tiny.en's stages for `target`; returns {"rows", "target", "measured_here", "notes"}."""
    from edgeopt.operators import PLANS, OptimizationTarget, host_can_measure
    from edgeopt.speech import stages as S
    from edgeopt.speech import whisper as W
    from edgeopt.target import get_target
    from edgeopt.zoo import speech
    from edgeopt.zoo.whisper import whisper_folder

    t = OptimizationTarget.parse(target)
    n_utt = utterances or (10 if benchmark else 3)
    n_rounds = rounds or (5 if benchmark else 1)
    if n_utt < 1 or n_rounds < 1:
        raise InputError("utterances and rounds must be at least 1")
    measurable, why = host_can_measure(t)
    plan = PLANS[t]
    etarget = get_target(plan.edgeopt_target)
    stages = ["onnx", "fused", "int8-dynamic", "int8-encoder"]
    if compare_fusion:  # INT8 on the fused graphs too, and ONNX Runtime's own transformer optimizer beside ours
        stages += ["fused-int8", "ort-transformers"]
    from edgeopt.extras import available

    if available("openvino"):
        stages += ["openvino", "ov-bf16-encoder"]
    folder = whisper_folder()
    model, tok, fe = W.load_whisper(folder)
    log(f"Whisper tiny.en (real weights) for target {t.value} (edgeopt target {etarget.name}); "
        f"{n_utt} espeak-ng sentences, {n_rounds} round(s), {threads} threads")
    built = S.build_stages(model, Path(out), etarget, stages=tuple(stages), log=log)
    notes = [plan.note] if plan.note else []
    if not measurable:
        notes.append(why)
        return {"rows": [{"stage": s.name, "skipped": s.skipped or "built, not measured here",
                          "size_mb": round(s.size_mb, 2) if s.files else None,
                          "files": {k: str(v) for k, v in s.files.items()}} for s in built],
                "target": t.value, "measured_here": False, "notes": notes}
    utts = speech.spoken(n_utt)
    rows = S.measure_stages(built, model, tok, fe, utts, rounds=n_rounds, threads=threads,
                            folder=folder if benchmark else None, work=Path(out), progress=log)
    return {"rows": rows, "target": t.value, "measured_here": True, "notes": notes,
            "references": [x for _, x in utts]}


def render(res: dict[str, Any]) -> Any:
    """The demo's rows as a rich table."""
    from rich.table import Table

    t = Table(title=f"Whisper tiny.en stages for target {res['target']}"
                    + ("" if res["measured_here"] else " (built, not measured here)"))
    cols = ("stage", "runtime", "end-to-end s", "RTF", "vs PyTorch", "encoder ms", "step ms", "WER", "same as PyTorch",
            "size MB", "peak RSS MB")
    for c in cols:
        t.add_column(c, justify="left" if c in ("stage", "runtime", "same as PyTorch") else "right")
    for r in res["rows"]:
        if "seconds_p50" not in r:
            t.add_row(r["stage"], r.get("runtime", "-"), *["-"] * 6, r.get("skipped") or "-",
                      f"{r['size_mb']:.0f}" if r.get("size_mb") else "-", "-")
            continue
        t.add_row(r["stage"], r["runtime"], f"{r['seconds_p50']:.2f}", f"{r['rtf']:.3f}", f"{r.get('speedup', 1):.2f}x",
                  f"{r['encoder_ms']:.0f}", f"{r['step_ms']:.1f}", f"{r['wer']:.3f}",
                  "yes" if r["same_as_pytorch"] else f"no (WER vs PyTorch {r['wer_vs_pytorch']:.3f})",
                  f"{r['size_mb']:.0f}", f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-")
    return t
