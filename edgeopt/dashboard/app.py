"""The Streamlit page of `edgeopt dashboard`: compare runs and stages, per-layer view, background runs, live toggles
(on one model, or on a diffusion model that draws an image per run), and for LLM runs a prompt box that generates on
a chosen stage with a live tokens/s meter.

Started by edgeopt.dashboard.serve as `streamlit run app.py -- --run DIR ... [--root DIR] [--workdir DIR]`.
All logic sits in edgeopt.dashboard.state / worker / live / llm / diffusion; this file only lays out widgets. Long
work runs in background jobs and a polling fragment shows their progress (for generation: the text so far and the
meter), so the page never blocks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import streamlit as st

from edgeopt.dashboard import diffusion as D
from edgeopt.dashboard import live as L
from edgeopt.dashboard import llm as G
from edgeopt.dashboard import state as S
from edgeopt.dashboard.worker import Job, Worker
from edgeopt.errors import InputError
from edgeopt.recipe import bundled_recipes
from edgeopt.report import figures
from edgeopt.report.html import report_html
from edgeopt.report.table import llm_notes, llm_rows, stage_rows

POLL_S = 0.7
STREAM_POLL_S = 0.3  # how often the generation panel redraws while text streams in


# ---------------------------------------------------------------------------------------- session

def config() -> S.DashboardConfig:
    ss = st.session_state
    if ss.get("edgeopt_config") is None:
        ss["edgeopt_config"] = S.parse_args(sys.argv[1:])
    return ss["edgeopt_config"]


def authorized(cfg: S.DashboardConfig) -> bool:
    """With an access token (a host other machines can reach), nothing shows and no job can start until the
    browser gives it: in the address (?token=…) or in the form shown instead of the page."""
    ss = st.session_state
    if not cfg.token or ss.get("edgeopt_authorized"):
        return True
    given = st.query_params.get("token")
    if S.token_matches(given, cfg.token):
        ss["edgeopt_authorized"] = True
        return True
    st.title("edgeopt")
    st.info("This dashboard asks for its access token (printed by `edgeopt dashboard` when it started).")
    if given:
        st.error("wrong access token")
    with st.form("token-form", clear_on_submit=True):
        typed = st.text_input("Access token", type="password", key="token-input")
        if st.form_submit_button("Open") and typed:
            if S.token_matches(typed, cfg.token):
                ss["edgeopt_authorized"] = True
                st.rerun()
            st.error("wrong access token")
    return False


def session() -> S.Session:
    ss = st.session_state
    if "edgeopt" not in ss:
        ss["edgeopt"] = S.Session(config())
        ss["worker"] = Worker(serial=("live", "llm", "diffusion"))
        ss["seen_done"] = set()
        ss["profiles"] = {}
        ss["run_jobs"] = []
        ss["llm_history"] = []
    if ss.get("llm_cache") is None:  # one open model per browser session, closed when it goes away
        ss["llm_cache"] = G.GeneratorCache()
    return ss["edgeopt"]


def worker() -> Worker:
    return st.session_state["worker"]


def job_panel(kind: str, key: str) -> None:
    """Progress of this kind's jobs, refreshed every POLL_S seconds while one runs; a finished job reruns the
    page so its result shows."""
    active = bool(worker().active(kind))

    def panel() -> None:
        w, seen = worker(), st.session_state["seen_done"]
        finished = [j for j in w.jobs if j.kind == kind and j.done and j.id not in seen]
        if finished:
            seen.update(j.id for j in finished)
            st.rerun()
        for j in w.active(kind):
            st.progress(j.fraction, text=f"{j.label}: {j.message or j.status} ({j.elapsed:.0f} s)")
            if st.button("Cancel", key=f"cancel-{key}-{j.id}"):
                j.cancel()

    st.fragment(panel, run_every=POLL_S if active else None)()


def show_job_outcome(job: Job | None) -> None:
    if job is None or not job.done:
        return
    if job.status == "failed":
        st.error(f"{job.label}: {job.error}")
    elif job.status == "cancelled":
        st.warning(f"{job.label}: cancelled")


# ---------------------------------------------------------------------------------------- sidebar

def sidebar(sess: S.Session) -> list[S.RunInfo]:
    runs = sess.runs()
    with st.sidebar:
        st.title("edgeopt")
        st.caption("Every stage of every run, measured.")
        labels = [r.label for r in runs if r.ledger]
        wanted = [x for x in st.query_params.get_all("run") if x in labels]  # labels only, never paths
        chosen = st.multiselect("Runs", labels, default=wanted or labels[:4], key="runs")
        for r in runs:
            if r.error:
                st.warning(r.error)
        with st.form("open-run", clear_on_submit=True):
            path = st.text_input("Open a run directory", placeholder="path inside an open folder")
            if st.form_submit_button("Open") and path:
                try:
                    p = sess.open_run(path)
                    st.success(f"opened {p.name}")
                    st.rerun()
                except InputError as e:
                    st.error(str(e))
        st.caption("Open folders: " + ", ".join(str(a) for a in sess.config.allowed))
    return [r for r in runs if r.ledger and r.label in chosen]


# ---------------------------------------------------------------------------------------- compare

def tab_compare(runs: list[S.RunInfo]) -> None:
    if not runs:
        st.info("No run selected. Start the dashboard on run directories (`edgeopt dashboard runs/demo`), open "
                "one in the sidebar, or run a recipe in “Run a model”.")
        return
    for r in runs:
        st.subheader(f"Run {r.label}")
        st.caption(f"{r.path} · best stage: {r.ledger.best or 'none passed its gate'} · {figures.caption(r.ledger)}")
        st.dataframe(stage_rows(r.ledger), hide_index=True, width="stretch")
        rows = llm_rows(r.ledger)
        if rows:
            st.markdown("**LLM: tokens/s, fidelity, answers**")
            st.dataframe(rows, hide_index=True, width="stretch")
            st.caption(" ".join(llm_notes(r.ledger)))
    st.subheader("Side by side")
    options = S.stage_options(runs)
    default = []
    for r in runs:
        default.append(f"{r.label}: {r.ledger.stages[0].name}")
        last = r.ledger.best or r.ledger.stages[-1].name
        if f"{r.label}: {last}" not in default:
            default.append(f"{r.label}: {last}")
    keys = st.multiselect("Stages to compare", options, default=[d for d in default if d in options], key="cmp")
    if keys:
        import pandas as pd

        table = S.compare_table(runs, keys)
        st.dataframe(pd.DataFrame(table, index=list(S.compare_metrics(table))), width="stretch")
    pairs = [(r.label, r.ledger) for r in runs]
    for r in runs:
        st.plotly_chart(figures.waterfall_figure(r.ledger, r.label), width="stretch", key=f"wf-{r.label}")
        if figures.is_llm_run(r.ledger):
            st.plotly_chart(figures.llm_speed_figure(r.ledger, r.label), width="stretch", key=f"tok-{r.label}")
    c1, c2 = st.columns(2)
    c1.plotly_chart(figures.pareto_figure(pairs, "latency_ms"), width="stretch", key="pareto-lat")
    c2.plotly_chart(figures.pareto_figure(pairs, "size_mb"), width="stretch", key="pareto-size")
    with st.expander("Environment"):
        for r in runs:
            st.markdown(f"**{r.label}**")
            st.table({k: v for k, v in figures.environment_rows(r.ledger)})
    if st.button("Build the HTML report of these runs", key="build-html"):
        st.session_state["report_html"] = report_html(pairs, st.session_state["profiles"].get("_merged"))
    if st.session_state.get("report_html"):
        st.download_button("Download report.html", st.session_state["report_html"], file_name="report.html",
                           mime="text/html")


# ---------------------------------------------------------------------------------------- per-layer

def tab_layers(runs: list[S.RunInfo]) -> None:
    candidates = [r for r in runs if S.onnx_stages(r)]
    if not candidates:
        st.info("Per-layer profiles read ONNX stages: select a run that has one.")
        return
    c1, c2, c3, c4 = st.columns([2, 3, 1, 1])
    label = c1.selectbox("Run", [r.label for r in candidates], key="prof-run")
    info = next(r for r in candidates if r.label == label)
    stages = S.onnx_stages(info)
    default = [s for s in (stages[0], info.ledger.best) if s in stages]
    chosen = c2.multiselect("ONNX stages", stages, default=list(dict.fromkeys(default)), key="prof-stages")
    threads = c3.number_input("threads", 1, 64, 2, key="prof-threads")
    nruns = c4.number_input("runs", 1, 1000, 10, key="prof-runs")
    if st.button("Profile", key="prof-go", disabled=not chosen or bool(worker().active("profile"))):
        args = ["profile", "--run", str(info.path), "--threads", str(threads), "--runs", str(nruns)]
        for s in chosen:
            args += ["--stage", s]
        job = worker().submit_process(args, "profile", f"profile {label}: {', '.join(chosen)}")
        st.session_state["prof_job"] = (job, label)
        st.rerun()
    job_panel("profile", "prof")
    pending = st.session_state.get("prof_job")
    if pending and pending[0].done:
        job, run_label = pending
        show_job_outcome(job)
        if job.status == "done":
            st.session_state["profiles"].setdefault(run_label, {}).update(job.result)
        st.session_state["prof_job"] = None
    profiles = st.session_state["profiles"].get(label) or {}
    if not profiles:
        st.caption("No profile yet for this run: choose stages and press Profile (ONNX Runtime's profiler, in a "
                   "child process).")
        return
    st.plotly_chart(figures.layers_figure(profiles), width="stretch", key="layers")
    st.plotly_chart(figures.op_types_figure(profiles), width="stretch", key="optypes")
    for name, prof in profiles.items():
        with st.expander(f"{name}: top layers"):
            st.dataframe(figures.layer_rows(prof, 30), hide_index=True, width="stretch")
    st.session_state["profiles"]["_merged"] = {f"{label}: {k}": v for k, v in profiles.items()}


# ---------------------------------------------------------------------------------------- run a model

def tab_run(sess: S.Session) -> None:
    c1, c2 = st.columns([3, 1])
    model = c1.text_input("Model", value="demo:tiny-bert", key="run-model",
                          help="zoo:minilm, demo:tiny-bert, demo:tiny-cnn, or a file/folder inside an open folder")
    action = c2.radio("Action", ["analyze", "optimize"], key="run-action", horizontal=True)
    recipe, recipe_file, target = None, False, "auto"
    if action == "optimize":
        c3, c4 = st.columns([3, 1])
        names = bundled_recipes()
        choice = c3.selectbox("Recipe", [*names, "a YAML file…"], key="run-recipe")
        if choice == "a YAML file…":
            recipe = c3.text_input("Recipe file", key="run-recipe-file", placeholder="path inside an open folder")
            recipe_file = True
        else:
            recipe = choice
        target = c4.text_input("Target", value="auto", key="run-target")
    if st.button("Start", key="run-go"):
        try:
            src = S.safe_model_source(model, sess.config.allowed)
            if action == "analyze":
                job = worker().submit_process(["analyze", "--model", src, "--target", target], "run", f"analyze {model}")
            else:
                if recipe_file:  # bundled names come from the list; a file must lie in an open folder
                    recipe = str(S.safe_path(recipe or "", sess.config.allowed, "recipe"))
                stamp = time.strftime("%Y%m%d-%H%M%S")
                slug = "".join(ch if ch.isalnum() else "-" for ch in model.split("/")[-1])[:40].strip("-") or "model"
                out = sess.config.workdir / f"{slug}-{stamp}"
                args = ["optimize", "--model", src, "--recipe", recipe or "cpu-int8", "--out", str(out)]
                if target and target != "auto":
                    args += ["--target", target]
                job = worker().submit_process(args, "run", f"optimize {model} ({recipe})")
            st.session_state["run_jobs"].append(job)
            st.rerun()
        except InputError as e:
            st.error(str(e))
    job_panel("run", "run")
    for job in reversed(st.session_state["run_jobs"][-5:]):
        if not job.done:
            continue
        with st.container(border=True):
            st.markdown(f"**{job.label}** — {job.status} in {job.elapsed:.1f} s")
            show_job_outcome(job)
            if job.status == "done" and job.kind == "run":
                show_result(sess, job)


def show_result(sess: S.Session, job: Job) -> None:
    res = job.result or {}
    if "run_dir" in res:
        p = Path(res["run_dir"])
        if p not in sess.extra_runs:
            sess.extra_runs.append(p)
        st.success(f"run written to {p} (best: {res.get('best') or 'none passed its gate'}); it is now in the "
                   f"Runs list")
        return
    if res.get("schema", "").startswith("edgeopt.analysis"):
        c = st.columns(4)
        c[0].metric("parameters", f"{res['params'].get('count', 0):,}")
        c[1].metric("FLOPs", f"{res['flops'].get('total', 0):,}")
        c[2].metric("quantizable FLOPs", f"{100 * (res.get('quantizable_flops_share') or 0):.0f}%")
        c[3].metric("ops", f"{sum(res.get('census', {}).values()):,}")
        st.markdown("**Opportunities**")
        st.dataframe([{k: o.get(k) for k in ("rule", "count", "pass", "description")}
                      for o in res.get("opportunities", [])], hide_index=True, width="stretch")
        st.markdown("**Suggested passes**")
        st.dataframe(res.get("suggested_passes", []), hide_index=True, width="stretch")
        with st.expander("Op census and full report"):
            st.json(res, expanded=False)


# ---------------------------------------------------------------------------------------- live

def live_bench(sess: S.Session, source: str, threads: int) -> L.LiveBench:
    ss = st.session_state
    bench: L.LiveBench | None = ss.get("live_bench")
    if bench is None or bench.source != source or bench.threads != threads:
        if bench is not None:
            bench.close()
        bench = L.LiveBench(source, threads=threads)
        ss["live_bench"] = bench
        ss["live_last"] = None
    return bench


def _live_job(bench: L.LiveBench, settings: dict[str, Any], runs: int, memory: bool):
    """The job function measuring `settings` on `bench` (bound now, so later widget changes cannot alter it)."""
    def fn(job: Job) -> L.Measurement:
        return bench.measure(settings, runs=runs, memory=memory, progress=lambda f, m: job.report(f, m))

    return fn


def runtime_picker(kind: str) -> str:
    """The runtime radio: the runtimes this model can be measured on; the others listed with the reason."""
    offered = L.runtime_availability(kind)
    usable = [r for r in L.RUNTIMES if offered[r.key] is None]
    names = {r.key: r.label for r in L.RUNTIMES}
    choice = st.radio("Runtime", [r.key for r in usable], index=0, key="live-runtime", horizontal=True,
                      format_func=lambda k: names[k], captions=[r.caption for r in usable],
                      help="Where the converted model runs (the plain model it is timed against stays the same). "
                           + " ".join(f"{r.label}: {r.help}" for r in usable))
    blocked = [f"{r.label} ({offered[r.key]})" for r in L.RUNTIMES if offered[r.key]]
    if blocked:
        st.caption("Not offered for this model: " + "; ".join(blocked))
    return choice or L.DEFAULT_RUNTIME


def tab_live(sess: S.Session) -> None:
    ss = st.session_state
    mode = st.radio("Live", ["Toggle a model", "Diffusion"], key="live-mode", horizontal=True,
                    captions=["time toggle combinations against the plain model", "draw an image per run"])
    if mode == "Diffusion":
        tab_diffusion(sess)
        return
    st.markdown("Toggle optimizations on one model; each change is built (once) and timed against the plain "
                "model in the same interleaved run.")
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
    options = [*L.DEMO_MODELS, "a model file…"]
    choice = c1.selectbox("Model", options, index=0, key="live-model",
                          format_func=lambda k: f"{k} — {L.DEMO_MODELS[k]}" if k in L.DEMO_MODELS else k)
    source = choice
    if choice == "a model file…":
        path = c1.text_input("Model file (.onnx or Hugging Face folder)", key="live-file")
        if not path:
            return
        try:
            source = S.safe_model_source(path, sess.config.allowed)
        except InputError as e:
            st.error(str(e))
            return
    threads = int(c2.number_input("threads", 1, 64, 2, key="live-threads"))
    runs = int(c3.number_input("runs", 3, 2000, 30, key="live-runs"))
    memory = c4.checkbox("peak memory", value=True, key="live-memory", help="child process per measurement")
    bench = live_bench(sess, source, threads)
    runtime = runtime_picker(bench.kind)
    reasons = L.availability(bench.kind, runtime)
    settings: dict[str, Any] = {}
    cols = [c for _ in range(0, len(L.TOGGLES), 3) for c in st.columns(3)]
    for col, t in zip(cols, L.TOGGLES):
        why = reasons.get(t.key)
        if t.choices:
            v = col.selectbox(t.label, ["off", *t.choices], key=f"tg-{t.key}", disabled=why is not None,
                              help=why or t.help)
            settings[t.key] = None if v == "off" else v
        else:
            settings[t.key] = col.toggle(t.label, key=f"tg-{t.key}", disabled=why is not None, help=why or t.help)
    settings["runtime"] = runtime
    now = L.normalize(settings, bench.kind)
    now_label = L.label(now, bench.kind)
    measure_now = st.button(f"Measure “{now_label}”", key="live-go")
    if ss.get("live_last") is None:
        ss["live_last"] = now  # the page opened: nothing measured until something is chosen
    elif now != ss["live_last"]:
        measure_now = True
    if measure_now:
        ss["live_last"] = now

        ss["live_job"] = worker().submit(_live_job(bench, dict(now), runs, memory), "live", f"live: {now_label}")
    job_panel("live", "live")
    show_job_outcome(ss.get("live_job"))
    if not bench.history:
        st.caption(f"Now: {now_label}. Flip a toggle (or press Measure) to time it.")
        return
    m = bench.history[-1]
    st.markdown(f"**Latest measurement: {m.label}** — {m.p50:.3f} ms p50 on {m.runtime}, {m.threads} threads")
    c = st.columns(5)
    c[0].metric("latency p50", f"{m.p50:.3f} ms", delta=f"{m.speedup:.2f}× vs plain", delta_color="off")
    c[1].metric("latency p90", f"{m.p90:.3f} ms")
    c[2].metric("throughput", f"{m.throughput:,.0f} /s")
    c[3].metric("peak memory", "—" if m.peak_mb is None else f"{m.peak_mb:.0f} MB")
    c[4].metric("cosine vs plain", "—" if m.cosine is None else f"{m.cosine:.5f}")
    if m.note:
        st.caption(m.note)
    rows = [{"configuration": h.label, "runtime": h.runtime, "p50 ms": round(h.p50, 4), "p90 ms": round(h.p90, 4),
             "speedup vs plain": round(h.speedup, 2), "throughput /s": round(h.throughput, 1),
             "peak MB": None if h.peak_mb is None else round(h.peak_mb, 1),
             "size MB": None if h.size_mb is None else round(h.size_mb, 3),
             "cosine vs plain": None if h.cosine is None else round(h.cosine, 6), "threads": h.threads,
             "n": h.n} for h in reversed(bench.history)]
    st.dataframe(rows, hide_index=True, width="stretch")
    import plotly.graph_objects as go

    latest: dict[str, L.Measurement] = {}
    for h in bench.history:
        latest[h.label] = h
    fig = go.Figure(go.Bar(x=list(latest), y=[h.p50 for h in latest.values()],
                           text=[f"{h.p50:.3f} ms · {h.speedup:.2f}×" for h in latest.values()],
                           textposition="outside", marker={"color": "#1565c0"}))
    fig.update_layout(title="latency p50 by configuration (latest of each)", yaxis_title="ms", height=360,
                      template="plotly_white", margin={"t": 50, "b": 40})
    st.plotly_chart(fig, width="stretch", key="live-chart")


# ---------------------------------------------------------------------------------------- live diffusion

def diffusion_bench(source: str, kind: str) -> D.DiffusionBench:
    """The session's bench for `source` (a new one, dropping the old model and its copies, when it changes)."""
    ss = st.session_state
    bench: D.DiffusionBench | None = ss.get("diffusion_bench")
    if bench is None or bench.source != source:
        if bench is not None:
            bench.close()
        bench = D.DiffusionBench(source, kind)
        ss["diffusion_bench"] = bench
    return bench


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f} ms"


