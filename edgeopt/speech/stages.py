"""Whisper's optimization stages: each component (encoder, decoder-with-past) through edgeopt's passes, then measured.

A stage is a pair of graphs plus the runtime that runs them. `build_stages` exports the ONNX pair once and
derives every other stage from it with the same passes `edgeopt optimize` runs on one-graph models
(`graph.fuse`, `graph.quantize_dynamic` with the target's settings, `convert.openvino`, `openvino.quantize`),
applied to each component; a stage whose pass fails, or that the target rules out, is skipped with the reason.
`measure_stages` transcribes the same utterances on every stage, round-robin (the order rotating each
round), and reports per stage: end-to-end seconds and real-time factor, encoder and decoder-step latency,
WER against the reference transcripts and against the PyTorch baseline's own transcripts, size, peak RSS of a
child that loads the stage and transcribes one utterance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.errors import EdgeoptError, InputError
from edgeopt.speech import whisper as W

STAGES = ("onnx", "fused", "ort-transformers", "int8-dynamic", "fused-int8", "int8-encoder", "openvino",
          "openvino-bf16", "openvino-int8", "ov-bf16-encoder")
FP32_STAGES = ("onnx", "fused", "ort-transformers", "openvino")  # must transcribe exactly as PyTorch does
# what each stage is, for tables and notes
ABOUT = {
    "onnx": "the exported pair on ONNX Runtime, fp32",
    "fused": "edgeopt's transformer fusions (graph.fuse) on both graphs, fp32",
    "ort-transformers": "ONNX Runtime's transformer optimizer alone (model type bart; bert where bart fails), fp32",
    "int8-dynamic": "dynamic INT8 (the target's settings) on both graphs",
    "fused-int8": "fused, then dynamic INT8 on both graphs",
    "int8-encoder": "fused; dynamic INT8 on the encoder only, the decoder fp32 (its INT8 costs WER)",
    "openvino": "OpenVINO fp32",
    "openvino-bf16": "OpenVINO with bf16 inference precision on both graphs",
    "openvino-int8": "OpenVINO: NNCF INT8 encoder (calibrated), int8 weights in the decoder",
    "ov-bf16-encoder": "the encoder on OpenVINO bf16, the fused fp32 decoder on ONNX Runtime",
}
FROM_FUSED = ("fused-int8", "int8-encoder", "ov-bf16-encoder")  # stages that take the fused stage's decoder


@dataclass
class SpeechStage:
    """One stage: its graphs, the runtime that runs them and what the passes recorded."""

    name: str
    runtime: str  # "pytorch", "ort", "openvino" or "openvino+ort" (encoder on OpenVINO, decoder on ONNX Runtime)
    files: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    precision: str | None = None  # OpenVINO's inference precision hint

    @property
    def size_mb(self) -> float:
        total = 0
        for p in self.files.values():
            total += p.stat().st_size
            if p.suffix == ".xml" and p.with_suffix(".bin").exists():
                total += p.with_suffix(".bin").stat().st_size
        return total / 1e6

    def runner(self, threads: int, model: Any = None) -> W.Runner:
        if self.runtime == "pytorch":
            return W.TorchWhisper(model, threads=threads, name=self.name)
        if self.runtime == "ort":
            return W.OrtWhisper(self.files["encoder"], self.files["decoder"], threads=threads, name=self.name)
        if self.runtime == "openvino+ort":
            return W.MixedWhisper(W.OvWhisper(self.files["encoder"], None, threads=threads, hint=self.precision),
                                  W.OrtWhisper(None, self.files["decoder"], threads=threads), name=self.name)
        return W.OvWhisper(self.files["encoder"], self.files["decoder"], threads=threads, name=self.name,
                           hint=self.precision)


def _component(path: Path, model: Any) -> Any:
    from edgeopt.artifact import Artifact

    c = model.config
    return Artifact.from_onnx(path, meta={"family": "whisper", "num_heads": int(c.decoder_attention_heads),
                                          "hidden_size": int(c.d_model)})


def _run_pass(name: str, values: dict[str, Any], art: Any, stage_dir: Path, target: Any,
              calibration: list[dict[str, Any]] | None = None) -> tuple[Any, dict[str, Any], list[str]]:
    from edgeopt.passes.base import PassContext, build_pass

    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx = PassContext(stage_dir=stage_dir, target=target, calibration=list(calibration or []))
    out = build_pass(name, values)(art, ctx)
    return out, ctx.notes, ctx.warnings


def calibration_feeds(stage: SpeechStage, feats: list[np.ndarray], tokens: W.Tokens, tokenizer: Any,
                      threads: int = 2, per_utterance: int = 8) -> dict[str, list[dict[str, np.ndarray]]]:
    """Real inputs of each component, recorded while `stage` (an ONNX stage) transcribes `feats`: the encoder's
    features and up to `per_utterance` decoder calls per utterance (the prompt and the first tokens)."""
    runner = stage.runner(threads)
    enc: list[dict[str, np.ndarray]] = []
    dec: list[dict[str, np.ndarray]] = []
    step = runner.step

    def recording(ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        if recorded[0] < per_utterance:
            dec.append({"input_ids": ids, **state})
            recorded[0] += 1
        return step(ids, state)

    runner.step = recording  # type: ignore[method-assign]
    for f in feats:
        recorded = [0]
        enc.append({"input_features": f})
        W.transcribe(runner, f, tokens, tokenizer)
    return {"encoder": enc, "decoder": dec}


def build_stages(model: Any, out: str | Path, target: Any, stages: tuple[str, ...] = STAGES,
                 calibration: list[np.ndarray] | None = None, tokens: W.Tokens | None = None, tokenizer: Any = None,
                 log: Callable[[str], None] = lambda s: None) -> list[SpeechStage]:
    """The PyTorch baseline and each requested stage (see STAGES), built under `out` (one folder per stage).

    `calibration`: utterances' features for the passes that calibrate (openvino-int8); without them that stage
    is skipped with the reason."""
    out = Path(out)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise InputError(f"unknown Whisper stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    result = [SpeechStage("pytorch", "pytorch", notes={"what": "Hugging Face WhisperForConditionalGeneration, eager"})]
    log("exporting encoder and decoder-with-past to ONNX …")
    t0 = time.perf_counter()
    onnx_files = W.export_onnx(model, out / "onnx")
    base = SpeechStage("onnx", "ort", onnx_files, {"export_s": round(time.perf_counter() - t0, 1)})
    result.append(base)
    built = {"onnx": base}
    isa = set(getattr(target, "isa", ()) or ())
    for name in stages:
        if name == "onnx":
            continue
        log(f"stage {name} …")
        st = SpeechStage(name, "openvino" if name.startswith("openvino") else
                         "openvino+ort" if name == "ov-bf16-encoder" else "ort", notes={"what": ABOUT[name]})
        fused = built.get("fused")
        try:
            if name in FROM_FUSED and (fused is None or fused.skipped):
                raise _Skip("needs the fused stage (ask for it too)")
            files, notes = _build_one(name, base, fused, model, out / name, target, isa, calibration, tokens,
                                      tokenizer)
            st.files, st.notes = files, {**st.notes, **notes}
            if name in ("openvino-bf16", "ov-bf16-encoder"):
                st.precision = "bf16"
            elif st.runtime == "openvino":
                st.precision = "f32"
        except _Skip as e:
            st.skipped = str(e)
        except EdgeoptError as e:
            st.skipped = f"failed: {e}"
        result.append(st)
        built[name] = st
    return [s for s in result if s.name == "pytorch" or s.name in stages]


class _Skip(Exception):
    """A stage the target rules out or that has nothing to calibrate on."""


def _build_one(name: str, base: SpeechStage, fused: SpeechStage | None, model: Any, folder: Path, target: Any,
               isa: set[str], calibration: list[np.ndarray] | None, tokens: W.Tokens | None,
               tokenizer: Any) -> tuple[dict[str, Path], dict[str, Any]]:
    files: dict[str, Path] = {}
    notes: dict[str, Any] = {}
    if name in ("openvino-bf16", "ov-bf16-encoder") and not {"amx_bf16", "avx512_bf16"} & isa:
        raise _Skip("no bf16 arithmetic on this CPU (neither AMX nor AVX512-BF16)")
    if name == "fused-int8":
        assert fused is not None
        base = fused
    elif name in FROM_FUSED:  # int8-encoder, ov-bf16-encoder: the fused fp32 decoder, shared (not copied)
        assert fused is not None
        files["decoder"] = fused.files["decoder"]
        notes["decoder"] = {"from": "fused", "precision": "fp32"}
    feeds = None
    if name == "openvino-int8":
        if not calibration or tokens is None or tokenizer is None:
            raise _Skip("no calibration utterances given")
        feeds = calibration_feeds(base, calibration, tokens, tokenizer, per_utterance=0)
    for comp in ("encoder", "decoder"):
        if comp in files:
            continue
        src = fused if name == "int8-encoder" else base
        art = _component(src.files[comp], model)
        d = folder / comp
        if name == "fused":
            res, n, w = _run_pass("graph.fuse", {"rules": "transformer", "ort_transformer": False}, art, d, target)
            notes[comp] = {"fusions": n.get("fusions", {}), "warnings": w}
        elif name == "ort-transformers":
            res, n, w = _ort_transformers(art, d, target)
            notes[comp] = {"fusions": n.get("fusions", {}), "model_type": n.get("model_type"), "warnings": w}
        elif name in ("int8-dynamic", "fused-int8", "int8-encoder"):
            res, n, w = _run_pass("graph.quantize_dynamic", {}, art, d, target)
            notes[comp] = {k: v for k, v in n.items() if isinstance(v, (str, int, float, bool, dict, list))}
        elif name in ("openvino", "openvino-bf16", "ov-bf16-encoder"):
            res, n, w = _run_pass("convert.openvino", {"precision": "f32" if name == "openvino" else "bf16"},
                                  art, d, target)
            notes[comp] = n.get("openvino", {})
        else:  # openvino-int8: NNCF on the encoder's real inputs; int8 weights for the decoder (OpenVINO's
            # choice for autoregressive decoders: its activations vary token by token)
            ir, _, _ = _run_pass("convert.openvino", {"precision": "f32"}, art, d / "ir", target)
            cfg = ({"samples": len(feeds[comp]), "model_type": "transformer"} if comp == "encoder"
                   else {"weights_only": True})
            res, n, w = _run_pass("openvino.quantize", cfg, ir, d, target, feeds[comp])
            notes[comp] = {k: v for k, v in n.items() if isinstance(v, (str, int, float, bool, dict, list))}
        files[comp] = Path(res.path)
    return files, notes


def _ort_transformers(art: Any, d: Path, target: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """ONNX Runtime's transformer optimizer alone (no edgeopt rules) through graph.fuse, with the model type
    ONNX Runtime's own Whisper tooling uses (bart); where its bart fusions fail on a graph (they break the
    decoder-with-past's topological order), the bert fusions, with a warning saying so."""
    from edgeopt.errors import PassError

    try:
        res, n, w = _run_pass("graph.fuse", {"rules": (), "ort_transformer": "bart"}, art, d, target)
        return res, {**n, "model_type": "bart"}, w
    except PassError as e:
        res, n, w = _run_pass("graph.fuse", {"rules": (), "ort_transformer": "bert"}, art, d, target)
        return res, {**n, "model_type": "bert"}, [*w, f"bart fusions failed ({str(e)[:160]}); used bert's"]


