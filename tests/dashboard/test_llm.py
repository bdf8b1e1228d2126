"""LLM generation in the dashboard: which stages are offered, input checks, and the job that streams text and the
tokens/s meter into a Transcript (a fake Generator; one real generation on a tiny PyTorch model)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from dashboard.fake_llm import Opener
from report.factory import make_ledger, write_llm_run

from edgeopt.dashboard import llm as G
from edgeopt.dashboard.worker import Worker
from edgeopt.errors import InputError


def _variant(tmp_path, stage="litert-int8"):
    run = write_llm_run(tmp_path / "run")
    return next(v for v in G.llm_variants(run, _ledger(run)) if v.stage == stage)


def _ledger(run):
    from edgeopt.report.html import load_run

    return load_run(run)


def _run(opener, variant, req, threads=2, cache=None, worker=None):
    cache = cache or G.GeneratorCache(opener)
    tr = G.Transcript(variant.stage, req.prompt, req.max_new_tokens)
    job = (worker or Worker(serial=("llm",))).submit(G.generation_job(cache, variant, req, tr, threads), "llm", "gen")
    return job, tr, cache


# ---------------------------------------------------------------------------------------- variants

def test_variants_are_the_exported_stage_folders_and_the_cached_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))
    run = write_llm_run(tmp_path / "run", exported=("litert", "litert-int8"))
    (run / "litert-int4").mkdir()
    (run / "litert-int4" / "model.tflite").write_bytes(b"x")  # no llm.json: not an exported LLM
    vs = {v.stage: v for v in G.llm_variants(run, _ledger(run))}
    assert list(vs) == ["baseline", "litert", "litert-int8", "litert-int4"]
    int8 = vs["litert-int8"]
    assert int8.usable and int8.runtime == "litert" and int8.path == (run / "litert-int8").resolve()
    assert int8.quantization == "int8 dyn" and int8.measured["decode_tok_s"] == 120.0
    assert int8.label == "litert-int8 (litert, int8 dyn) · 120.0 tok/s in the run"
    assert not vs["litert-int4"].usable and "no llm.json in litert-int4/" in vs["litert-int4"].why
    base = vs["baseline"]
    assert not base.usable and "not in the edgeopt cache yet" in base.why and base.runtime == "torch"
    folder = tmp_path / "cache" / "zoo" / "smollm2-135m-instruct"  # the zoo's cached folder, once built
    folder.mkdir(parents=True)
    for name in ("config.json", "edgeopt.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    base = next(v for v in G.llm_variants(run, _ledger(run)) if v.stage == "baseline")
    assert base.usable and base.path == folder and base.quantization == "fp32 (PyTorch)"
    assert G.llm_variants(tmp_path, make_ledger()) == []  # not an LLM run


def test_a_stage_without_a_tokenizer_is_not_offered(tmp_path):
    run = write_llm_run(tmp_path / "run")
    (run / "litert" / "tokenizer.json").unlink()  # e.g. zoo:tinyllama-mini: random weights, no tokenizer
    v = G.llm_variants(run, _ledger(run))[1]
    assert v.stage == "litert" and not v.usable and "no tokenizer in litert/" in v.why


def test_a_baseline_folder_outside_the_open_folders_is_not_offered(tmp_path):
    hf = tmp_path / "elsewhere" / "model"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "tokenizer.json").write_text("{}")
    run = write_llm_run(tmp_path / "runs" / "r", source=str(hf))
    base = G.llm_variants(run, _ledger(run))[0]
    assert not base.usable and "outside the folders open to the dashboard" in base.why
    base = G.llm_variants(run, _ledger(run), allowed=[tmp_path / "elsewhere"])[0]
    assert base.usable and base.path == hf.resolve()


def test_a_stage_folder_leaving_the_run_is_refused(tmp_path):
    run = write_llm_run(tmp_path / "runs" / "r")
    led = _ledger(run)
    led.stages[2].name = ".."  # a crafted ledger: the stage folder would be the run's parent
    (tmp_path / "runs" / "llm.json").write_text("{}")
    v = G.llm_variants(run, led)[2]
    assert not v.usable and "outside the run directory" in v.why


# ---------------------------------------------------------------------------------------- requests

@pytest.mark.parametrize("kw, match", [
    ({"prompt": "   "}, "prompt: empty"),
    ({"prompt": "x" * (G.MAX_PROMPT_CHARS + 1)}, f"at most {G.MAX_PROMPT_CHARS}"),
    ({"prompt": "a\x00b"}, "NUL"),
    ({"max_new_tokens": 0}, "max new tokens: a whole number from 1 to 512"),
    ({"max_new_tokens": G.MAX_NEW_TOKENS + 1}, "max new tokens"),
    ({"max_new_tokens": 2.5}, "max new tokens"),
    ({"max_new_tokens": True}, "max new tokens"),
    ({"temperature": -0.1}, r"temperature: a number in \[0.0, 2.0\]"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top-k"),
    ({"top_p": 0.0}, r"top-p: a number in \(0.0, 1.0\]"),
    ({"seed": -1}, "seed"),
    ({"stop": ["x" * 41]}, "stop: at most 4 stop strings of at most 40 characters"),
    ({"chat": "yes"}, "chat: on, off or automatic"),
])
def test_requests_are_checked_with_one_line_errors(kw, match):
    args = {"prompt": "What is the capital of France?", **kw}
    with pytest.raises(InputError, match=match) as e:
        G.generation_request(**args)
    assert "\n" not in str(e.value)


def test_a_valid_request_keeps_its_values():
    r = G.generation_request("hi", 16, 0.7, 40, 0.9, 3, True, ["\n\n", ""])
    assert (r.max_new_tokens, r.temperature, r.top_k, r.top_p, r.seed, r.chat, r.stop) == (16, 0.7, 40, 0.9, 3, True,
                                                                                           ("\n\n",))


# ---------------------------------------------------------------------------------------- streaming

def test_pieces_and_the_meter_stream_into_the_transcript_while_generating(tmp_path):
    gate = threading.Event()
    opener = Opener(gate=gate, hold=2)
    v = _variant(tmp_path)
    req = G.generation_request("The capital of France is", max_new_tokens=4, temperature=0.5, top_k=5, seed=7,
                               chat=False)
    job, tr, cache = _run(opener, v, req, threads=3)
    for _ in range(500):  # the page's view mid-generation: two pieces in (and reported), the job still running
        if job.fraction == 0.5:
            break
        time.sleep(0.01)
    snap = tr.snapshot()
    assert snap["text"] == "Paris." and snap["status"] == "generating" and not job.done
    assert snap["runtime"] == "Fake LiteRT · 2 threads" and snap["ttft_ms"] == 20.0 and snap["decode_tok_s"] == 100.0
    assert snap["prompt_tokens"] == 5 and snap["prefill_tok_s"] == 250.0  # 5 tokens in 20 ms
    assert job.fraction == 0.5 and job.message == G.meter_text(snap)
    assert G.meter_text(snap) == "2/4 tokens · 100.0 tok/s decode · TTFT 20 ms (prompt 5 tokens, 250 tok/s prefill)"
    gate.set()
    assert job.wait(10) and job.status == "done"
    assert job.result["text"] == "Paris. It is" and job.result["status"] == "done" and job.result["new_tokens"] == 4
    assert "stopped: max tokens" in G.meter_text(job.result)
    path, threads, gen = opener.opened[0]
    assert (path, threads) == (v.path, 3) and gen.closed_streams == 1
    call = gen.calls[0]
    assert (call["max_new_tokens"], call["chat"], call["sampling"].temperature, call["sampling"].top_k,
            call["sampling"].seed) == (4, False, 0.5, 5, 7)
    assert not gen.session.closed  # kept open for the next prompt


def test_the_model_is_loaded_once_and_switching_variant_closes_the_previous(tmp_path):
    opener = Opener()
    cache = G.GeneratorCache(opener)
    w = Worker(serial=("llm",))
    run = write_llm_run(tmp_path / "run")
    vs = {v.stage: v for v in G.llm_variants(run, _ledger(run))}
    req = G.generation_request("hello there", max_new_tokens=2)
    for stage in ("litert-int8", "litert-int8", "litert"):
        job, tr, _ = _run(opener, vs[stage], req, cache=cache, worker=w)
        assert job.wait(10) and job.status == "done" and tr.text == "Paris."
    assert [(p.name, t) for p, t, _ in opener.opened] == [("litert-int8", 2), ("litert", 2)]
    assert opener.opened[0][2].session.closed and not opener.opened[1][2].session.closed
    assert tr.load_s is not None
    cache.close()
    assert opener.opened[1][2].session.closed and cache.key is None


def test_stop_ends_the_generation_at_the_next_token(tmp_path):
    gate = threading.Event()
    opener = Opener(gate=gate, hold=1)
    job, tr, _ = _run(opener, _variant(tmp_path), G.generation_request("hi", max_new_tokens=4))
    for _ in range(500):
        if job.fraction == 0.25:  # the first piece is in and reported; the generator waits for the gate
            break
        time.sleep(0.01)
    job.cancel()
    gate.set()
    assert job.wait(10) and job.status == "cancelled"
    assert tr.status == "cancelled" and tr.text == "Paris" and opener.opened[0][2].closed_streams == 1


def test_a_generator_error_is_one_line_on_the_job_and_the_transcript(tmp_path):
    why = "the prompt is 2000 tokens, longer than the largest prefill this model takes (129)"
    job, tr, _ = _run(Opener(fail=InputError(why)), _variant(tmp_path), G.generation_request("long"))
    assert job.wait(10) and job.status == "failed"
    assert job.error == tr.error == why
    assert tr.status == "failed"

    def broken(path, threads):
        raise RuntimeError("flatbuffer corrupt\nat offset 12")

    job, tr, _ = _run(broken, _variant(tmp_path / "b"), G.generation_request("x"))
    assert job.wait(10) and job.error == tr.error == "RuntimeError: flatbuffer corrupt"


def test_an_unusable_variant_or_bad_thread_count_is_refused_before_any_job(tmp_path):
    run = write_llm_run(tmp_path / "run", exported=())
    v = G.llm_variants(run, _ledger(run))[1]
    tr = G.Transcript(v.stage, "x", 4)
    with pytest.raises(InputError, match="litert: cannot generate here: no stage folder"):
        G.generation_job(G.GeneratorCache(Opener()), v, G.generation_request("x"), tr)
    with pytest.raises(InputError, match="threads: a whole number from 1 to 64"):
        G.generation_job(G.GeneratorCache(Opener()), _variant(tmp_path / "b"), G.generation_request("x"), tr, 0)


# ---------------------------------------------------------------------------------------- real

def _tiny_llama_folder(folder):
    """A 1-layer Llama with random weights and a word-level tokenizer, saved as a Hugging Face folder (no end token,
    so it always generates the tokens asked for)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "the", "capital", "of", "france", "is", "paris", "a", "city", "and", "it"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, eos_token_id=None,
                      bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.mark.slow  # imports torch and transformers, loads and runs the model: ~10-15 s on 2 busy cores
def test_real_generation_on_a_tiny_pytorch_model(tmp_path):
    hf = _tiny_llama_folder(tmp_path / "models" / "tiny")
    run = write_llm_run(tmp_path / "runs" / "r", exported=(), source=str(hf))
    base = G.llm_variants(run, _ledger(run), allowed=[tmp_path / "models"])[0]
    assert base.usable
    req = G.generation_request("the capital of france is", max_new_tokens=6, chat=False)
    job, tr, cache = _run(G._open_generator, base, req, threads=1)
    assert job.wait(120) and job.status == "done", job.error
    snap = job.result
    assert snap["runtime"] == "torch" and snap["prompt_tokens"] == 5 and snap["new_tokens"] == 6
    assert snap["text"] == tr.text != "" and snap["ttft_ms"] > 0 and snap["stopped"] == "max tokens"
    assert snap["decode_tok_s"] > 0 and snap["prefill_tok_s"] > 0
    assert set(snap["text"].split()) <= {"<unk>", "<s>", "</s>", "the", "capital", "of", "france", "is", "paris", "a",
                                         "city", "and", "it"}
    cache.close()
    assert json.loads((hf / "config.json").read_text())["num_hidden_layers"] == 1
