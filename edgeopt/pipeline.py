"""Runs a Recipe stage by stage: content-hash cache, resume, measurement of every stage, gates, Ledger."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeopt import data
from edgeopt.analyze.diagnose import diagnose
from edgeopt.analyze.flops import total_flops
from edgeopt.analyze.preflight import preflight
from edgeopt.artifact import FILE_KINDS, Artifact, InputSpec
from edgeopt.diffusion.stages import (check_spec, is_diffusion, is_sd_source, load_sd_artifact,
                                      measure_diffusion_stages)
from edgeopt.errors import EdgeoptError, InputError, PassError
from edgeopt.ledger import Energy, Gate, Latency, Ledger, Stage, write_text_atomic
from edgeopt.llm.export import LLM_JSON, TOKENIZER_FILES
from edgeopt.llm.stages import is_llm, measure_llm_stages
from edgeopt.load import load_model
from edgeopt.measure import fidelity, latency, runners, size
from edgeopt.measure.latency import LatencyStats
from edgeopt.measure.energy import energy_per_inference
from edgeopt.measure import mobile
from edgeopt.measure.memory import MemoryBudgetExceeded, peak_rss_mb
from edgeopt.passes.base import PassContext
from edgeopt.executor import make_executor
from edgeopt.search.study import SearchInput, run_search
from edgeopt.search.tasks import accuracy, save_data, time_candidates
from edgeopt.steps import (apply_pass, cache_key, feeds_key, file_artifact, first_line, json_meta,
                           load_portable, portable, restore_torch)
from edgeopt.recipe import PassStep, Recipe, load_recipe, parse_recipe
from edgeopt.report.html import build_report, default_profile_stages, profile_stages
from edgeopt.report.table import to_markdown
from edgeopt.target import INT8_DOT_FLAGS, get_target
from edgeopt.versions import versions

BASELINE = "baseline"
DIGITS_DIFFUSION = "zoo:digits-diffusion"
INT8_PASSES = ("graph.quantize_dynamic", "graph.quantize_static", "graph.quantize_mixed", "openvino.quantize", "quant.qat")
LITERT_INT8 = ("dynamic_int8", "static_int8")  # convert.litert variants that compute in int8
# stage kinds the diagnosis explains: ONNX and OpenVINO are profiled; a LiteRT stage's evidence is its file, so its
# parent may be of any kind (a fixed recipe's convert.litert follows the PyTorch baseline)
DIAGNOSABLE = ("onnx", "openvino", "tflite")
INT8_EXPECTED = 1.5  # an INT8 stage gaining less than this over its parent on a CPU without int8 dot products is diagnosed


def computes_int8(pass_: str | None, kind: str, meta: dict[str, Any]) -> bool:
    """Whether a model made by `pass_` (its last pass) computes in int8: an INT8_PASSES pass, or a LiteRT file
    whose convert.litert variant computes in int8."""
    return pass_ in INT8_PASSES or (kind == "tflite" and (meta.get("litert") or {}).get("quantize") in LITERT_INT8)


@dataclass
class RunResult:
    """What `optimize` returns: the ledger, where it was written, the best stage's model, and every stage's model
    by stage name (torch stages too, which are not written to OUT)."""

    ledger: Ledger
    out_dir: Path
    best: Path | None
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # each stage's model as its pass returned it
    failed: dict[str, str] = field(default_factory=dict)  # stage -> "stage X (pass) failed: why", for passes that failed


@dataclass
class RunState:
    """What the steps of one run share: its data, the ledger being written, the earlier run's ledger (--resume),
    library versions, the progress display and the stages so far (with their models)."""

    calibration: list[data.Feed]
    evaluation: list[data.Feed]
    labels: list[Any] | None  # the evaluation data's labels (classifiers), else None
    data_key: str  # hash of the first calibration feeds: part of every stage's cache key
    ledger: Ledger
    old: Ledger | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    progress: Any = None  # a rich Progress, or None
    stages: list[tuple[Stage, Artifact]] = field(default_factory=list)
    samples: dict[str, tuple[float, ...]] = field(default_factory=dict)  # timed calls (ms) per stage, round order
    random_eval: bool = False  # fidelity is measured on random inputs (no evaluation data given or known)
    reference: list[Any] | None = None  # the baseline's first output on every evaluation feed, once computed
    data_used: dict[str, str] = field(default_factory=dict)  # what each role was fed, one line each (data.describe)
    calibration_spec: str | None = None  # the calibration data spec in effect
    limits: Any = None  # measure.mobile.MobileLimits on a simulated mobile target (pinned cores, memory budget)

    def task(self, description: str, total: int) -> Any:
        """A progress task (None without a progress display)."""
        return self.progress.add_task(description, total=total) if self.progress else None

    def advance(self, task: Any) -> None:
        if self.progress:
            self.progress.advance(task)


def _dirname(stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stage)


def stage_folder(out_dir: Path, stage: str) -> Path:
    """OUT/<stage>: refused unless it is a folder directly inside OUT other than OUT/best (never `..`, `.`, a path)."""
    name = _dirname(stage)
    folder = out_dir / name
    if name in (".", "..", "best") or name.startswith(".") or folder.resolve().parent != out_dir.resolve():
        raise InputError(f"stage {stage!r}: not a safe stage name (its folder would be {folder})")
    return folder


VAD_SOURCE = "zoo:silero-vad"


def _resolve_recipe(recipe: Recipe | str | Path | dict | None, model: Any = None) -> Recipe:
    """The recipe to run; `auto` (the default) on a diffusion model is the `diffusion` recipe (its kernel rows,
    measured on whole image runs): the ONNX / INT8 search has nothing to time in a denoising loop."""
    if recipe in (None, "auto") and (is_sd_source(model) or model == DIGITS_DIFFUSION):
        return load_recipe("diffusion")
    if recipe in (None, "auto") and model == VAD_SOURCE:
        return load_recipe("vad")  # its gate: frame decisions agreeing with the original's
    if recipe is None:
        return load_recipe("auto")
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    return load_recipe(recipe)


def _load_source(source: Any, recipe: Recipe) -> Artifact:
    """The model to optimize: `source`, else the recipe's model.source, shaped by the recipe's measure settings."""
    if source is None:
        if recipe.model is None:
            raise InputError("no model given: pass MODEL or set model.source in the recipe")
        source = recipe.model.source
    if is_sd_source(source):  # Stable Diffusion's three models as one torch Artifact (edgeopt.diffusion.stages)
        art = load_sd_artifact(source, recipe.measure.diffusion.size)
    else:
        art = load_model(source, seq_len=recipe.measure.seq_len, batch=recipe.measure.batch)
    if is_diffusion(art):  # settings the model cannot run with stop here, before any pass
        check_spec(art, recipe.measure.diffusion)
    return art


class Pipeline:
    """One run of a recipe into `out_dir` (see `optimize`)."""

    def __init__(self, recipe: Recipe, out_dir: Path, target: Any, console: Any = None, progress: bool = True,
                 executor: Any = None):
        self.recipe = recipe
        self.executor = executor if executor is not None else make_executor("local")
        self.out_dir = out_dir
        self.target = target
        self.console = console
        self.show_progress = progress
        self.ledger_path = out_dir / "ledger.json"

    # -- helpers -------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if not self.show_progress or self.console is None:
            return None
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=True)

    # -- the run -------------------------------------------------------------------------------
    def run(self, source: Any = None, resume: bool = False) -> RunResult:
        r = self.recipe
        # a fresh run (no --resume) replaces the previous one's records (its stage folders are rewritten)
        old = Ledger.load(self.ledger_path) if resume and self.ledger_path.exists() else None
        art = _load_source(source, r)
        m = r.measure
        cal = data.resolve(r.data.calibration, art, seq_len=m.seq_len, batch=m.batch, role="calibration",
                           default_slice=slice(0, 64))
        ev = data.resolve(r.data.eval, art, seq_len=m.seq_len, batch=m.batch, role="eval",
                          default_slice=slice(64, 320), count=m.fidelity_samples)
        cal, _ = data.split_labels(cal)
        ev, labels = data.split_labels(ev)
        eval_spec = data.effective_spec(r.data.eval, art, slice(64, 320), m.fidelity_samples)
        cal_spec = data.effective_spec(r.data.calibration, art, slice(0, 64))
        random_eval = eval_spec.startswith("random:")
        self.out_dir.mkdir(parents=True, exist_ok=True)  # only once model and data are known to be good
        ledger = Ledger(recipe=r.to_dict(), target=self.target.to_dict() if hasattr(self.target, "to_dict") else {},
                        environment=environment(self.target))
        run = RunState(calibration=cal, evaluation=ev, labels=labels, data_key=feeds_key(cal[:8]), ledger=ledger,
                       old=old, versions=versions(), progress=self._progress(), random_eval=random_eval)
        run.data_used = {"calibration": data.describe(cal_spec, art), "evaluation": data.describe(eval_spec, art)}
        run.calibration_spec = cal_spec
        run.limits = mobile.limits_for(self.target, threads=m.threads, memory_mb=m.memory_budget_mb)
        if run.limits is not None:
            ledger.environment["simulation"] = run.limits.to_dict()
        if run.progress is not None:
            run.progress.start()
        try:
            return self._run_stages(art, run)
        finally:
            if run.progress is not None:
                run.progress.stop()

    def _run_stages(self, art: Artifact, run: RunState) -> RunResult:
        """The baseline, then each step of the recipe (reused or run), then measurement, best and outputs."""
        base_stage = Stage(name=BASELINE, artifact=art.describe(), versions=run.versions,
                           notes={"meta": json_meta(art.meta), "data": run.data_used})
        if run.random_eval and not (is_llm(art) or is_diffusion(art)):  # judged on their own text / images
            base_stage.warnings.append("fidelity measured on random inputs: no evaluation data was given and the "
                                       "model has none of its own (pass --data, or data.eval in the recipe)")
        run.stages.append((base_stage, art))
        run.ledger.put(base_stage)
        current: Artifact | None = art
        by_name: dict[str, Artifact] = {BASELINE: art}
        failed: dict[str, str] = {}  # a failed step's branch stops; the other branches go on
        last = BASELINE  # the step whose model the next step without `from:` takes
        for step in self.recipe.passes:
            if step.source is not None:
                if step.source in failed or (step.source not in by_name and self._known_stage(step.source)):
                    self._skip(run, step, step.source, failed)
                    current, last = None, step.name
                    continue
                if step.source not in by_name:
                    raise PassError(f"stage {step.name}: its input stage {step.source!r} did not finish")
                current = by_name[step.source]
            elif current is None:  # the previous step failed or was skipped: this step would have taken its model
                self._skip(run, step, last, failed)
                last = step.name
                continue
            if step.when is not None and current.kind != step.when:
                note = f"step {step.name} ({step.pass_name}) skipped: it runs on {step.when} models, this one is {current.kind}"
                run.stages[0][0].notes.setdefault("skipped_steps", []).append(note)
                self._say(f"[dim]{note}[/dim]")
                continue
            parent = step.source or run.stages[-1][0].name
            stage_dir = stage_folder(self.out_dir, step.name)  # an unsafe stage name is refused, reused or not
            key = cache_key(current.sha256, step.pass_name, step.config, run.data_key,
                             getattr(self.target, "name", ""))
            reused = self._reuse(run.old, step.name, key, current, run.calibration)
            if reused is not None:
                stage, current = reused
                self._say(f"[dim]stage {step.name}: cached ({key[:12]})[/dim]")
            else:
                try:
                    stage, current = self._run_step(step, current, run, parent=parent, key=key, stage_dir=stage_dir)
                except PassError as e:  # recorded as failed in the ledger; its branch stops, the others go on
                    failed[step.name] = str(e)
                    self._say(f"[red]{e}[/red]")
                    current, last = None, step.name
                    continue
            run.stages.append((stage, current))
            run.ledger.put(stage)
            if reused is None:
                run.ledger.save(self.ledger_path)
            by_name[step.name] = current
            last = step.name
        if self.recipe.search is not None:
            if failed:
                raise PassError(next(iter(failed.values())) + " (the search starts from the recipe's last stage)")
            self._search(current, run)
        self._measure(run)
        best = self._choose_best(run)
        profiles: dict[Any, Any] = {}  # one profile per model, shared by the stages' and the trials' diagnoses
        self._diagnose(run, profiles)
        self._diagnose_trials(run, profiles)
        run.ledger.save(self.ledger_path)
        self._write_outputs(run.ledger, run.stages, best)
        return RunResult(ledger=run.ledger, out_dir=self.out_dir, best=(self.out_dir / "best") if best else None,
                         artifacts={s.name: a for s, a in run.stages}, failed=failed)

    def _known_stage(self, name: str) -> bool:
        return name == BASELINE or any(p.name == name for p in self.recipe.passes)

    def _skip(self, run: RunState, step: PassStep, source: str, failed: dict[str, str]) -> None:
        """Record `step` as skipped: the stage it takes its model from failed (or was skipped itself)."""
        stage = Stage(name=step.name, **{"pass": step.pass_name}, config=step.config, versions=run.versions,
                      parent=source, status="skipped", error=f"its input stage {source} did not finish")
        failed[step.name] = f"stage {step.name} ({step.pass_name}) skipped: its input stage {source} did not finish"
        run.ledger.put(stage)
        run.ledger.save(self.ledger_path)
        self._say(f"[dim]{failed[step.name]}[/dim]")

    def _run_step(self, step: PassStep, current: Artifact, run: RunState, *, parent: str, key: str,
                  stage_dir: Path) -> tuple[Stage, Artifact]:
        """Run one recipe step's pass on `current` into `stage_dir`: (its finished Stage, its model).
        A failure is recorded in the ledger and raised as PassError (an interrupt is recorded and re-raised)."""
        ctx = PassContext(stage_dir=stage_dir, target=self.target, calibration=run.calibration,
                          evaluation=run.evaluation, progress=run.progress, baseline=run.stages[0][1],
                          measure=self.recipe.measure, gates=self.recipe.gates, executor=self.executor)
        stage = Stage(name=step.name, **{"pass": step.pass_name}, config=step.config, cache_key=key,
                      versions=run.versions, parent=parent)
        t0 = time.perf_counter()
        self._say(f"stage {step.name}: {step.pass_name} …")
        try:
            out = apply_pass(step.pass_name, step.config, current, ctx)
        except KeyboardInterrupt:
            stage.status, stage.error = "interrupted", "interrupted by the user"
            stage.duration_s = time.perf_counter() - t0
            run.ledger.put(stage)
            run.ledger.save(self.ledger_path)
            raise
        except EdgeoptError as e:
            self._fail(run.ledger, stage, t0, str(e))
            raise PassError(f"stage {step.name} ({step.pass_name}) failed: {e}") from None
        stage.duration_s = time.perf_counter() - t0
        stage.artifact = out.describe()
        stage.notes = {**ctx.notes, "meta": json_meta(out.meta)}
        stage.warnings = list(ctx.warnings)
        return stage, out

    def _fail(self, ledger: Ledger, stage: Stage, t0: float, error: str) -> None:
        stage.status, stage.error = "failed", error
        stage.duration_s = time.perf_counter() - t0
        ledger.put(stage)
        ledger.save(self.ledger_path)

    def _reuse(self, old: Ledger | None, name: str, key: str, parent: Artifact | None = None,
               calibration: list[dict[str, Any]] = ()) -> tuple[Stage, Artifact] | None:
        """A finished stage of an earlier run with the same cache key whose model is intact: an ONNX /
        OpenVINO file with the recorded sha256, or torch weights (safetensors) that, loaded into the
        architecture rebuilt from `parent` (the stage's input), hash to the recorded sha256."""
        if old is None:
            return None
        prev = old.stage(name)
        if prev is None or prev.status != "done" or prev.cache_key != key or not prev.artifact:
            return None
        path, kind = prev.artifact.get("path"), prev.artifact.get("kind")
        if not path or not Path(path).exists():
            return None
        if kind == "torch":
            art = self._restore_torch(prev, Path(path), parent, calibration)
        elif kind in FILE_KINDS:
            art = stage_artifact(prev)
        else:
            return None
        if art is None or art.sha256 != prev.artifact.get("sha256"):
            return None
        stage = prev.model_copy(deep=True)
        stage.latency_ms = stage.peak_rss_mb = stage.energy_mj = None
        stage.notes = {**stage.notes, "cached": True}
        return stage, art

    def _restore_torch(self, prev: Stage, path: Path, parent: Artifact | None,
                       calibration: list[dict[str, Any]]) -> Artifact | None:
        """The torch model a finished stage saved (see Artifact.from_weights), or None (the pass runs again)."""
        if parent is None:
            return None
        ctx = PassContext(stage_dir=path.parent, target=self.target, calibration=list(calibration),
                          measure=self.recipe.measure, gates=self.recipe.gates)
        try:
            return restore_torch(path, parent, ctx, prev.artifact.get("inputs"),
                                 {**parent.meta, **prev.notes.get("meta", {})})
        except Exception as e:  # any failure to rebuild (a builder, torch-pruning, a torn file): run the pass again
            self._say(f"[dim]stage {prev.name}: saved weights not reused ({first_line(e, 200)})[/dim]")
            return None

    # -- the candidate search -------------------------------------------------------------------
    def _search(self, root: Artifact, run: RunState) -> None:
        """Search the target's candidates from `root` (the fixed steps' last model); the trials on the front
        become stages (parent: the root's stage), measured with the others; the whole search goes to the ledger."""
        if root.kind != "onnx":
            raise InputError(f"search: starts from an ONNX model, but the recipe's steps end with a {root.kind} "
                             "model (add convert.onnx before it)")
        base_art = run.stages[0][1]
        root_name = next(s.name for s, a in reversed(run.stages) if a is root)
        inp = SearchInput(root=root, root_name=root_name, baseline=base_art, calibration=run.calibration,
                          evaluation=run.evaluation, labels=run.labels, reference=self._reference(run),
                          data_key=run.data_key, target=self.target, measure=self.recipe.measure,
                          gates=self.recipe.gates, spec=self.recipe.search, out_dir=self.out_dir,
                          executor=self.executor, console=self.console, progress=run.progress,
                          resume=run.old is not None, calibration_spec=run.calibration_spec)
        self._say(f"search: {len(inp.spec.families) or 'all'} famil{'y' if len(inp.spec.families) == 1 else 'ies'}, "
                  f"budget {inp.spec.trials} trials"
                  + (f" / {inp.spec.minutes:g} min" if inp.spec.minutes else "")
                  + f", executor {getattr(self.executor, 'name', 'local')}")
        try:
            result = run_search(inp)
        finally:
            run.ledger.save(self.ledger_path)
        taken = {s.name for s, _ in run.stages}
        for rec in result.front:
            name = rec["label"] if rec["label"] not in taken else f"{rec['label']}-t{rec['number']}"
            art = load_portable(rec["artifact"], seq_len=self.recipe.measure.seq_len, batch=self.recipe.measure.batch)
            last_pass, last_cfg = rec["chain"][-1]
            stage = Stage(name=name, **{"pass": last_pass}, config=last_cfg, parent=root_name,
                          artifact=art.describe(), versions=run.versions, cache_key=rec["steps"][-1]["key"],
                          duration_s=rec.get("duration_s", 0.0),
                          notes={"meta": json_meta(art.meta), "search": {k: rec[k] for k in (
                              "number", "family", "params", "chain", "speedup", "fidelity_value")}},
                          warnings=[w for st in rec.get("steps", []) for w in st.get("warnings", [])])
            taken.add(name)
            run.stages.append((stage, art))
            run.ledger.put(stage)
        run.ledger.search = result.summary

    def _reference(self, run: RunState) -> list[Any]:
        """The baseline's first output on every evaluation feed (computed once per run)."""
        if run.reference is None:
            runner = runners.make_runner(run.stages[0][1], threads=self._threads(run),
                                         spinning=self.recipe.measure.spinning)
            try:
                run.reference = self._outputs(runner, run, "fidelity (baseline)")
            finally:
                runner.close()
        return run.reference

    # -- measurement -----------------------------------------------------------------------------
    def _measure(self, run: RunState) -> None:
        """Fidelity against the baseline, size, then latency of all stages interleaved in one process,
        then peak memory per stage in a child process."""
        m = self.recipe.measure
        if is_llm(run.stages[0][1]):  # prefill/decode sessions, tokens/s, teacher-forced fidelity (edgeopt.llm)
            self._measure_size(run)

            def task(description: str, total: int) -> Any:
                t = run.task(description, total)
                return lambda: run.advance(t)

            run.samples.update(measure_llm_stages(run.stages, m.llm, self.recipe.gates, self._threads(run), task,
                                                  run.ledger.environment))
            return
        if is_diffusion(run.stages[0][1]):  # images from the same seeds, per-component latency (edgeopt.diffusion)
            self._measure_size(run)

            def task(description: str, total: int) -> Any:
                t = run.task(description, total)
                return lambda: run.advance(t)

            run.samples.update(measure_diffusion_stages(run.stages, m.diffusion, self.recipe.gates, self._threads(run),
                                                        task, run.ledger.environment, self.out_dir))
            return
        with mobile.pinned(run.limits):  # a simulated mobile target: runners (and their thread pools) made pinned
            stage_runners = self._measure_fidelity(run)
        self._measure_size(run)
        timed = {s.name: stage_runners[s.name] for s, a in run.stages
                 if s.name in stage_runners and (a.kind != "torch" or m.torch_latency)}
        self._preflight(run)
        if getattr(self.executor, "name", "local") != "local":
            self._measure_remote(run, timed)
            return
        with mobile.pinned(run.limits):
            self._measure_latency(run, timed)
        if run.limits is not None:
            stray = mobile.stray_threads(run.limits)
            if stray:
                run.stages[0][0].warnings.append(f"simulated mobile: {len(stray)} thread(s) created before pinning "
                                                 "could run outside the simulated cores")
        if m.memory:
            self._measure_memory(run)

    def _threads(self, run: RunState) -> int:
        """The intra-op threads every runner gets: the recipe's, or the simulated mobile target's (at most its cores)."""
        return run.limits.threads if run.limits is not None else self.recipe.measure.threads

    def _measure_fidelity(self, run: RunState) -> dict[str, Any]:
        """Each stage's outputs on the evaluation data against the baseline's: fidelity, accuracy (labelled
        data) and the gates. Returns the runner made for each stage, by stage name."""
        m, gates = self.recipe.measure, self.recipe.gates
        base_stage, base_art = run.stages[0]
        base_runner = runners.make_runner(base_art, threads=self._threads(run), spinning=m.spinning)
        ref = run.reference if run.reference is not None else self._outputs(base_runner, run, "fidelity (baseline)")
        run.reference = ref
        base_acc = accuracy(ref, run.labels)
        threshold = base_art.meta.get("decision_threshold")  # probability outputs decided at a threshold (VAD)
        base_stage.fidelity = fidelity.compare(ref, ref, threshold)
        if base_acc is not None:
            base_stage.accuracy = {"top1": base_acc}
            base_stage.fidelity["accuracy_drop"] = 0.0
        base_stage.gate = Gate(passed=True, why="baseline")
        made = {base_stage.name: base_runner}
        for stage, art in run.stages[1:]:
            try:
                runner = made[stage.name] = runners.make_runner(art, threads=self._threads(run), spinning=m.spinning)
            except runners.NotMeasurableHere as e:  # Core ML off Apple: kept, checked structurally, never timed
                stage.notes["not_measured"] = str(e).split(": ", 1)[-1]
                continue
            outs = self._outputs(runner, run, f"fidelity ({stage.name})")
            stage.fidelity = fidelity.compare(ref, outs, threshold)
            acc = accuracy(outs, run.labels)
            if acc is not None:
                stage.accuracy = {"top1": acc}
                stage.fidelity["accuracy_drop"] = 100.0 * (base_acc - acc)
            passed, why = fidelity.gate(stage.fidelity, gates)
            stage.gate = Gate(passed=passed, why=why)
        return made

    @staticmethod
    def _outputs(runner: Any, run: RunState, description: str) -> list[Any]:
        """The first output of `runner` on every evaluation feed."""
        task = run.task(description, len(run.evaluation))
        outs = []
        for f in run.evaluation:
            outs.append(runner.run(f)[0])
            run.advance(task)
        return outs

    def _measure_size(self, run: RunState) -> None:
        """Parameters, size on disk (raw and deflated) and FLOPs of every stage."""
        for stage, art in run.stages:
            stage.params = size.params_count(art)
            stage.notes["size"] = size.size_report(art)
            stage.flops = _flops(art, self.recipe.measure)

    def _measure_latency(self, run: RunState, timed: dict[str, Any]) -> None:
        """Latency of the `timed` runners interleaved in one process on the first evaluation feed, and an
        energy figure per stage; every runner made for the run is closed afterwards."""
        m = self.recipe.measure
        feed = run.evaluation[0]
        stats = latency.measure_interleaved(timed, feed, warmup=m.warmup, runs=m.runs, progress=run.progress,
                                            block=m.block, settle=m.settle, pause_s=m.pause_ms / 1000)
        by_name = {s.name: s for s, _ in run.stages}
        for name, st in stats.items():
            stage, runner = by_name[name], timed[name]
            run.samples[name] = tuple(st.samples)
            stage.latency_ms = Latency(**st.to_dict(), runtime=runner.name,
                                       threads=getattr(runner, "threads", m.threads), batch=m.batch,
                                       shapes={k: list(v.shape) for k, v in feed.items()})
            if m.energy:
                e = energy_per_inference(st.p50, self.target, run_fn=lambda r=runner: r.run(feed))
                stage.energy_mj = Energy(value=e["value"], method=e["method"])
        for r in timed.values():
            if hasattr(r, "close"):
                r.close()

    def _measure_remote(self, run: RunState, timed: dict[str, Any]) -> None:
        """Latency (interleaved) and peak memory of the stages as one measure task of the executor: it runs only
        on a node that offers the target's resource, one measurement at a time per node."""
        m = self.recipe.measure
        for r in timed.values():  # the local runners served fidelity; timing happens on the target's node
            r.close()
        arts = {s.name: a for s, a in run.stages if s.name in timed}
        data_file = (Path(self.recipe.search.cache) if self.recipe.search and self.recipe.search.cache
                     else self.out_dir / "cas").resolve() / f"data-{run.data_key}.npz"
        if not data_file.exists():
            save_data(data_file, {"evaluation": run.evaluation[:1]})
        job = {"data": str(data_file), "threads": m.threads, "warmup": m.warmup, "runs": m.runs, "block": m.block,
               "settle": m.settle, "pause_ms": m.pause_ms, "spinning": m.spinning, "memory": m.memory,
               "seq_len": m.seq_len, "batch": m.batch, "models": {n: portable(a) for n, a in arts.items()}}
        res = self.executor.measure(time_candidates, job).result()
        by_name = {s.name: s for s, _ in run.stages}
        feed = run.evaluation[0]
        for name, samples in res["samples"].items():
            st = LatencyStats.from_samples(samples)
            stage = by_name[name]
            run.samples[name] = tuple(st.samples)
            stage.latency_ms = Latency(**st.to_dict(), runtime=timed[name].name, threads=m.threads, batch=m.batch,
                                       shapes={k: list(v.shape) for k, v in feed.items()})
            if name in res["peak_mb"]:
                stage.peak_rss_mb = res["peak_mb"][name]
        for name, why in res["errors"].items():
            by_name[name].warnings.append(why)

    def _preflight(self, run: RunState) -> None:
        """Benchmark conditions that would inflate or hide gains (edgeopt.analyze.preflight), checked on the
        baseline and the first file-backed stage, recorded on the baseline."""
        m = self.recipe.measure
        lines: dict[str, str] = {}  # one line per condition ("shapes", "load", …): the first model's
        firsts = [run.stages[0][1]] + [a for _, a in run.stages[1:] if a.kind in FILE_KINDS and a.kind != "coreml"][:1]
        for art in firsts:
            for w in preflight(art, feed=run.evaluation[0], target=self.target, threads=m.threads,
                               warmup=m.warmup, runs=m.runs, spinning=m.spinning):
                lines.setdefault(w.split(":", 1)[0], w)
        if lines:
            run.stages[0][0].notes["preflight"] = list(lines.values())

    def _measure_memory(self, run: RunState) -> None:
        """Peak RSS of each stage in a child process that loads it and runs the first evaluation feed."""
        threads, feed = self._threads(run), run.evaluation[0]
        task = run.task("peak memory (child process per stage)", len(run.stages))
        for stage, art in run.stages:
            if stage.notes.get("not_measured"):
                run.advance(task)
                continue
            try:
                if run.limits is not None:  # pinned child under the simulated memory budget
                    res = mobile.peak_memory(art, feed, run.limits)
                    stage.notes["memory_budget"] = {"budget_mb": res.budget_mb, "charged_mb": res.charged_mb}
                else:
                    res = peak_rss_mb(art, feed, threads=threads, budget_mb=self.recipe.measure.memory_budget_mb)
                stage.peak_rss_mb = getattr(res, "peak_mb", res)
                if hasattr(res, "import_mb"):
                    stage.notes["rss_import_mb"] = res.import_mb
            except MemoryBudgetExceeded as e:  # over the simulated device's memory: the stage fails
                stage.status, stage.error = "failed", str(e)
                if run.stages[0][0] is stage:
                    stage.warnings.append(f"the baseline itself is over the simulated memory budget: {e}")
            except EdgeoptError as e:
                stage.warnings.append(f"peak memory not measured: {e}")
            run.advance(task)

    def _choose_best(self, run: RunState) -> Stage | None:
        """The stage `choose_best` picks (see there); the reasons it passed a faster stage over go to that
        stage's warnings, so the table, report.md and the HTML report say why it was not chosen."""
        m = self.recipe.measure
        if is_diffusion(run.stages[0][1]):  # PyTorch stages, each timed once per round-robin round
            kinds, per_turn = (*FILE_KINDS, "torch"), 1
        else:
            kinds, per_turn = FILE_KINDS, m.block - m.settle
        best, passed_over = choose_best([s for s, _ in run.stages], {s.name: a.kind for s, a in run.stages},
                                        run.samples, per_turn=per_turn, eligible=kinds)
        for stage, why in passed_over:
            stage.warnings.append(why)
        run.ledger.best = best.name if best else None
        return best

    def _diagnose(self, run: RunState, profiles: dict[Any, Any]) -> None:
        """A diagnosis (edgeopt.analyze.diagnose) for every ONNX / OpenVINO / LiteRT stage that is not faster than its
        parent beyond the measurement's spread, and for every INT8 stage that gains less than INT8 should
        (`_weak_int8`): what changed per op, what ran in which precision, and the hardware facts that explain it."""
        m = self.recipe.measure
        by = {s.name: (s, a) for s, a in run.stages}
        per_turn = m.block - m.settle
        for stage, art in run.stages[1:]:
            if stage.status != "done" or stage.parent not in by:
                continue
            pstage, part = by[stage.parent]
            a, b = run.samples.get(pstage.name), run.samples.get(stage.name)
            if (not a or not b or len(a) != len(b) or len(a) % per_turn or art.kind not in DIAGNOSABLE
                    or (part.kind not in DIAGNOSABLE and art.kind != "tflite")):
                continue
            sp = latency.paired_speedup(a, b, per_turn=per_turn)
            if sp.lo > 1 and not self._weak_int8(computes_int8(stage.pass_, art.kind, art.meta), sp.ratio):
                continue
            task = run.task(f"diagnosis ({stage.name} vs {pstage.name})", 1)
            d = diagnose(part, art, self.target, feed=run.evaluation[0], threads=m.threads,
                         speedup=(sp.ratio, sp.lo, sp.hi), spinning=m.spinning, stage_name=stage.name,
                         parent_name=pstage.name, profile_cache=profiles)
            stage.notes["diagnosis"] = d.to_dict()
            run.advance(task)

    def _diagnose_trials(self, run: RunState, profiles: dict[Any, Any]) -> None:
        """A diagnosis for the search's trials that did not become stages (off the front) but explain what this
        target does not gain: per family, its fastest finished ONNX / OpenVINO / LiteRT trial when that trial is
        not faster than the search root beyond its interval, or is an INT8 trial that gains less than INT8 should
        here (`_weak_int8`; e.g. OpenVINO INT8 on a CPU without VNNI). Stored in the trial's record
        (`ledger.search["trials"][i]["diagnosis"]`), reported with the stages' diagnoses; a resumed run keeps it."""
        srch = run.ledger.search or {}
        by = {s.name: a for s, a in run.stages}
        root = by.get(srch.get("root"))
        if root is None or root.kind not in DIAGNOSABLE or not run.evaluation:
            return
        m = self.recipe.measure
        pick: dict[str, dict[str, Any]] = {}
        for rec in srch.get("trials", []):
            sp, art = rec.get("speedup") or {}, rec.get("artifact") or {}
            if rec.get("status") != "done" or rec.get("front") or not sp or art.get("kind") not in DIAGNOSABLE:
                continue
            int8 = computes_int8(rec["chain"][-1][0] if rec.get("chain") else None, art["kind"], art.get("meta") or {})
            if sp.get("lo", sp["ratio"]) > 1 and not self._weak_int8(int8, sp["ratio"]):
                continue
            fam = rec.get("family", "")
            if fam not in pick or sp["ratio"] > pick[fam]["speedup"]["ratio"]:
                pick[fam] = rec
        for rec in pick.values():
            if rec.get("diagnosis"):
                continue
            name = f"trial {rec['number']} ({rec.get('label') or rec.get('family')})"
            try:
                art = load_portable(rec["artifact"], seq_len=m.seq_len, batch=m.batch)
            except Exception as e:  # a trial file gone from the cache: no diagnosis, said why
                rec["diagnosis_error"] = first_line(e, 200)
                continue
            sp = rec["speedup"]
            task = run.task(f"diagnosis ({name} vs {srch['root']})", 1)
            d = diagnose(root, art, self.target, feed=run.evaluation[0], threads=m.threads,
                         speedup=(sp["ratio"], sp.get("lo", sp["ratio"]), sp.get("hi", sp["ratio"])),
                         spinning=m.spinning, stage_name=name,
                         parent_name=srch["root"], profile_cache=profiles)
            rec["diagnosis"] = d.to_dict()
            run.advance(task)

    def _weak_int8(self, int8: bool, ratio: float) -> bool:
        """An INT8 stage (see `computes_int8`) on a target without int8 dot-product instructions (VNNI, AMX, dotprod,
        i8mm) that gains less than INT8_EXPECTED over its parent: faster, but not by what INT8 buys where the
        hardware has them, so it is diagnosed too (the diagnosis names the missing instructions and the measured
        GEMM peaks)."""
        dot = any(f in getattr(self.target, "isa", ()) for f in INT8_DOT_FLAGS)
        return int8 and not dot and ratio < INT8_EXPECTED

    def _write_outputs(self, ledger: Ledger, stages: list[tuple[Stage, Artifact]], best: Stage | None) -> None:
        if best is not None:
            art = next(a for s, a in stages if s is best)
            dst = self.out_dir / "best"
            tmp = self.out_dir / ".best.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            for f in size.model_files(art):
                shutil.copy2(f, tmp / f.name)
            if art.kind == "tflite" and art.meta.get("llm"):  # llm.json and the tokenizer: `edgeopt generate best/`
                for f in art.path.parent.iterdir():
                    if f.is_file() and f.name in (LLM_JSON, *TOKENIZER_FILES):
                        shutil.copy2(f, tmp / f.name)
            (tmp / "stage.json").write_text(json.dumps(best.to_json(), indent=2, default=str))
            if dst.exists():
                shutil.rmtree(dst)
            tmp.replace(dst)
        meta = {
            "best": ledger.best,
            "passes": [{"stage": s.name, "pass": s.pass_, "config": s.config} for s, _ in stages[1:]],
            "versions": stages[0][0].versions,
            "target": ledger.target.get("name"),
            "environment": ledger.environment,
            "figures": {s.name: {"latency_p50_ms": s.latency_ms.p50 if s.latency_ms else None,
                                 "size_bytes": (s.artifact or {}).get("size_bytes"),
                                 "peak_rss_mb": s.peak_rss_mb,
                                 "mean_cosine": (s.fidelity or {}).get("mean_cosine"),
                                 "min_cosine": (s.fidelity or {}).get("min_cosine"),
                                 "gate": s.gate.passed if s.gate else None} for s, _ in stages},
        }
        write_text_atomic(self.out_dir / "metadata.json", json.dumps(meta, indent=2, default=str))
        write_text_atomic(self.out_dir / "report.md", to_markdown(ledger))
        profiles = None
        try:  # per-layer latency for the report: the first and the fastest ONNX stage
            names = default_profile_stages(ledger)
            if names:
                profiles = profile_stages(self.out_dir, names, threads=self.recipe.measure.threads)
        except EdgeoptError as e:
            ledger.stages[0].warnings.append(f"per-layer profile not measured: {e}")
        build_report([(self.out_dir.name or "run", ledger)], self.out_dir / "report.html", profiles=profiles)


def choose_best(stages: list[Stage], kinds: dict[str, str], samples: dict[str, Sequence[float]],
                per_turn: int = 1, eligible: Sequence[str] = FILE_KINDS) -> tuple[Stage | None, list[tuple[Stage, str]]]:
    """The stage to ship, and the faster stages passed over with the reason.

    Eligible: finished stages of the `eligible` kinds (file-backed: ONNX, OpenVINO, LiteRT, ncnn; a diffusion run
    adds its PyTorch stages) that passed their gates and were timed. Start from the fastest
    (p50); while its parent is eligible too and the paired speedup over the parent, measured in the same
    interleaved session, has a 95% interval that does not exclude 1 (`measure.latency.paired_speedup`),
    the simpler parent wins: a stage must beat its parent by more than the measurement's spread. A failed
    gate is never chosen.
    """
    ok = {s.name: s for s in stages if s.status == "done" and s.gate and s.gate.passed
          and kinds.get(s.name) in eligible and s.latency_ms is not None}
    if not ok:
        return None, []
    best = min(ok.values(), key=lambda s: s.latency_ms.p50)
    passed_over: list[tuple[Stage, str]] = []
    while best.parent in ok:
        parent = ok[best.parent]
        a, b = samples.get(parent.name), samples.get(best.name)
        if not a or not b or len(a) != len(b) or len(a) % per_turn:
            break  # not timed side by side: nothing to compare the spread with
        sp = latency.paired_speedup(a, b, per_turn=per_turn)
        if sp.lo > 1:
            break
        passed_over.append((best, f"not chosen: {sp.ratio:.2f}× its parent {parent.name} (95% interval "
                                  f"{sp.lo:.2f}–{sp.hi:.2f} includes 1), so the simpler stage wins"))
        best = parent
    return best, passed_over


def stage_artifact(stage: Stage) -> Artifact:
    """The model a finished file-backed stage (onnx, openvino, tflite, ncnn, coreml) wrote, with its meta."""
    if not stage.artifact or stage.artifact.get("kind") not in FILE_KINDS or not stage.artifact.get("path"):
        raise InputError(f"stage {stage.name}: no model file recorded")
    return file_artifact(stage.artifact, stage.notes.get("meta", {}))


def _flops(art: Artifact, m: Any) -> int | None:
    if art.kind != "onnx":
        return None
    try:
        return total_flops(art.path, batch=m.batch, seq_len=m.seq_len)
    except Exception:
        return None


def environment(target: Any) -> dict[str, Any]:
    """CPU model, ISA flags, cores, memory and runtimes: printed next to every figure."""
    import platform

    env = {"platform": platform.platform(), "machine": platform.machine()}
    if target is not None:
        for k in ("cpu_model", "isa", "cores", "memory_gb", "runtimes"):
            if hasattr(target, k):
                v = getattr(target, k)
                env[k] = list(v) if isinstance(v, tuple) else v
    return env


def optimize(model: Any = None, recipe: Recipe | str | Path | dict | None = None, target: str | None = None,
             out: str | Path = "runs/latest", resume: bool = False, console: Any = None,
             progress: bool = True, data: str | None = None, search: dict[str, Any] | None = None,
             executor: str = "local", ray_address: str | None = None) -> RunResult:
    """Run `recipe` (a Recipe, a YAML path, a bundled recipe name or a dict; default: the `auto` recipe, which
    searches the target's candidates and needs no data) on `model` into `out`.

    `model` is anything edgeopt.load.load_model accepts, or None for the recipe's model.source;
    `target` overrides the recipe's target; `data` (a data spec: an .npz, a .txt, zoo:…, random:N) overrides
    the recipe's calibration and evaluation data; `search` overrides fields of the recipe's search section
    (trials, minutes, train_minutes, families, …; a recipe without one gets one). `executor` is "local" or
    "ray" (`ray_address`: an existing cluster; none starts a local one). Returns the ledger and where the best
    model was copied.
    """
    r = _resolve_recipe(recipe, model)
    if data is not None or search:
        d = r.to_dict()
        if data is not None:
            d["data"] = {"calibration": data, "eval": data}
        if search:
            d["search"] = {**(d.get("search") or {}), **{k: v for k, v in search.items() if v is not None}}
        r = parse_recipe(d)
    tgt = get_target(target or r.target)
    ex = make_executor(executor, address=ray_address, target=tgt.name)
    try:
        ex.check_target()  # a cluster with no node of this target stops here, before anything is written
        return Pipeline(r, Path(out), tgt, console=console, progress=progress, executor=ex).run(model, resume=resume)
    finally:
        ex.close()


run_pipeline = optimize
