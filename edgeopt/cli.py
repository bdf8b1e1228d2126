"""The `edgeopt` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from edgeopt.errors import EdgeoptError
from edgeopt.target import get_target

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make neural networks fit edge devices, and prove it with measurements.")
console = Console()
err = Console(stderr=True)


def _guard(fn, *args, **kwargs):
    """Run an API call; user-facing errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        return fn(*args, **kwargs)
    except EdgeoptError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished stages are kept; rerun with --resume to continue", highlight=False)
        raise typer.Exit(130) from None
    except Exception as e:  # an unexpected failure still gets one line (set EDGEOPT_DEBUG=1 for the traceback)
        if os.environ.get("EDGEOPT_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        err.print(f"[red]error:[/red] {e.__class__.__name__}: {first}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _dump(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command()
def target(name: str = typer.Argument("auto", help="auto, or a declared target such as cpu-avx2, arm64, npu-qdq"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Show the detected (or declared) target and the defaults it implies."""
    t = _guard(get_target, name)
    if as_json:
        return _dump(t.to_dict())
    from rich.table import Table

    info = Table(title=f"target {t.name}", title_justify="left", show_header=False)
    for k in ("arch", "cpu_model", "cores", "memory_gb", "isa", "runtimes"):
        v = getattr(t, k, None)
        info.add_row(k, ", ".join(v) if isinstance(v, tuple) else (", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else str(v)))
    console.print(info)
    imp = Table(title="what it implies", title_justify="left")
    imp.add_column("setting")
    imp.add_column("why")
    for s, why in t.implications():
        imp.add_row(s, why)
    console.print(imp)


@app.command()
def analyze(model: str = typer.Argument(..., help="an .onnx or .tflite file, a Hugging Face folder or zoo:NAME"),
            target_name: str = typer.Option("auto", "--target", "-t"),
            seq_len: int = typer.Option(128, help="length bound to dynamic sequence dims"),
            batch: int = typer.Option(1),
            as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Op census, parameters, FLOPs, memory estimates and optimization opportunities."""
    from edgeopt.analyze import analyze as run  # lazy: keeps `edgeopt --help` fast

    report = _guard(run, model, target=target_name, seq_len=seq_len, batch=batch)
    if as_json:
        return _dump(report)
    from edgeopt.analyze.render import render_analysis  # lazy: keeps `edgeopt --help` fast

    console.print(render_analysis(report))


@app.command()
def profile(model: str = typer.Argument(...), threads: int = typer.Option(2), runs: int = typer.Option(20),
            seq_len: int = typer.Option(128), batch: int = typer.Option(1), top: int = typer.Option(15),
            as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Per-node and per-op-type latency from ONNX Runtime's profiler."""
    from edgeopt.analyze.profile import profile as run  # lazy: keeps `edgeopt --help` fast

    report = _guard(run, model, threads=threads, runs=runs, seq_len=seq_len, batch=batch)
    if as_json:
        return _dump(report)
    from edgeopt.analyze.render import render_profile  # lazy: keeps `edgeopt --help` fast

    console.print(render_profile(report, top=top))


@app.command()
def optimize(model: Optional[str] = typer.Argument(None, help="model (default: the recipe's model.source)"),
             recipe: str = typer.Option("auto", "--recipe", "-r",
                                        help="a YAML file or a bundled recipe name (auto: any model, no data needed)"),
             data_spec: Optional[str] = typer.Option(None, "--data", help="calibration and evaluation data: an .npz "
                                                     "(one array per input), a .txt (sentences), zoo:images, zoo:speech, "
                                                     "zoo:sentences, random:N (default: picked from the model's inputs)"),
             target_name: Optional[str] = typer.Option(None, "--target", "-t"),
             out: Path = typer.Option(Path("runs/latest"), "--out", "-o"),
             resume: bool = typer.Option(False, "--resume", help="reuse finished stages (and search trials) of an earlier run in OUT"),
             trials: Optional[int] = typer.Option(None, "--trials", help="search budget: trials (default: the recipe's)"),
             minutes: Optional[float] = typer.Option(None, "--minutes", help="search budget: wall-clock minutes"),
             train_minutes: Optional[float] = typer.Option(None, "--train-minutes",
                                                           help="training budget for structural candidates (0: none)"),
             executor: str = typer.Option("local", "--executor", help="local, or ray (build tasks anywhere, timing "
                                          "only on nodes with the target's resource)"),
             ray_address: Optional[str] = typer.Option(None, "--ray-address", help="an existing Ray cluster (HOST:PORT)"),
             as_json: bool = typer.Option(False, "--json", help="print the ledger as JSON")):
    """Run a recipe (default auto: a search over this target's candidates), measure every stage, write
    OUT/ledger.json, report.md, report.html and OUT/best/."""
    from edgeopt.pipeline import optimize as run  # lazy: keeps `edgeopt --help` fast
    from edgeopt.report.table import choice_notes, render_table  # lazy: keeps `edgeopt --help` fast

    search = {"trials": trials, "minutes": minutes, "train_minutes": train_minutes}
    res = _guard(run, model, recipe=recipe, target=target_name, out=out, resume=resume,
                 console=err if as_json else console, data=data_spec,
                 search={k: v for k, v in search.items() if v is not None} or None,
                 executor=executor, ray_address=ray_address)
    if as_json:
        _dump(res.ledger.to_json())
    else:
        _print_run(res.ledger)
        console.print(f"ledger: {out / 'ledger.json'}  report: {out / 'report.html'} ({out / 'report.md'})  "
                      f"best: {res.best or 'none passed its gate'}")
    for why in res.failed.values():  # a failed branch: the others were measured and reported, the exit says so
        err.print(f"[red]error:[/red] {why}", highlight=False, soft_wrap=True)
    if res.failed:
        raise typer.Exit(1)


def _print_run(ledger) -> None:
    """The stage table, the search's trials and front, and the notes on choices and missing speed-ups."""
    from edgeopt.report.table import choice_notes, render_search, render_table  # lazy: keeps `edgeopt --help` fast

    if ledger.search:
        console.print(render_search(ledger))
    console.print(render_table(ledger))
    _print_llm(ledger)
    for note in choice_notes(ledger):
        console.print(f"[dim]{note}[/dim]")


@app.command()
def bench(models: list[str] = typer.Argument(..., help="two or more models to time side by side"),
          threads: int = typer.Option(2), runs: int = typer.Option(50), warmup: int = typer.Option(10),
          seq_len: int = typer.Option(128), batch: int = typer.Option(1),
          data: Optional[str] = typer.Option(None, help="data spec (.npz, .txt, zoo:sentences[a:b], random:N)"),
          as_json: bool = typer.Option(False, "--json")):
    """Time artifacts side by side (interleaved) and print speedups with their bootstrap interval."""
    from edgeopt.measure.bench import bench as run  # lazy: keeps `edgeopt --help` fast
    from edgeopt.measure.bench import render  # lazy: keeps `edgeopt --help` fast

    res = _guard(run, models, threads=threads, runs=runs, warmup=warmup, data=data, seq_len=seq_len, batch=batch)
    if as_json:
        return _dump(res.to_json())
    console.print(render(res))


@app.command()
def passes(as_json: bool = typer.Option(False, "--json")):
    """List every registered pass with its config fields."""
    from edgeopt.passes.base import registry  # lazy: keeps `edgeopt --help` fast

    reg = _guard(registry)
    rows = {n: {"accepts": list(c.accepts), "produces": c.produces, "doc": (c.__doc__ or "").strip().splitlines()[0] if c.__doc__ else "",
                "config": {f: str(info.annotation) for f, info in c.Config.model_fields.items()}} for n, c in reg.items()}
    if as_json:
        return _dump(rows)
    from rich.table import Table

    t = Table(title="passes", title_justify="left")
    for c in ("pass", "accepts", "config", "what it does"):
        t.add_column(c)
    for n, r in rows.items():
        t.add_row(n, "/".join(r["accepts"]), ", ".join(r["config"]), r["doc"])
    console.print(t)


@app.command()
def demo(which: str = typer.Argument("minilm", help="minilm (the search on all-MiniLM-L6-v2), llm (SmolLM2-135M "
                                     "on LiteRT: export, quantize, generate, measure) or whisper (Whisper tiny.en)"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/demo, runs/demo-llm, "
                                            "runs/demo-whisper)"),
         resume: bool = typer.Option(False, "--resume"),
         benchmark: bool = typer.Option(False, "--benchmark", help="whisper: 10 sentences, 5 timed rounds, peak RSS"),
         target: str = typer.Option("cpu", "--target", help="whisper: cpu, cpu_avx, cpu_avx2, cpu_avx512, cuda, mps, "
                                    "mobile_cpu, mobile_gpu, npu"),
         compare_fusion: bool = typer.Option(False, "--compare-fusion", help="whisper: INT8 with and without fusion"),
         threads: int = typer.Option(2, "--threads", help="whisper: intra-op threads")):
    """The search on zoo:minilm (recipe minilm-auto), `demo llm` (recipe llm-litert on zoo:smollm2-135m), or
    `demo whisper` (Whisper tiny.en's stages for a target, transcribing spoken sentences), offline: prints the
    stage table (and writes the report)."""
    from edgeopt.pipeline import optimize as run  # lazy: keeps `edgeopt --help` fast

    if which not in ("minilm", "llm", "whisper"):
        err.print(f"[red]error:[/red] unknown demo {which!r} (minilm, llm, whisper)", highlight=False)
        raise typer.Exit(2)
    if which == "whisper":
        from edgeopt.speech.demo import render, whisper_demo

        out = out or Path("runs/demo-whisper")
        res = _guard(whisper_demo, target, benchmark=benchmark, compare_fusion=compare_fusion, out=out,
                     threads=threads, log=lambda s: console.print(s, highlight=False))
        console.print(render(res))
        for note in res["notes"]:
            console.print(f"note: {note}", highlight=False)
        from edgeopt.ledger import write_text_atomic

        write_text_atomic(out / "whisper.json", json.dumps(res, indent=1, default=str))
        console.print(f"results: {out / 'whisper.json'}")
        return
    if which == "llm":
        out = out or Path("runs/demo-llm")
        console.print("[bold]edgeopt demo llm[/bold]: SmolLM2-135M-Instruct (real weights, from a 4-bit GGUF), "
                      "re-authored for LiteRT with prefill/decode signatures, fp32 / int8 / int4 variants, "
                      "2 threads, measured against PyTorch")
        res = _guard(run, None, recipe="llm-litert", out=out, resume=resume, console=console)
        _print_run(res.ledger)
        if res.best is not None:
            console.print(f"generate with it: edgeopt generate {res.best} --prompt \"What is the capital of France?\"")
    else:
        out = out or Path("runs/demo")
        console.print("[bold]edgeopt demo[/bold]: all-MiniLM-L6-v2 (bundled), recipe minilm-auto (a search over this "
                      "CPU's candidates), batch 1, sequence 128, 2 threads")
        res = _guard(run, None, recipe="minilm-auto", out=out, resume=resume, console=console)
        _print_run(res.ledger)
    console.print(f"report: {out / 'report.html'} ({out / 'report.md'})  ledger: {out / 'ledger.json'}  best model: {res.best}")


def _print_llm(ledger) -> None:
    """The LLM figures of a run: one row per measured stage."""
    from edgeopt.report.table import llm_table  # lazy: rich tables only here

    table = llm_table(ledger)
    if table is not None:
        console.print(table)


@app.command()
def transcribe(files: list[Path] = typer.Argument(..., help="WAV files (any rate; stereo is downmixed, with a note)"),
               model: str = typer.Option("zoo:whisper-tiny-en", "--model", "-m", help="zoo:whisper-tiny-en, a Hugging "
                                         "Face Whisper folder or a CTranslate2 Whisper folder"),
               onnx: Optional[Path] = typer.Option(None, "--onnx", help="run exported graphs (a stage folder of "
                                                   "`edgeopt demo whisper` with encoder/decoder) instead of PyTorch"),
               threads: int = typer.Option(2, "--threads"),
               as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Transcribe speech with Whisper (greedy, English, no timestamps)."""
    from edgeopt.speech.whisper import transcribe_files

    rows = _guard(transcribe_files, list(files), model=model, onnx_dir=onnx, threads=threads)
    if as_json:
        return _dump(rows)
    for r in rows:
        for note in r["notes"]:
            err.print(f"note: {note}", highlight=False)
        console.print(f"{r['file']}: {r['text']}", highlight=False)
        err.print(f"  {r['audio_s']:.1f} s of audio in {r['seconds']:.2f} s (RTF {r['rtf']:.3f})", highlight=False)


@app.command()
def generate(model: str = typer.Argument(..., help="an exported LLM (.tflite, or its stage folder with llm.json), a "
                                         "Hugging Face causal-LM folder, or zoo:smollm2-135m"),
             prompt: str = typer.Option(..., "--prompt", "-p"),
             max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n"),
             temperature: float = typer.Option(0.0, help="0 = greedy"),
             top_k: int = typer.Option(0, help="sample from the k most likely tokens (0 = all)"),
             top_p: float = typer.Option(1.0, help="sample from the smallest set reaching this probability"),
             seed: int = typer.Option(0, help="sampling seed"),
             chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="wrap the prompt in the tokenizer's "
                                                 "chat template (default: when it has one)"),
             stop: list[str] = typer.Option([], "--stop", help="stop at this text (repeatable)"),
             threads: int = typer.Option(2),
             as_json: bool = typer.Option(False, "--json", help="print the text and timing as JSON at the end")):
    """Generate text, streamed as it comes, then TTFT and tokens/s (LiteRT for exported models, else PyTorch)."""
    from edgeopt.llm.generate import Sampling, open_generator  # lazy: keeps `edgeopt --help` fast

    gen = _guard(open_generator, model, threads=threads)
    sampling = _guard(Sampling, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def run() -> str:
        pieces = []
        for piece in gen.stream(prompt, max_new_tokens=max_new_tokens, sampling=sampling, chat=chat, stop=stop):
            pieces.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        return "".join(pieces)

    try:
        text = _guard(run)
    finally:
        gen.session.close()
    st = gen.stats
    if as_json:
        _dump({"text": text, "runtime": getattr(gen.session, "label", gen.session.name), **st.to_dict()})
        return
    sys.stdout.write("\n")
    console.print(f"[dim]{getattr(gen.session, 'label', gen.session.name)} · prompt {st.prompt_tokens} tokens · "
                  f"TTFT {st.ttft_ms:.0f} ms ({st.prefill_tok_s:.0f} tok/s prefill) · {st.new_tokens} tokens at "
                  f"{st.decode_tok_s:.1f} tok/s decode · stopped: {st.stopped}[/dim]", highlight=False)


@app.command()
def litertlm(model: str = typer.Argument(..., help="an exported LLM stage folder (or its .tflite) with llm.json and "
                                         "the tokenizer, exported with kv_layout transposed"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="the .litertlm file (default: beside the "
                                                "model)")):
    """Bundle an exported LLM as a .litertlm file for the LiteRT-LM engine (`edgeopt generate FILE.litertlm`)."""
    from edgeopt.llm.litertlm import bundle  # lazy: keeps `edgeopt --help` fast

    path = _guard(bundle, model, out)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); run it: edgeopt generate {path} -p \"Hi\"",
                  highlight=False)


@app.command()
def diffuse(model: str = typer.Argument(..., help="zoo:sd-1.4, zoo:sd-small (random weights) or a local Stable "
                                        "Diffusion 1.x folder (safetensors)"),
            prompt: str = typer.Option(..., "--prompt", "-p"),
            steps: int = typer.Option(..., "--steps", "-n", help="scheduler steps"),
            guidance: float = typer.Option(7.5, help="classifier-free guidance scale (1 = the prompt alone)"),
            seed: int = typer.Option(0, help="seed of the initial latents"),
            scheduler: str = typer.Option("ddim", help="ddim, pndm or euler"),
            size: Optional[str] = typer.Option(None, "--size", help="HxW pixels, multiples of 8 (default: the "
                                               "model's, 512x512 for SD-1.x)"),
            negative_prompt: str = typer.Option("", "--negative-prompt"),
            out: Path = typer.Option(Path("image.png"), "--out", "-o", help="PNG to write"),
            threads: int = typer.Option(2),
            as_json: bool = typer.Option(False, "--json", help="print the timings as JSON")):
    """Draw an image from a prompt with Stable Diffusion 1.x (PyTorch), write it as PNG, print per-component latency."""
    from edgeopt.diffusion.sd import load_sd  # lazy: imports torch
    from edgeopt.diffusion.text2img import check_png_path, check_settings, parse_size, save_png, text_to_image

    height, width = _guard(parse_size, size) if size else (None, None)
    _guard(check_settings, steps, guidance, scheduler, height, width)  # before a model is built
    _guard(check_png_path, out)
    sd = _guard(load_sd, model)
    with _step_progress("denoising") as progress:
        image, stats = _guard(text_to_image, sd, prompt, steps, guidance=guidance, seed=seed, height=height,
                              width=width, negative_prompt=negative_prompt, scheduler=scheduler, progress=progress,
                              threads=threads)
    _guard(save_png, image, out)
    for w in stats.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    if as_json:
        return _dump({"model": model, "image": str(out), **stats.to_dict()})
    console.print(_diffuse_table(model, stats))
    console.print(f"image: {out}", highlight=False)


@contextlib.contextmanager
def _step_progress(description: str):
    """Yields `update(done, total)` driving a transient rich bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _diffuse_table(model: str, st):
    """Per-component latency of one text-to-image run."""
    from rich.table import Table

    t = Table(title=f"{model} · {st.height}x{st.width} · {st.scheduler} · {st.threads} threads", title_justify="left")
    for col, kw in (("component", {}), ("ms", {"justify": "right"}), ("", {"style": "dim"})):
        t.add_column(col, **kw)
    prompts = "prompt + negative prompt" if st.unet_batch == 2 else "prompt"
    t.add_row("text encoder", f"{st.text_encoder_ms:.1f}", prompts)
    t.add_row("UNet step", f"{st.unet_step_ms:.1f}", f"median of {st.unet_calls} calls, batch {st.unet_batch}")
    t.add_row("UNet, all steps", f"{st.unet_total_ms:.1f}", "")
    t.add_row("VAE decode", f"{st.vae_decode_ms:.1f}", "")
    t.add_row("total", f"{st.total_ms:.1f}", f"peak RSS {st.peak_rss_mb:.0f} MB")
    return t


@app.command("finetune-diffusion")
def finetune_diffusion(model: str = typer.Argument(..., help="zoo:digits-diffusion (with --label), new:SIZE (a fresh "
                                                   "RGB UNet), zoo:sd-small, zoo:sd-1.4, or a Stable Diffusion or "
                                                   "DDPM-pipeline folder (safetensors)"),
                       images: Path = typer.Option(..., "--images", help="folder of PNG/JPEG/BMP/WebP images "
                                                   "(only read)"),
                       out: Path = typer.Option(..., "--out", "-o", help="output folder: new, or the run to --resume"),
                       steps: int = typer.Option(500, "--steps", "-n", help="training steps"),
                       lr: float = typer.Option(1e-4, help="learning rate (AdamW, constant)"),
                       batch: int = typer.Option(4, help="images per step"),
                       size: Optional[int] = typer.Option(None, help="image side in pixels (default: the model's; "
                                                          "Stable Diffusion: a multiple of 8)"),
                       seed: int = typer.Option(0, help="seed of the batches, noise and timesteps"),
                       prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Stable Diffusion: what the "
                                                            "images show (default 'a photo')"),
                       label: Optional[int] = typer.Option(None, help="class-conditional models: the images' class"),
                       resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in OUT"),
                       threads: int = typer.Option(2),
                       as_json: bool = typer.Option(False, "--json", help="print the result as JSON")):
    """Fine-tune a diffusion model's UNet on a folder of images (resumable; Ctrl-C, then --resume). Runs on the CPU,
    so it is for small models: Stable Diffusion with real weights needs a GPU."""
    from edgeopt.diffusion.finetune import finetune_diffusion as run  # lazy: imports torch

    result = _guard(run, model, images, out, steps=steps, lr=lr, batch=batch, size=size, seed=seed, resume=resume,
                    prompt=prompt, label=label, threads=threads)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    if as_json:
        return _dump(result.to_dict())
    _print_finetune(result)


def _print_finetune(result) -> None:
    """Images used and skipped (with reasons), steps, first and last loss, and where the model is."""
    d = result.to_dict()
    kind = "Stable Diffusion, UNet only" if result.kind == "stable-diffusion" else "UNet2DModel"
    console.print(f"fine-tuned {result.model} ({kind}) on {len(result.images)} images of {result.size}x{result.size}",
                  highlight=False)
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} files:", highlight=False)
        for path, reason in result.skipped[:10]:
            console.print(f"  {path.name}: {reason}", highlight=False, soft_wrap=True)
        if len(result.skipped) > 10:
            console.print(f"  … and {len(result.skipped) - 10} more (--json lists them all)", highlight=False)
    done = "already finished" if result.resumed_from == result.steps else f"{result.seconds:.1f} s" + (
        f", resumed at step {result.resumed_from}" if result.resumed_from else "")
    console.print(f"steps {result.steps} ({done}) · loss {d['loss_first_10pct']:.4f} → {d['loss_last_10pct']:.4f} "
                  "(mean of the first / last 10% of steps)", highlight=False, soft_wrap=True)
    use = (f"edgeopt diffuse {result.out} -p {json.dumps(result.prompt)} -n 25" if result.kind == "stable-diffusion"
           else f"diffusers.DDPMPipeline.from_pretrained({str(result.out)!r})")
    console.print(f"model: {result.out}  ({use})", highlight=False, soft_wrap=True)


@app.command()
def report(runs: list[Path] = typer.Argument(..., help="run directories (or their ledger.json files)"),
           out: Path = typer.Option(Path("report.html"), "--out", "-o"),
           profile: list[str] = typer.Option([], "--profile", help="stage of the first run to profile per layer (repeatable; "
                                             "default: its first and its fastest ONNX stage)"),
           no_profile: bool = typer.Option(False, "--no-profile", help="no per-layer profiles"),
           threads: int = typer.Option(2, help="intra-op threads for --profile"),
           markdown: Optional[Path] = typer.Option(None, "--markdown", help="also write markdown (+PNG figures)")):
    """One self-contained HTML report (plotly inline, opens offline) from one or more runs."""
    from edgeopt.report.html import build_report, default_profile_stages, load_run, profile_stages  # lazy: keeps `edgeopt --help` fast
    from edgeopt.report.markdown import build_markdown  # lazy: keeps `edgeopt --help` fast

    stages = profile or ([] if no_profile else default_profile_stages(_guard(load_run, runs[0])))
    profiles = _guard(profile_stages, runs[0], stages, threads=threads) if stages else None
    console.print(f"report: {_guard(build_report, runs, out, profiles=profiles)}")
    if markdown is not None:
        console.print(f"markdown: {_guard(build_markdown, runs, markdown, profiles=profiles)}")


@app.command()
def dashboard(runs: Optional[list[Path]] = typer.Argument(None, help="run directories or folders of runs (default ./runs)"),
              host: str = typer.Option("127.0.0.1", help="address to listen on (loopback unless you say otherwise)"),
              port: int = typer.Option(8501),
              root: list[Path] = typer.Option([], "--root", help="further folder the page may read model/recipe files from"),
              workdir: Optional[Path] = typer.Option(None, help="where runs started from the page go (default runs/dashboard)"),
              token: Optional[str] = typer.Option(None, help="access token the page asks for (better: $EDGEOPT_DASHBOARD_TOKEN); "
                                                  "off loopback one is required, and generated and printed when not given")):
    """The interactive dashboard (Streamlit) on HOST:PORT."""
    from edgeopt.dashboard import serve  # lazy: keeps `edgeopt --help` fast

    raise typer.Exit(_guard(serve, runs or [], host=host, port=port, roots=root, workdir=workdir, token=token))


@app.command()
def winograd(model_or_layer: str = typer.Argument(..., help="conv:C_INxC_OUTxHxW, unet:tiny|small|medium, zoo:NAME, a model path or package.module:attr"),
             tiles: str = typer.Option("2,4,6,8", help="output tiles m to try, F(m×m, 3×3)"),
             error_budget: float = typer.Option(1e-5, "--error-budget", help="largest norm-wise relative error vs float64"),
             runs: int = typer.Option(5, help="timed rounds per layer"), threads: int = typer.Option(2),
             input_shape: Optional[str] = typer.Option(None, "--input-shape", help="N,C,H,W (module paths)"),
             batch: int = typer.Option(1, help="batch of a conv: layer spec"),
             as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Winograd tuner: per eligible 3x3 conv, direct vs every tile (multiplications, latency, memory, error) and the pick."""
    # torch-backed: imported when the command runs
    from edgeopt.measure.kernels import winograd_tune  # lazy: imports torch
    from edgeopt.report.kernels import render  # lazy: keeps `edgeopt --help` fast

    rep = _guard(winograd_tune, model_or_layer, tiles=tiles, error_budget=error_budget, runs=runs, threads=threads,
                 input_shape=input_shape, batch=batch)
    return _dump(rep) if as_json else console.print(render(rep))


kernels_app = typer.Typer(no_args_is_help=True, help="Kernel micro-benchmarks: attention, conv, unet.")
app.add_typer(kernels_app, name="kernels")


@kernels_app.command("attention")
def kernels_attention(seq_lens: str = typer.Option("256,512,1024,2048,4096", "--seq-lens", help="tokens (comma-separated)"),
                      head_dims: str = typer.Option("40,64,80", "--head-dims"),
                      impls: str = typer.Option("naive,partial_softmax,flash,sdpa", help="implementations to compare"),
                      heads: int = typer.Option(2), batch: int = typer.Option(1), runs: int = typer.Option(3),
                      threads: int = typer.Option(2), q_block: int = typer.Option(256, "--q-block"),
                      k_block: int = typer.Option(512, "--k-block"),
                      memory: bool = typer.Option(True, "--memory/--no-memory", help="also measure ATen-visible peak bytes"),
                      as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Attention: sequence lengths × head dims × implementations (latency, peak intermediate memory, error)."""
    # torch-backed: imported when the command runs
    from edgeopt.measure.kernels import attention_grid  # lazy: imports torch
    from edgeopt.report.kernels import render  # lazy: keeps `edgeopt --help` fast

    rep = _guard(attention_grid, seq_lens, head_dims, impls, heads=heads, batch=batch, runs=runs, threads=threads,
                 q_block=q_block, k_block=k_block, measure_memory=memory)
    return _dump(rep) if as_json else console.print(render(rep))


@kernels_app.command("conv")
def kernels_conv(channels: str = typer.Option("32,64,128,256,512", help="C (C→C 3x3 conv), comma-separated"),
                 sizes: str = typer.Option("16,32,64,128", help="spatial sizes H = W"),
                 tiles: str = typer.Option("2,4,6,8"), error_budget: float = typer.Option(1e-5, "--error-budget"),
                 runs: int = typer.Option(3), threads: int = typer.Option(2), batch: int = typer.Option(1),
                 as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """3x3 convolution: channels × spatial sizes, direct vs each Winograd tile (latency, error, memory, choice)."""
    # torch-backed: imported when the command runs
    from edgeopt.measure.kernels import conv_grid  # lazy: imports torch
    from edgeopt.report.kernels import render  # lazy: keeps `edgeopt --help` fast

    rep = _guard(conv_grid, channels, sizes, tiles, error_budget=error_budget, runs=runs, threads=threads, batch=batch)
    return _dump(rep) if as_json else console.print(render(rep))


@kernels_app.command("unet")
def kernels_unet(size: str = typer.Option("small", help="tiny, small (32x32 latents) or medium (64x64)"),
                 runs: int = typer.Option(10), threads: int = typer.Option(2),
                 tune_runs: int = typer.Option(3, "--tune-runs", help="timed rounds per layer choice"),
                 child_memory: bool = typer.Option(True, "--child-memory/--no-child-memory", help="peak RSS of a child per row"),
                 as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """A diffusers UNet with fused norm, attention variants and Winograd switched on one by one (Table 1 style)."""
    # torch- and diffusers-backed: imported when the command runs
    from edgeopt.unet_table import unet_table  # lazy: imports torch
    from edgeopt.report.kernels import render  # lazy: keeps `edgeopt --help` fast

    rep = _guard(unet_table, size, runs=runs, threads=threads, tune_runs=tune_runs, child_memory=child_memory)
    return _dump(rep) if as_json else console.print(render(rep))


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