def tab_diffusion(sess: S.Session) -> None:
    """Pick a diffusion model and the optimizations, press Run: the image, per-component latency and memory, and
    the earlier runs of this model in a table (the image is compared with the untouched run of the same inputs)."""
    ss = st.session_state
    st.markdown("Switch the paper's kernel optimizations on or off and draw an image. The toggles apply to the UNet "
                "(and the Stable Diffusion VAE decoder) as the `kernels.*` passes, on a copy of the untouched model "
                "built once per toggle set; one run at a time.")
    c1, c2 = st.columns([2, 3])
    choice = c1.selectbox("Model", [*D.MODELS, D.LOCAL_SD], key="diff-model",
                          format_func=lambda k: f"{k} — {D.MODELS[k]}" if k in D.MODELS else k)
    source, digits = choice, choice == D.DIGITS
    if choice == D.LOCAL_SD:
        source = c2.text_input("Stable Diffusion 1.x folder (diffusers layout, safetensors)", key="diff-folder",
                               placeholder="path inside an open folder")
    if digits:
        digit = c2.selectbox("Digit", list(range(10)), index=7, key="diff-digit")
    else:
        prompt = st.text_input("Prompt", value="a photo of an astronaut riding a horse on mars", key="diff-prompt",
                               max_chars=D.MAX_PROMPT_CHARS)
    t = st.columns(3)
    fused = t[0].toggle("Fused GroupNorm+SiLU", key="diff-fused", help="kernels.fused_norm: norm and activation in "
                        "one pass (edgeopt's C++ kernel where it builds)")
    attention = t[1].selectbox("Attention", ["off", *D.ATTENTION], key="diff-attention",
                               format_func=lambda k: D.ATTENTION.get(k, "untouched (PyTorch SDPA)"),
                               help="kernels.attention: partially fused softmax (the probabilities never stored) or "
                                    "FlashAttention-style tiles")
    winograd = t[2].toggle("Winograd F(4×4, 3×3)", key="diff-winograd",
                           help="kernels.winograd on the 3×3 convolutions (layers over the error budget stay direct)")
    c = st.columns(6)
    kind = "digits" if digits else "sd"
    steps = c[0].number_input("steps", value=20 if digits else 10, step=1, key=f"diff-steps-{kind}")
    seed = c[1].number_input("seed", value=0, step=1, key="diff-seed")
    threads = c[2].number_input("threads", value=2, step=1, key="diff-threads")
    scheduler = c[3].selectbox("scheduler", D.SCHEDULERS[kind], key=f"diff-sched-{kind}")
    guidance, size = 7.5, 0
    if not digits:
        guidance = c[4].number_input("guidance", value=7.5, step=0.5, key="diff-guidance")
        size = c[5].number_input("size (px; 0: the model's own)", value=0, step=8, key="diff-size")
    tensor_memory = st.checkbox("peak tensor memory of one UNet step (one more step, watched op by op)", value=True,
                                key="diff-tensors")
    if st.button("Run", key="diff-go", type="primary"):
        running = worker().active("diffusion")
        if running:
            st.error(f"busy: {running[0].label} is still running; run again when it has finished")
        else:
            try:
                req = D.diffusion_request(source, steps, seed, prompt="" if digits else prompt,
                                          digit=digit if digits else 0, guidance=guidance, size=size,
                                          scheduler=scheduler, threads=threads, fused_norm=fused,
                                          attention=None if attention == "off" else attention, winograd=winograd,
                                          tensor_memory=tensor_memory, allowed=sess.config.allowed)
                bench = diffusion_bench(req.source, req.kind)
                ss["diffusion_job"] = worker().submit(D.generation_job(bench, req), "diffusion",
                                                      f"{req.source}: {req.toggles.label}, {req.steps} steps")
                st.rerun()
            except InputError as e:
                st.error(str(e))
    job_panel("diffusion", "diffusion")
    show_job_outcome(ss.get("diffusion_job"))
    bench = ss.get("diffusion_bench")
    if bench is None or not bench.history:
        st.caption("Nothing drawn yet: choose the toggles and press Run (the first run loads the model).")
        return
    show_diffusion_run(bench)