# --- measurement -----------------------------------------------------------------------------------------------


def _child_peak(stage: SpeechStage, folder: Path | None, wave_path: Path, threads: int) -> float | None:
    """Peak RSS (MB, VmHWM) of a child process that loads `stage` and transcribes one utterance."""
    spec = json.dumps({"name": stage.name, "runtime": stage.runtime, "precision": stage.precision,
                       "files": {k: str(v) for k, v in stage.files.items()}, "folder": str(folder) if folder else None,
                       "wave": str(wave_path), "threads": threads})
    code = ("import json,sys\nfrom edgeopt.speech.stages import _child_main\n_child_main(json.loads(sys.argv[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=600)
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])
    except (IndexError, ValueError, KeyError):
        return None


def _child_main(spec: dict[str, Any]) -> None:
    """In the child: load the stage, transcribe one WAV, print {"peak_mb": VmHWM}."""
    from edgeopt.speech.audio import read_wav

    st = SpeechStage(spec["name"], spec["runtime"], {k: Path(v) for k, v in spec["files"].items()},
                     precision=spec["precision"])
    if st.runtime == "pytorch":
        model, tok, fe = W.load_whisper(spec["folder"])
    else:  # the exported graphs only: tokenizer and feature extractor, no PyTorch weights
        model, tok, fe = None, *W.load_processing(spec["folder"])
    x, _ = read_wav(spec["wave"])
    feats = W.features(fe, [x])
    runner = st.runner(spec["threads"], model)
    W.transcribe(runner, feats, W.tokens_from_folder(spec["folder"]), tok)
    hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    print(json.dumps({"peak_mb": hwm[0] / 1024 if hwm else None}))


