"""Silero VAD measured as a VAD: speech/non-speech decisions per 32 ms frame against the original, and time per second of audio.

The original is the package's own streaming ONNX graph run as the package runs it (one 512-sample chunk per
call, 64 samples of context, the LSTM state carried between calls). Each stage (edgeopt's whole-waveform
PyTorch model, its ONNX export, dynamic INT8 with the LSTM quantized, OpenVINO) runs the same test audio —
espeak-ng sentences with silences between them — and is judged by frame agreement at threshold 0.5.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.zoo import vad as zv

THRESHOLD = 0.5
GATE_COSINE = 0.99  # the stage gate (recipes/vad.yaml's mean_cosine): probabilities close to the original's


def test_audio(n: int = 10, gap_s: float = 0.6, seed: int = 0) -> np.ndarray:
    """`n` spoken sentences with silences (and faint noise) between them, 16 kHz, length a multiple of 512."""
    from edgeopt.zoo import speech

    rng = np.random.default_rng(seed)
    parts = []
    for x, _ in speech.spoken(n):
        parts += [np.zeros(int(gap_s * zv.SAMPLE_RATE * rng.uniform(0.5, 1.5)), np.float32), x]
    parts.append(np.zeros(int(gap_s * zv.SAMPLE_RATE), np.float32))
    a = np.concatenate(parts)
    a = a + 0.003 * rng.standard_normal(a.size).astype(np.float32)
    return a[: a.size // zv.CHUNK * zv.CHUNK].astype(np.float32)


def streaming_reference(audio: np.ndarray, threads: int = 1) -> np.ndarray:
    """Speech probability per chunk from the package's own ONNX graph, streamed chunk by chunk as it runs it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(zv.package_file(zv.VAD_ONNX)), so, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros((1, zv.CONTEXT), np.float32)
    sr = np.array(zv.SAMPLE_RATE, np.int64)
    out = np.empty(audio.size // zv.CHUNK, np.float32)
    for i in range(out.size):
        x = np.concatenate([ctx, audio[None, i * zv.CHUNK:(i + 1) * zv.CHUNK]], axis=1)
        p, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        out[i] = p[0, 0]
        ctx = x[:, -zv.CONTEXT:]
    return out


def agreement(ref: np.ndarray, out: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Share of frames decided alike (speech when the probability is above `threshold`)."""
    return float(((ref > threshold) == (out > threshold)).mean())


def build(out: Path, target: Any, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The stages as artifacts: torch (whole waveform), onnx, int8-dynamic (the LSTM, per channel), int8-with-conv
    (the convolutions too: ONNX Runtime's dynamic ConvInteger on the STFT and encoder convolutions wrecks the
    decisions, kept as the measured counter-example), openvino."""
    from edgeopt.load import load_model
    from edgeopt.passes.base import PassContext, build_pass

    arts: dict[str, Any] = {"pytorch": load_model("zoo:silero-vad")}
    steps = (("onnx", "pytorch", "convert.onnx", {"opset": 17}),
             ("int8-dynamic", "onnx", "graph.quantize_dynamic", {"op_types": ("LSTM", "MatMul", "Gemm"),
                                                                 "per_channel": True}),
             ("int8-with-conv", "onnx", "graph.quantize_dynamic", {"op_types": ("LSTM", "Conv", "MatMul", "Gemm"),
                                                                   "per_channel": True}),
             ("openvino", "onnx", "convert.openvino", {"precision": "f32"}))
    for name, parent, pass_name, cfg in steps:
        log(f"stage {name} ({pass_name}) …")
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        ctx = PassContext(stage_dir=d, target=target)
        arts[name] = build_pass(pass_name, cfg)(arts[parent], ctx)
        arts[name].meta["notes"] = ctx.notes
    return arts


def benchmark(threads: int = 2, rounds: int = 5, out: Path = Path("runs/bench-whisper/vad"),
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Frame agreement with the streaming original and ms per second of audio for each stage, timed round-robin."""
    import onnx

    from edgeopt.measure.latency import paired_speedup
    from edgeopt.measure.runners import make_runner
    from edgeopt.target import detect_target

    audio = test_audio()
    seconds = audio.size / zv.SAMPLE_RATE
    ref = streaming_reference(audio, threads)
    arts = build(Path(out), detect_target(), log)
    feed = {"audio": audio[None]}
    runners = {n: make_runner(a, threads=threads) for n, a in arts.items()}
    probs = {n: np.asarray(r.run(feed)[0])[0] for n, r in runners.items()}  # also the warm-up
    import onnxruntime  # noqa: F401  (the streaming original is timed too)

    times: dict[str, list[float]] = {n: [] for n in [*runners, "original (streaming)"]}
    order = list(times)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            if name == "original (streaming)":
                streaming_reference(audio, threads)
            else:
                runners[name].run(feed)
            times[name].append((time.perf_counter() - t0) * 1e3)
    base = times["original (streaming)"]
    rows = [{"stage": "original (streaming)", "frames": int(ref.size), "agreement": 1.0, "cosine": 1.0, "gate": True,
             "ms_per_s": float(np.median(base)) / seconds, "speedup": 1.0, "speedup_ci": [1.0, 1.0]}]
    for name, art in arts.items():
        sp = paired_speedup(base, times[name])
        ops = []
        if getattr(art, "kind", "") == "onnx":
            ops = sorted({n.op_type for n in onnx.load(str(art.path)).graph.node if "LSTM" in n.op_type})
        cos = float(np.dot(ref, probs[name]) / (np.linalg.norm(ref) * np.linalg.norm(probs[name]) + 1e-12))
        rows.append({"stage": name, "frames": int(ref.size), "agreement": agreement(ref, probs[name]), "cosine": cos,
                     "gate": cos >= GATE_COSINE,
                     "max_abs": float(np.abs(ref - probs[name]).max()), "ms_per_s": float(np.median(times[name])) / seconds,
                     "speedup": sp.ratio, "speedup_ci": [sp.lo, sp.hi], "lstm_ops": ops})
    return {"rows": rows, "audio_s": seconds, "speech_share": float((ref > THRESHOLD).mean()), "threads": threads,
            "rounds": rounds}


def render(res: dict[str, Any]) -> Any:
    """The benchmark's rows as a rich table."""
    from rich.table import Table

    t = Table(title=f"Silero VAD v6 (real weights) on {res['audio_s']:.1f} s of espeak-ng speech and silence "
                    f"({res['speech_share']:.0%} speech frames), {res['threads']} threads, {res['rounds']} rounds")
    for c in ("stage", "frame agreement", "cosine", "gate", "max abs", "ms per s of audio", "speedup vs original [95%]",
              "LSTM op"):
        t.add_column(c, justify="left" if c in ("stage", "LSTM op", "gate") else "right")
    for r in res["rows"]:
        t.add_row(r["stage"], f"{r['agreement'] * 100:.2f} %", f"{r['cosine']:.4f}", "pass" if r["gate"] else "FAIL",
                  f"{r.get('max_abs', 0):.1e}", f"{r['ms_per_s']:.2f}",
                  f"{r['speedup']:.2f}x [{r['speedup_ci'][0]:.2f}-{r['speedup_ci'][1]:.2f}]",
                  ", ".join(r.get("lstm_ops") or []) or "-")
    return t