def show_diffusion_run(bench: D.DiffusionBench) -> None:
    run = bench.history[-1]
    ref = bench.untouched_for(run)
    st.markdown(f"**Latest: {run.label}** — {run.request.source}, {run.request.what}, {run.request.steps} steps, "
                f"seed {run.request.seed}, {run.request.threads} threads")
    pics = st.columns([1, 1, 3])
    pics[0].image(D.to_png(run.image, side=256), caption=run.label)
    if ref is not None and ref is not run:
        pics[1].image(D.to_png(ref.image, side=256), caption="untouched, same inputs")
    with pics[2]:
        m = st.columns(4)
        m[0].metric("text encoder", _ms(run.text_encoder_ms))
        m[1].metric("UNet step (median)", _ms(run.unet_step_ms), delta=f"{run.unet_calls} calls", delta_color="off")
        m[2].metric("VAE decode", _ms(run.vae_decode_ms))
        speedup = run.speedup_vs_untouched
        m[3].metric("total", _ms(run.total_ms), delta_color="off",
                    delta=None if speedup is None else f"{speedup:.2f}× vs untouched")
        m = st.columns(4)
        m[0].metric("peak RSS", f"{run.peak_rss_mb:,.0f} MB")
        m[1].metric("weights", f"{sum(run.weights_mb.values()):,.1f} MB")
        m[2].metric("UNet step tensors", "—" if run.tensor_peak_mb is None else f"{run.tensor_peak_mb:,.2f} MB")
        m[3].metric("max |Δ| vs untouched", "—" if run.max_abs_vs_untouched is None else
                    f"{run.max_abs_vs_untouched} / 255")
    st.caption(f"What changed: {run.changes or 'nothing (untouched model)'}"
               + (f" (built in {run.build_s:.1f} s)" if run.build_s else "")
               + ". Peak RSS is the server process's peak during the run, the model included; weights per component: "
               + ", ".join(f"{k} {v:,.1f} MB" for k, v in run.weights_mb.items())
               + ". One run each: the notebook notebooks/diffusion.ipynb times configurations interleaved.")
    for note in run.notes:
        st.warning(note)
    st.dataframe(D.history_rows(bench.history), hide_index=True, width="stretch")