def _torch_mb(model: Any) -> float:
    """Bytes of the model's distinct parameters and buffers (tied weights counted once), in MB."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values()) / 1e6


def measure_stages(stages: list[SpeechStage], model: Any, tokenizer: Any, fe: Any,
                   utterances: list[tuple[np.ndarray, str]], rounds: int = 3, threads: int = 2,
                   folder: Path | None = None, work: Path | None = None,
                   progress: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Per stage: transcripts, WER (vs references and vs the PyTorch baseline), medians of end-to-end time per
    utterance set, RTF, encoder ms, decoder-step ms; timing interleaved over `rounds`, the order rotating."""
    tokens = W.Tokens.of(model)
    feats = [W.features(fe, [x]) for x, _ in utterances]
    audio_s = sum(len(x) for x, _ in utterances) / W.SAMPLE_RATE
    live = [s for s in stages if not s.skipped]
    runners = {s.name: s.runner(threads, model) for s in live}
    # first pass: transcripts (also the warm-up)
    texts: dict[str, list[str]] = {}
    for s in live:
        progress(f"transcribing on {s.name}")
        texts[s.name] = [W.transcribe(runners[s.name], f, tokens, tokenizer).text for f in feats]
    times: dict[str, list[float]] = {s.name: [] for s in live}
    enc: dict[str, list[float]] = {s.name: [] for s in live}
    step: dict[str, list[float]] = {s.name: [] for s in live}
    order = [s.name for s in live]
    for r in range(rounds):
        progress(f"timing round {r + 1}/{rounds}")
        rot = order[r % len(order):] + order[:r % len(order)]
        for name in rot:
            total = 0.0
            for f in feats:
                t = W.transcribe(runners[name], f, tokens, tokenizer)
                total += t.total_ms
                enc[name].append(t.encoder_ms)
                step[name].extend(t.step_ms[1:])  # the prompt call (2 tokens, empty past) is not a token step
            times[name].append(total / 1e3)
    refs = [t for _, t in utterances]
    base = texts.get("pytorch")
    peaks: dict[str, float | None] = {}
    if folder is not None and work is not None:
        from edgeopt.speech.audio import write_wav

        wav = write_wav(work / "peak-utterance.wav", utterances[0][0])
        for s in live:
            progress(f"peak memory of {s.name}")
            peaks[s.name] = _child_peak(s, folder, wav, threads)
    rows = []
    for s in stages:
        row: dict[str, Any] = {"stage": s.name, "runtime": s.runtime, "skipped": s.skipped,
                               "size_mb": round(_torch_mb(model) if s.runtime == "pytorch" else s.size_mb, 2),
                               "notes": s.notes}
        if s.name in times:
            e2e = times[s.name]
            row.update({
                "seconds": e2e, "seconds_p50": float(np.median(e2e)), "audio_s": audio_s,
                "rtf": float(np.median(e2e)) / audio_s, "encoder_ms": float(np.median(enc[s.name])),
                "step_ms": float(np.median(step[s.name])), "transcripts": texts[s.name],
                "wer": W.wer(refs, texts[s.name]),
                "wer_vs_pytorch": W.wer(base, texts[s.name]) if base else None,
                "same_as_pytorch": texts[s.name] == base if base else None,
                "peak_rss_mb": peaks.get(s.name),
            })
        rows.append(row)
    if "pytorch" in times:
        for row in rows:
            if "seconds" in row:
                row["speedup"] = float(np.median(times["pytorch"])) / row["seconds_p50"]
    return rows
