"""The candidate search: an Optuna study over the target's candidate families, with gates as constraints and a front.

Each trial picks a family and its settings (Optuna's multi-objective TPE sampler, seeded; every family's
default settings are enqueued first, cheapest family first, the structural ones still inside a budget too small
for every family), builds the candidate through the executor's build tasks (as many trials at once as the
executor has build slots: one locally, several on a Ray cluster), times it interleaved against the search root
on a node of the target (a measure task), and tells the study four objectives: latency (ms, from the paired
speedup over the root), fidelity (accuracy with labels, else mean cosine; maximized), size (MB) and peak memory
(MB). A trial that fails its gates is infeasible (Optuna's constraints). A family whose first trial measures no
gain on this target (not faster beyond the spread, not ≥10 % smaller, not ≥10 % less memory) is dropped: its
later proposals are pruned without building anything. A trial that crashes is recorded as failed with its
error and the search goes on. Trials live in an Optuna journal file in OUT/search/, so an interrupted search
keeps its finished trials and `--resume` continues it; built stages live in the content-addressed stage cache.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.artifact import Artifact
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.extras import require
from edgeopt.measure.latency import paired_speedup
from edgeopt.search import candidates
from edgeopt.search.tasks import build_candidate, save_data, time_candidates
from edgeopt.steps import first_line, portable

STUDY = "edgeopt-search"
OBJECTIVES = ("latency_ms", "fidelity", "size_mb", "peak_mb")
DIRECTIONS = ("minimize", "maximize", "minimize", "minimize")
NO_GAIN_SHARE = 0.9  # a family gains when it is faster beyond the spread, or this share of the root's size/memory or less
UNMEASURED = 1e9     # the objective value of a figure that could not be measured (never on the front by it)


@dataclass
class SearchInput:
    """What the pipeline hands the search: the root model (ONNX, after the recipe's fixed steps), the baseline,
    the run's data with the baseline's reference outputs, and the settings."""

    root: Artifact
    root_name: str
    baseline: Artifact
    calibration: list[dict[str, Any]]
    evaluation: list[dict[str, Any]]
    labels: list[Any] | None
    reference: list[Any]
    data_key: str
    target: Any
    measure: Any     # recipe MeasureSpec
    gates: Any       # GateSpec
    spec: Any        # recipe SearchSpec
    out_dir: Path
    executor: Any
    console: Any = None
    progress: Any = None
    resume: bool = False
    calibration_spec: str | None = None  # the run's calibration data spec (structural families' fit data)


@dataclass
class SearchResult:
    """Every trial's record, the front (feasible and not dominated), and each family's fate."""

    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    families: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)


# What counts as a real difference per objective (latency, -fidelity, size, peak memory): relative for the
# measured amounts, absolute for fidelity. Differences inside these are ties, so a candidate is not kept on the
# front by a 0.2 % smaller file or a cosine that differs in the fifth decimal.
TOLERANCE = ((0.03, "rel"), (1e-4, "abs"), (0.02, "rel"), (0.05, "rel"))


def _better(a: float, b: float, tol: tuple[float, str]) -> int:
    """1 when `a` is lower than `b` beyond the tolerance, -1 when higher beyond it, 0 for a tie."""
    t = tol[0] * max(abs(a), abs(b)) if tol[1] == "rel" else tol[0]
    return 1 if a < b - t else (-1 if a > b + t else 0)


def dominates(a: tuple[float, ...], b: tuple[float, ...], tolerance: tuple = TOLERANCE) -> bool:
    """`a` is no worse than `b` in every objective (all minimized) and better in one, beyond `tolerance`."""
    cmp = [_better(x, y, t) for x, y, t in zip(a, b, tolerance)]
    return all(c >= 0 for c in cmp) and any(c > 0 for c in cmp)


def front_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feasible records no other feasible record dominates over OBJECTIVES (fidelity maximized).

    Written here (a few lines) rather than read from `study.best_trials` so that ties within the measurement's
    resolution (TOLERANCE, the latency's widened to the pair's speedup intervals) do not count as trade-offs, and so
    that the same rule can judge other figures."""
    ok = [r for r in records if r.get("status") == "done" and (r.get("gate") or {}).get("passed")]
    key = {id(r): objective_key(r) for r in ok}
    front = [r for r in ok if not any(dominates(key[id(o)], key[id(r)], pair_tolerance(o, r)) for o in ok if o is not r)]
    unique: list[dict[str, Any]] = []  # of candidates tied on every objective, the first (cheapest) stays
    for r in front:
        if not any(all(_better(x, y, t) == 0 for x, y, t in zip(key[id(u)], key[id(r)], pair_tolerance(u, r)))
                   for u in unique):
            unique.append(r)
    return unique


def _spread(r: dict[str, Any]) -> float:
    """The relative half-width of a record's speedup interval (its latency's resolution), 0 when not recorded."""
    sp = r.get("speedup") or {}
    try:
        return max(float(sp["hi"]) - float(sp["lo"]), 0.0) / 2 / float(sp["ratio"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0.0


def pair_tolerance(a: dict[str, Any], b: dict[str, Any]) -> tuple:
    """TOLERANCE for comparing two records, with the latency tie widened to the wider of their speedup intervals:
    two latencies that their own measurements cannot tell apart are a tie, whatever the point estimates say (on the
    Zen 4 EPYC, LiteRT INT8 at 2.86x (2.67-3.33) and OpenVINO INT8 at 2.95x (2.92-3.03) stayed both on the front in
    one run and not in the next)."""
    lat = max(TOLERANCE[0][0], _spread(a), _spread(b))
    return ((lat, "rel"), *TOLERANCE[1:])


def objective_key(r: dict[str, Any]) -> tuple[float, ...]:
    return (r["latency_ms"], -r["fidelity_value"], r["size_mb"], r["peak_mb"])


def _sampler(optuna: Any, seed: int, startup: int) -> Any:
    """Optuna's multi-objective TPE sampler, seeded; `group` models each family's settings apart (they are
    conditional on the family). Trials set their gates as a constraint (Trial.set_constraint)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup)


def enqueue_order(families: list[Any], trials: int) -> list[Any]:
    """The order the families' default trials are queued in: cheapest first, except that a trial budget too small
    for every family still reaches the structural ones (a training budget asked for them): they take the last
    places inside the budget and the cheap families that no longer fit follow them."""
    structural = [f for f in families if f.structural]
    cheap = [f for f in families if not f.structural]
    if not structural or trials >= len(families):
        return list(families)
    keep = max(trials - len(structural), 0)
    return cheap[:keep] + structural + cheap[keep:]


class Search:
    """One search run (see the module docstring)."""

    def __init__(self, inp: SearchInput):
        self.inp = inp
        spec = inp.spec
        self.info = candidates.model_info(inp.root, inp.baseline, labelled=bool(inp.labels),
                                            calibration_spec=inp.calibration_spec)
        self.plan = candidates.plan(inp.target, self.info, tuple(spec.families), dict(spec.space), spec.train_minutes)
        self.cache = (Path(spec.cache) if spec.cache else inp.out_dir / "cas").resolve()  # workers see absolute paths
        self.folder = inp.out_dir / "search"
        self.data_file = self.cache / f"data-{inp.data_key}.npz"
        self.families = {n: f"skipped: {why}" for n, why in self.plan.skipped.items()}
        self.dropped: dict[str, str] = {}
        self.records: list[dict[str, Any]] = []
        self.earlier_log: list[dict[str, Any]] = []  # executor tasks of the runs a --resume continues

    # -- helpers -----------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.inp.console is not None:
            self.inp.console.print(msg)

    def _job_base(self) -> dict[str, Any]:
        m = self.inp.measure
        return {"cache": str(self.cache), "data": str(self.data_file), "data_key": self.inp.data_key,
                "target": self.inp.target.to_dict(), "measure": m.model_dump(mode="json"),
                "gates": self.inp.gates.model_dump(exclude_none=True), "threads": m.threads,
                "seq_len": m.seq_len, "batch": m.batch}

    def _study(self, optuna: Any) -> Any:
        """The Optuna study in OUT/search/journal.log: continued with --resume when it searched the same root,
        data and families; otherwise started afresh."""
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.folder.mkdir(parents=True, exist_ok=True)
        journal = self.folder / "journal.log"
        identity = {"root": self.inp.root.sha256, "data": self.inp.data_key,
                    "families": [f.name for f in self.plan.families],
                    "spaces": json.dumps(self.plan.spaces, sort_keys=True, default=str)}
        if journal.exists() and self.inp.resume:
            storage = JournalStorage(JournalFileBackend(str(journal)))
            try:
                study = optuna.load_study(study_name=STUDY, storage=storage)
                if study.user_attrs.get("identity") == identity:
                    return study
                self._say("[dim]search: the earlier search used another model, data or space; starting afresh[/dim]")
            except KeyError:
                pass
        if journal.exists():
            journal.unlink()
        for lock in self.folder.glob("journal.log*"):
            lock.unlink() if lock.is_file() else shutil.rmtree(lock, ignore_errors=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        sampler = _sampler(optuna, self.inp.spec.seed, len(self.plan.families))
        study = optuna.create_study(study_name=STUDY, storage=storage, directions=list(DIRECTIONS), sampler=sampler)
        study.set_user_attr("identity", identity)
        order = enqueue_order(self.plan.families, self.inp.spec.trials)
        for fam in order:  # every family's defaults first
            first = {k: v[0] for k, v in self.plan.spaces[fam.name].items()}  # the recipe's space may reorder choices
            study.enqueue_trial({"family": fam.name, **{f"{fam.name}.{k}": v for k, v in first.items()}})
        for fam in order:  # then the follow-ups the target asks for (candidates.Plan.followups), budget permitting
            for params in self.plan.followups.get(fam.name, []):
                study.enqueue_trial({"family": fam.name, **{f"{fam.name}.{k}": v for k, v in params.items()}})
        return study

    def _sampler_of(self, optuna: Any, study: Any) -> None:
        """A loaded study gets the same seeded sampler (samplers are not stored in the journal)."""
        study.sampler = _sampler(optuna, self.inp.spec.seed, len(self.plan.families))

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        optuna = require("optuna", "the candidate search")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.inp.spec
        if not self.plan.families:
            return self._result()
        if not self.data_file.exists():
            save_data(self.data_file, {"calibration": self.inp.calibration, "evaluation": self.inp.evaluation,
                                       "reference": self.inp.reference, "labels": self.inp.labels or []})
        study = self._study(optuna)
        self._sampler_of(optuna, study)
        self._restore(optuna, study)
        self.earlier_log = list(study.user_attrs.get("executor_log", []))
        names = [f.name for f in self.plan.families]
        t0, asks, cap = time.monotonic(), 0, 4 * spec.trials + 40
        task = self.inp.progress.add_task("search", total=spec.trials) if self.inp.progress else None
        self._progress(task)
        seen = {(r["family"], json.dumps(r["params"], sort_keys=True)) for r in self.records}
        # trials in flight at once: one per build slot of the executor (1 locally; a Ray cluster builds several
        # candidates in parallel, while their timing still runs one at a time on the target's node)
        width = max(1, int(getattr(self.inp.executor, "slots", 1) or 1))
        while self._counted() < spec.trials and asks < cap and not self._exhausted(seen):
            if spec.minutes is not None and time.monotonic() - t0 > spec.minutes * 60:
                self._say(f"search: time budget of {spec.minutes:g} min reached")
                break
            batch: list[tuple[Any, str, dict[str, Any]]] = []
            while (len(batch) < width and self._counted() + len(batch) < spec.trials and asks < cap
                   and not self._exhausted(seen)):
                asks += 1
                trial = study.ask()
                family = trial.suggest_categorical("family", names)
                params = {k: trial.suggest_categorical(f"{family}.{k}", list(v))
                          for k, v in self.plan.spaces[family].items()}
                sig = (family, json.dumps(params, sort_keys=True))
                if family in self.dropped or sig in seen:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
                seen.add(sig)
                batch.append((trial, family, params))
            if not batch:
                continue
            labels = self._labels(batch)
            try:
                started = [self._start(t.number, fam, params, labels[t.number]) for t, fam, params in batch]
                for (trial, _, _), (rec, build, t_start) in zip(batch, started):
                    rec = self._finish(rec, build, t_start)
                    trial.set_user_attr("record", rec)
                    if rec["status"] == "done":
                        trial.set_constraint("gates", 0.0 if rec["gate"]["passed"] else 1.0)
                        study.tell(trial, [rec[k] if k != "fidelity" else rec["fidelity_value"] for k in OBJECTIVES])
                    else:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    self.records.append(rec)
                    study.set_user_attr("executor_log", self._log())  # kept for a later --resume
                    self._after(rec)
                    self._progress(task)
            except KeyboardInterrupt:
                told = {r["number"] for r in self.records}
                for trial, _, _ in batch:
                    if trial.number not in told:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
        if task is not None:
            self.inp.progress.update(task, visible=False)
        return self._result()

    def _restore(self, optuna: Any, study: Any) -> None:
        """Records of an earlier run's finished trials; trials it left running (interrupted) become failed."""
        for t in study.trials:
            if t.state == optuna.trial.TrialState.RUNNING:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            rec = t.user_attrs.get("record")
            if rec and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
                self.records.append(rec)
                self._after(rec, quiet=True)
        if self.records:
            self._say(f"search: resumed with {len(self.records)} finished trial(s)")

    def _counted(self) -> int:
        return sum(1 for r in self.records if r["status"] in ("done", "failed"))

    def _exhausted(self, seen: set[tuple[str, str]]) -> bool:
        for fam in self.plan.families:
            if fam.name in self.dropped:
                continue
            if sum(1 for f, _ in seen if f == fam.name) < fam.size(self.plan.spaces[fam.name]):
                return False
        return True

    def _progress(self, task: Any) -> None:
        if task is None:
            return
        front = front_of(self.records)
        best = min(front, key=lambda r: r["latency_ms"], default=None)
        desc = f"search: {self._counted()}/{self.inp.spec.trials} trials · front {len(front)}"
        if best:
            desc += f" · best {best['speedup']['ratio']:.2f}× ({best['label']})"
        self.inp.progress.update(task, completed=self._counted(), description=desc)

    def _labels(self, batch: list[tuple[Any, str, dict[str, Any]]]) -> dict[int, str]:
        """A trial's label: its family's name for the family's first trial, else family-number."""
        had = {r["family"] for r in self.records}
        out = {}
        for trial, family, _ in batch:
            out[trial.number] = family if family not in had else f"{family}-{trial.number}"
            had.add(family)
        return out

    def _start(self, number: int, family: str, params: dict[str, Any], label: str) -> tuple[dict[str, Any], Any, float]:
        """Submit one candidate's build task: (its record so far, the build's future or the error, start time)."""
        rec: dict[str, Any] = {"number": number, "family": family, "label": label, "params": params,
                               "chain": [], "status": "failed", "error": None}
        t0 = time.perf_counter()
        try:
            fam = candidates.FAMILIES[family]
            chain = fam.chain(params, self.info)
            rec["chain"] = [[p, c] for p, c in chain]
            start = self.inp.baseline if fam.from_baseline else self.inp.root
            job = {**self._job_base(), "start": portable(start), "chain": chain}
            return rec, self.inp.executor.build(build_candidate, job), t0
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 (a candidate that cannot even be submitted is a failed trial)
            return rec, e, t0

    def _finish(self, rec: dict[str, Any], build: Any, t0: float) -> dict[str, Any]:
        """Wait for a candidate's build, then judge and time it (a measure task); any error becomes a failed record."""
        try:
            if isinstance(build, BaseException):
                raise build
            built = build.result()
            rec.update(artifact=built["artifact"], steps=built["steps"], fidelity=built["fidelity"],
                       gate=built["gate"], accuracy=built.get("accuracy"))
            m, s = self.inp.measure, self.inp.spec
            tjob = {"data": str(self.data_file), "cache": str(self.cache), "threads": m.threads, "warmup": m.warmup,
                    "runs": s.runs, "block": m.block, "settle": m.settle, "pause_ms": m.pause_ms,
                    "spinning": m.spinning, "memory": m.memory, "seq_len": m.seq_len, "batch": m.batch,
                    "models": {"root": portable(self.inp.root), "candidate": built["artifact"]}}
            timed = self.inp.executor.measure(time_candidates, tjob).result()
            if "candidate" in timed["errors"] and "candidate" not in timed["samples"]:
                raise InputError(timed["errors"]["candidate"])
            sp = paired_speedup(timed["samples"]["root"], timed["samples"]["candidate"], per_turn=timed["per_turn"])
            root_ms = float(sorted(timed["samples"]["root"])[len(timed["samples"]["root"]) // 2])
            if not self._root():
                self._root_figures(root_ms, timed["peak_mb"].get("root"))
            fid = rec["fidelity"]
            rec.update(status="done", speedup={"ratio": sp.ratio, "lo": sp.lo, "hi": sp.hi},
                       latency_ms=self._root()["latency_ms"] / sp.ratio,
                       size_mb=built["artifact"]["size_bytes"] / 1e6,
                       peak_mb=timed["peak_mb"].get("candidate", UNMEASURED),
                       fidelity_value=(rec["accuracy"] or {}).get("top1", fid["mean_cosine"]) if rec.get("accuracy")
                       else fid["mean_cosine"])
            if "candidate" in timed["errors"]:
                rec.setdefault("warnings", []).append(timed["errors"]["candidate"])
        except KeyboardInterrupt:
            raise
        except EdgeoptError as e:
            rec["error"] = str(e)
        except Exception as e:  # a crash inside a trial is recorded and the search goes on
            rec["error"] = f"{e.__class__.__name__}: {first_line(e)}"
        rec["duration_s"] = round(time.perf_counter() - t0, 2)
        return rec

    def _root(self) -> dict[str, Any]:
        return getattr(self, "_root_fig", {}) or {}

    def _root_figures(self, latency_ms: float, peak_mb: float | None) -> None:
        self._root_fig = {"latency_ms": latency_ms, "size_mb": self.inp.root.size_bytes / 1e6,
                          "peak_mb": peak_mb if peak_mb is not None else UNMEASURED}

    def _after(self, rec: dict[str, Any], quiet: bool = False) -> None:
        """Print the trial, and drop its family when it was the family's first and measured no gain."""
        if rec["status"] == "done" and not self._root():
            self._root_figures(rec["latency_ms"] * rec["speedup"]["ratio"], None)
        fam = rec["family"]
        first = sum(1 for r in self.records if r["family"] == fam) == 1
        if rec["status"] == "done":
            sp, root = rec["speedup"], self._root()
            faster = sp["lo"] > 1.0
            smaller = rec["size_mb"] <= NO_GAIN_SHARE * root["size_mb"]
            leaner = rec["peak_mb"] <= NO_GAIN_SHARE * root["peak_mb"] if root["peak_mb"] < UNMEASURED else False
            if first and self.inp.spec.drop and not (faster or smaller or leaner) and fam not in self.dropped:
                self.dropped[fam] = (f"dropped after trial {rec['number']}: {sp['ratio']:.2f}× the root "
                                     f"(95% {sp['lo']:.2f}–{sp['hi']:.2f}), size {rec['size_mb'] / root['size_mb']:.2f}×, "
                                     "no gain on this target")
            if not quiet:
                gate = "pass" if rec["gate"]["passed"] else "FAIL"
                self._say(f"  trial {rec['number']:>2} {rec['label']:<22} {sp['ratio']:.2f}× ({sp['lo']:.2f}–{sp['hi']:.2f})"
                          f"  fidelity {rec['fidelity_value']:.4f} {gate}  {rec['size_mb']:.1f} MB"
                          + (f"  [dim]{self.dropped[fam]}[/dim]" if fam in self.dropped and first else ""))
        elif not quiet:
            self._say(f"  trial {rec['number']:>2} {rec['label']:<22} [red]failed[/red]: {rec['error']}")

    def _log(self) -> list[dict[str, Any]]:
        """Every executor task of this search: those of the runs it resumed, then this run's."""
        now = [r.to_dict() if hasattr(r, "to_dict") else dict(r)
               for r in getattr(self.inp.executor, "log", []) if not isinstance(r, tuple)]
        return [*self.earlier_log, *now]

    def _result(self) -> SearchResult:
        front = front_of(self.records)
        for fam in self.plan.families:
            self.families[fam.name] = self.dropped.get(fam.name, "searched")
        on_front = {r["number"] for r in front}
        for r in self.records:
            r["front"] = r["number"] in on_front
        summary = {"trials": self.records, "front": [r["label"] for r in front], "families": self.families,
                   "budget": {"trials": self.inp.spec.trials, "minutes": self.inp.spec.minutes,
                              "train_minutes": self.inp.spec.train_minutes},
                   "seed": self.inp.spec.seed, "root": self.inp.root_name, "root_figures": self._root(),
                   "executor": getattr(self.inp.executor, "name", "local"),
                   "executor_log": self._log(),
                   "objectives": list(OBJECTIVES), "cache": str(self.cache)}
        return SearchResult(trials=self.records, front=front, families=self.families, summary=summary)


def run_search(inp: SearchInput) -> SearchResult:
    """Search the candidates for `inp.target` from `inp.root` (see the module docstring)."""
    return Search(inp).run()