# ---------------------------------------------------------------------------------------- generate (LLM runs)

CHAT = {"auto": None, "on": True, "off": False}


def _num(v: Any, spec: str, suffix: str = "") -> str:
    return "—" if not isinstance(v, (int, float)) or not v else format(v, spec) + suffix


def tab_llm(sess: S.Session, runs: list[S.RunInfo]) -> None:
    """Pick a stage of an LLM run (an exported LiteRT variant, or the PyTorch baseline through its Hugging Face
    folder) and a prompt; the text streams in with its tokens/s beside the rate the run measured."""
    ss = st.session_state
    candidates = S.llm_runs(runs)
    if not candidates:
        st.info("No LLM run selected: run `edgeopt demo llm` and open runs/demo-llm.")
        return
    c1, c2 = st.columns([1, 3])
    label = c1.selectbox("Run", [r.label for r in candidates], key="llm-run")
    info = next(r for r in candidates if r.label == label)
    variants = G.llm_variants(info.path, info.ledger, sess.config.allowed)
    usable = {v.stage: v for v in variants if v.usable}
    blocked = [v for v in variants if not v.usable]
    if blocked:
        st.caption("Not offered here: " + "; ".join(f"{v.stage} ({v.why})" for v in blocked))
    if not usable:
        st.warning("No stage of this run can generate here (see above).")
        return
    names = list(usable)
    best = info.ledger.best if info.ledger.best in usable else names[-1]
    stage = c2.selectbox("Variant", names, index=names.index(best), key="llm-variant",
                         format_func=lambda n: usable[n].label)
    v = usable[stage]
    m = v.measured
    st.caption(f"Measured in the run: decode {_num(m.get('decode_tok_s'), '.1f', ' tok/s')}, TTFT "
               f"{_num(m.get('ttft_ms'), '.0f', ' ms')} (prompt {m.get('prompt_tokens', '?')} tokens), prefill "
               f"{_num(m.get('prefill_tok_s'), '.0f', ' tok/s')}, top-1 agreement "
               f"{_num(m.get('top1_agreement'), '.4f')}"
               f"; {v.path}")
    prompt = st.text_area("Prompt", value="What is the capital of France?", max_chars=G.MAX_PROMPT_CHARS,
                          key="llm-prompt", height=100)
    c = st.columns(6)
    max_new = c[0].number_input("max new tokens", 1, G.MAX_NEW_TOKENS, 64, key="llm-max")
    temperature = c[1].number_input("temperature", 0.0, G.MAX_TEMPERATURE, 0.0, step=0.1, key="llm-temp",
                                    help="0 = greedy")
    top_k = c[2].number_input("top-k", 0, G.MAX_TOP_K, 0, key="llm-topk", help="0 = every token")
    top_p = c[3].number_input("top-p", 0.01, 1.0, 1.0, step=0.05, key="llm-topp")
    seed = c[4].number_input("seed", 0, 2**31 - 1, 0, key="llm-seed")
    threads = c[5].number_input("threads", 1, G.MAX_THREADS, 2, key="llm-threads")
    chat = st.radio("Chat template", list(CHAT), horizontal=True, key="llm-chat",
                    help="auto: wrap the prompt as a user turn when the tokenizer has a chat template")
    if st.button("Generate", key="llm-go", disabled=bool(worker().active("llm"))):
        try:
            req = G.generation_request(prompt, max_new, temperature, top_k, top_p, seed, CHAT[chat])
            tr = G.Transcript(v.stage, req.prompt, req.max_new_tokens)
            job = worker().submit(G.generation_job(ss["llm_cache"], v, req, tr, int(threads)), "llm",
                                  f"generate on {v.stage}")
            ss["llm_current"] = (job, tr, dict(m))
            ss["llm_history"].append(tr)
            st.rerun()
        except InputError as e:
            st.error(str(e))
    stream_panel()
    done = [t.snapshot() for t in reversed(ss["llm_history"][-10:]) if t.done]
    if done:
        st.dataframe([{"variant": d["variant"], "runtime": d["runtime"], "status": d["status"],
                       "prompt": d["prompt"][:60], "prompt tokens": d["prompt_tokens"], "new tokens": d["new_tokens"],
                       "TTFT ms": None if d["ttft_ms"] is None else round(d["ttft_ms"], 1),
                       "prefill tok/s": None if d["prefill_tok_s"] is None else round(d["prefill_tok_s"]),
                       "decode tok/s": None if d["decode_tok_s"] is None else round(d["decode_tok_s"], 1),
                       "stopped": d["stopped"]} for d in done], hide_index=True, width="stretch")


def stream_panel() -> None:
    """The current generation: its text so far and the meter, redrawn every STREAM_POLL_S seconds while it runs;
    when the job ends the page reruns once (the history and the Generate button update)."""
    ss = st.session_state
    if ss.get("llm_current") is None:
        return
    active = not ss["llm_current"][0].done

    def panel() -> None:
        job, tr, measured = st.session_state["llm_current"]
        seen = st.session_state["seen_done"]
        if job.done and job.id not in seen and active:
            seen.add(job.id)
            st.rerun()
        snap = tr.snapshot()
        with st.container(border=True):
            st.markdown(f"**{snap['variant']}** · {snap['runtime'] or 'loading the model'} · {snap['status']}")
            st.code(snap["text"] or "…", language=None, wrap_lines=True)
            c = st.columns(4)
            ref = measured.get("decode_tok_s")
            live = snap["decode_tok_s"]
            c[0].metric("decode", _num(live, ".1f", " tok/s"), delta_color="off",
                        delta=f"{live / ref:.2f}× the run's {ref:.1f} tok/s" if live and ref else None)
            c[1].metric("TTFT", _num(snap["ttft_ms"], ".0f", " ms"),
                        delta=f"prompt {snap['prompt_tokens']} tokens" if snap["prompt_tokens"] else None,
                        delta_color="off")
            c[2].metric("prefill", _num(snap["prefill_tok_s"], ".0f", " tok/s"))
            c[3].metric("tokens", f"{snap['new_tokens']} / {snap['max_new_tokens']}")
            st.progress(min(1.0, snap["new_tokens"] / max(1, snap["max_new_tokens"])), text=G.meter_text(snap))
            if snap["load_s"]:
                st.caption(f"model loaded in {snap['load_s']:.1f} s (kept open for the next prompt)")
            if not job.done and st.button("Stop", key=f"llm-stop-{job.id}"):
                job.cancel()
            if job.status == "failed":
                st.error(f"{job.label}: {job.error}")
            elif job.status == "cancelled":
                st.warning(f"{job.label}: stopped after {snap['new_tokens']} tokens")

    st.fragment(panel, run_every=STREAM_POLL_S if active else None)()


# ---------------------------------------------------------------------------------------- page

def main() -> None:
    st.set_page_config(page_title="edgeopt dashboard", layout="wide")
    if not authorized(config()):
        return
    sess = session()
    runs = sidebar(sess)
    llm = bool(S.llm_runs(runs))  # the Generate tab shows only when a selected run measured LLM stages
    tabs = st.tabs(["Compare", "Per-layer", "Run a model", "Live", *(["Generate (LLM)"] if llm else [])])
    with tabs[0]:
        tab_compare(runs)
    with tabs[1]:
        tab_layers(runs)
    with tabs[2]:
        tab_run(sess)
    with tabs[3]:
        tab_live(sess)
    if llm:
        with tabs[4]:
            tab_llm(sess, runs)


main()
