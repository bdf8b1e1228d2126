"""LLM measurements: TTFT, prefill and decode tokens/s (interleaved across runtimes), peak RSS in a child,
fidelity against the fp32 reference on teacher-forced held-out text (top-1 agreement, KL, perplexity), and the
decode rate beside this machine's memory-bandwidth limit.

Held-out text: paragraphs of `zoo:sentences` from index 20000 on (the recipes calibrate on [0:64], evaluate on
[64:320] and fine-tune on [640:1640]), tokenized and cut into `seq_len`-token sequences; a model without a
tokenizer (random-weight TinyLlama) gets seeded random token ids instead.

The measuring child: `python -m edgeopt.llm.measure MODEL --runtime litert|torch|torch-int8|ortgenai
(--prompt-file IDS.json | --prompt-tokens N) --decode-tokens M --threads T` loads the model, warms up, times one
prefill and M greedy tokens and prints {"ttft_ms", "decode_ms", "peak_mb"} (peak_mb: VmHWM, the whole child).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeopt.errors import InputError
from edgeopt.llm.session import LlmSession

HELDOUT = "[20000:]"  # zoo:sentences slice the held-out paragraphs start from (never calibration/eval/training text)
PROBE_PROMPT = "The capital of France is"


def heldout_sequences(tokenizer: Any, n: int = 64, seq_len: int = 128, vocab_size: int = 32000,
                      start: int = 20000, seed: int = 0) -> list[list[int]]:
    """`n` token sequences of exactly `seq_len` tokens from held-out generated text (see the module docstring)."""
    if tokenizer is None:
        rng = np.random.default_rng(seed)
        return [[int(t) for t in rng.integers(3, vocab_size, seq_len)] for _ in range(n)]
    from edgeopt.zoo.sentences import sentences  # lazy: only with a tokenizer

    out: list[list[int]] = []
    i = start
    pool = sentences(min(start + 40 * n + 1000, 100_000))
    bos = [int(tokenizer.bos_token_id)] if getattr(tokenizer, "bos_token_id", None) is not None else []
    while len(out) < n:
        ids = list(bos)
        while len(ids) < seq_len:
            if i >= len(pool):
                raise InputError(f"not enough held-out text for {n} sequences of {seq_len} tokens")
            ids += tokenizer(" " + pool[i], add_special_tokens=False)["input_ids"]
            i += 1
        out.append([int(t) for t in ids[:seq_len]])
    return out


def prompt_ids(tokenizer: Any, n: int, vocab_size: int = 32000) -> list[int]:
    """A prompt of exactly `n` tokens from held-out text: the stretch just before the fidelity sequences' (from
    sentence 19000; 128 tokens take about ten sentences), so the sentences generated for them serve it too."""
    return heldout_sequences(tokenizer, 1, n, vocab_size, start=19000, seed=1)[0]


@dataclass(frozen=True)
class Reference:
    """The reference's side of one sequence's comparison, computed once for every candidate (`reference`)."""

    p: Any  # (T-1, vocab) next-token probabilities, float64
    neg_entropy: float  # sum of p log p over all rows
    top1: Any  # (T-1,) argmax
    nll: float  # negative log-likelihood of ids[1:]


def reference(ref_logits: np.ndarray, ids: Sequence[int]) -> Reference:
    """Rows 0..T-2 of the reference's (T, vocab) logits, predicting ids[1:], prepared for `FidelityAccumulator.add`."""
    import torch  # lazy: heavy

    ref = torch.log_softmax(torch.as_tensor(np.asarray(ref_logits[:-1]), dtype=torch.float64), -1)
    target = torch.as_tensor(np.asarray(ids[1:], dtype=np.int64))
    p = ref.exp()
    return Reference(p=p, neg_entropy=float(torch.dot(p.reshape(-1), ref.reshape(-1))), top1=ref.argmax(-1),
                     nll=-float(ref[torch.arange(len(target)), target].sum()))


@dataclass
class FidelityAccumulator:
    """Teacher-forced comparison of a candidate's next-token distributions with the reference's."""

    agree: int = 0
    positions: int = 0
    kl_sum: float = 0.0
    nll: float = 0.0
    nll_ref: float = 0.0

    def add(self, ref_logits: np.ndarray | Reference, logits: np.ndarray, ids: Sequence[int]) -> None:
        """Rows 0..T-2 of both (T, vocab) logits predict ids[1:] (`ref_logits` may be prepared by `reference`,
        once for all candidates). In float64 (an fp32 export's KL is ~1e-11), without materializing the
        candidate's log-probabilities: with log q = x - logsumexp(x) and each row of p summing to 1,
        KL = sum p log p - (sum p x - sum logsumexp(x)); 0.05 s a 128 x 49152 sequence against 0.13 s for two
        float64 log-softmaxes (measured side by side)."""
        import torch  # lazy: heavy

        ref = ref_logits if isinstance(ref_logits, Reference) else reference(ref_logits, ids)
        x = torch.as_tensor(np.asarray(logits[:-1]), dtype=torch.float64)
        target = torch.as_tensor(np.asarray(ids[1:], dtype=np.int64))
        lse = torch.logsumexp(x, -1)
        self.agree += int((x.argmax(-1) == ref.top1).sum())
        self.positions += len(target)
        self.kl_sum += ref.neg_entropy - (float(torch.dot(ref.p.reshape(-1), x.reshape(-1))) - float(lse.sum()))
        self.nll -= float((x[torch.arange(len(target)), target] - lse).sum())
        self.nll_ref += ref.nll

    def result(self) -> dict[str, float]:
        p = max(self.positions, 1)
        kl = max(self.kl_sum / p, 0.0)  # float64 rounding can dip a hair below 0 for identical distributions
        return {"top1_agreement": self.agree / p, "kl": kl, "ppl": float(np.exp(self.nll / p)),
                "ppl_ref": float(np.exp(self.nll_ref / p)), "positions": self.positions}


def fidelity(reference_session: LlmSession, candidates: dict[str, LlmSession], sequences: Sequence[Sequence[int]],
             advance: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """Top-1 agreement, mean KL(reference ‖ candidate) per position and perplexity of every candidate (and the
    reference's own perplexity, `ppl_ref`), sequence by sequence so no logits are kept beyond one sequence."""
    acc = {name: FidelityAccumulator() for name in candidates}
    for ids in sequences:
        ref = reference(reference_session.score(ids), ids)
        for name, s in candidates.items():
            acc[name].add(ref, s.score(ids), ids)
        if advance is not None:
            advance()
    return {name: a.result() for name, a in acc.items()}


@dataclass
class Timing:
    ttft_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0

    def result(self) -> dict[str, float]:
        ttft = float(np.median(self.ttft_ms))
        dec = float(np.median(self.decode_ms))
        return {"prompt_tokens": self.prompt_tokens, "ttft_ms": ttft, "ttft_spread_ms": [float(min(self.ttft_ms)),
                float(max(self.ttft_ms))], "prefill_tok_s": self.prompt_tokens / (ttft / 1000),
                "decode_ms_p50": dec, "decode_ms_p90": float(np.percentile(self.decode_ms, 90)),
                "decode_tok_s": 1000.0 / dec, "decode_tokens": len(self.decode_ms), "repeats": len(self.ttft_ms),
                "decode_samples_ms": list(self.decode_ms)}


def timing(sessions: dict[str, LlmSession], prompt: Sequence[int], decode_tokens: int = 64, repeats: int = 3,
           warmup: bool = True, advance: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """TTFT (prefill of `prompt` to the first token's logits) and per-token decode time of every session,
    interleaved: each repeat runs every session in turn (the order rotating), so machine noise hits all alike.
    Decode tok/s is 1000 / the median per-token time over `decode_tokens` × `repeats` greedy steps."""
    for s in sessions.values():
        if len(prompt) > s.max_prompt or len(prompt) + decode_tokens > s.max_cache:
            raise InputError(f"{s.name}: a {len(prompt)}-token prompt plus {decode_tokens} tokens does not fit "
                             f"(longest prompt {s.max_prompt}, cache {s.max_cache})")
    names = list(sessions)
    out = {n: Timing(prompt_tokens=len(prompt)) for n in names}
    if warmup:
        for s in sessions.values():
            logits = s.prefill(prompt)
            for _ in range(4):
                logits = s.decode(int(np.argmax(logits)))
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            s = sessions[name]
            t0 = time.perf_counter()
            logits = s.prefill(prompt)
            token = int(np.argmax(logits))
            out[name].ttft_ms.append((time.perf_counter() - t0) * 1000)
            for _ in range(decode_tokens):
                t = time.perf_counter()
                logits = s.decode(token)
                token = int(np.argmax(logits))
                out[name].decode_ms.append((time.perf_counter() - t) * 1000)
            if advance is not None:
                advance()
    return {n: t.result() for n, t in out.items()}


def greedy_answer(session: LlmSession, tokenizer: Any, prompt: str = PROBE_PROMPT, tokens: int = 8) -> str:
    """The greedy continuation of the raw `prompt` (no chat template): the France probe the issue names."""
    ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    logits = session.prefill(ids)
    out = []
    for _ in range(tokens):
        token = int(np.argmax(logits))
        out.append(token)
        if token == getattr(tokenizer, "eos_token_id", None):
            break
        logits = session.decode(token)
    return tokenizer.decode(out, skip_special_tokens=True)


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Memory copy bandwidth in GB/s (bytes copied per second, best of `repeats` copies of an `mb` MB array).
    A copy reads and writes every byte, so the memory traffic it sustains is twice this (`ceiling_tok_s`)."""
    a = np.ones(mb << 18, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def ceiling_tok_s(copy_gbs: float, weight_bytes: int) -> float:
    """The decode rate memory bandwidth allows: the traffic a copy sustains (2 x bytes copied per second: each
    byte is read and written) over the weight bytes one decode step reads."""
    return 2 * copy_gbs * 1e9 / max(int(weight_bytes), 1)


def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights a decode step of a LiteRT LLM reads: every constant its `decode` signature uses, once,
    with the embedding table (only looked up) counted as one row (edgeopt.analyze.tflite.weight_bytes_read)."""
    from edgeopt.analyze.tflite import weight_bytes_read

    return weight_bytes_read(path, "decode")


def onnx_weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights a decode step of an ONNX LLM (a file, or a folder with one .onnx, e.g. ONNX Runtime GenAI's)
    reads: every initializer, less all but one row of each table that is only looked up (the data input of Gather
    ops, e.g. GenAI's fp32 embedding table). Sizes come from the graph, external data is never loaded."""
    import onnx  # lazy: heavy

    p = Path(path)
    found = sorted(p.glob("*.onnx")) if p.is_dir() else [p] if p.is_file() else []
    if not found:
        raise InputError(f"{p}: no .onnx file")
    p = found[0]
    graph = onnx.load(str(p), load_external_data=False).graph

    def nbytes(t: Any) -> int:
        length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
        return length if length is not None else len(t.raw_data) or onnx.helper.tensor_dtype_to_np_dtype(
            t.data_type).itemsize * int(np.prod(t.dims, dtype=np.int64))

    sizes = {t.name: nbytes(t) for t in graph.initializer}
    dims = {t.name: list(t.dims) for t in graph.initializer}
    uses: dict[str, set[bool]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in sizes:
                uses.setdefault(name, set()).add(n.op_type == "Gather" and i == 0)
    total = sum(sizes.values())
    for name, how in uses.items():
        if how == {True} and len(dims[name]) == 2 and dims[name][0] > 0:
            total -= sizes[name] - sizes[name] // dims[name][0]  # one row read per token
    return int(total)


def decoder_weight_bytes(shape: dict[str, Any], bytes_per_weight: float) -> int:
    """Bytes of weights a decode step of a Llama-family model reads when its Linears (and output layer) hold
    `bytes_per_weight` bytes per weight and its norms fp32: every block's projections and the whole output layer
    (tied or not; a lookup reads one embedding row). E.g. PyTorch fp32 (4) or its dynamic int8 Linears (1)."""
    h, v, i, n = shape["hidden_size"], shape["vocab_size"], shape["intermediate_size"], shape["num_layers"]
    kv = shape["num_kv_heads"] * shape["head_dim"]
    q = shape["num_heads"] * shape["head_dim"]
    linears = n * (2 * h * q + 2 * h * kv + 3 * h * i) + v * h
    return int(linears * bytes_per_weight + 4 * h * (2 * n + 1))


def peak_rss_mb(model: str | Path, runtime: str, prompt_tokens: int, decode_tokens: int, threads: int,
                timeout_s: float = 600) -> float:
    """Peak RSS (MB) of a child that loads `model` on `runtime`, prefills `prompt_tokens` and decodes."""
    res = _run_child([str(model), "--runtime", runtime, "--prompt-tokens", str(prompt_tokens), "--decode-tokens",
                      str(decode_tokens), "--threads", str(threads)], str(model), timeout_s)
    return float(res["peak_mb"])


RUNTIMES = ("litert", "torch", "torch-int8", "ortgenai")


def open_session(model: str | Path, runtime: str, threads: int) -> LlmSession:
    """A session of `model` on `runtime`: "litert" (an exported .tflite), "torch" / "torch-int8" (a Hugging Face
    folder, fp32 or dynamic int8 Linear layers), "ortgenai" (a folder built by ONNX Runtime GenAI's builder)."""
    if runtime == "litert":
        from edgeopt.llm.litert_session import LiteRtLlm

        return LiteRtLlm(model, threads=threads)
    if runtime in ("torch", "torch-int8"):
        from edgeopt.llm.torch_session import load_torch_llm

        return load_torch_llm(Path(model), threads=threads, int8=runtime == "torch-int8")
    if runtime == "ortgenai":
        from edgeopt.llm.ortgenai import OrtGenAiLlm

        return OrtGenAiLlm(Path(model), threads=threads)
    raise InputError(f"unknown LLM runtime {runtime!r} ({', '.join(RUNTIMES)})")


def time_in_children(models: dict[str, tuple[str | Path, str]], prompt: Sequence[int], decode_tokens: int = 64,
                     repeats: int = 3, threads: int = 2, advance: Callable[[], None] | None = None,
                     timeout_s: float = 900) -> dict[str, dict[str, Any]]:
    """TTFT, decode timing and peak RSS of each model (name -> (path, runtime)), each timed in a child process of
    its own: runtimes never share a process (PyTorch's OpenMP workers spin between ops and slowed LiteRT and
    ONNX Runtime sharing its process), and the rounds rotate over the models, so machine noise still hits all of
    them alike. Only one child works at a time.

    Each child loads its model once and stays loaded (`_Server`): a round asks it for a warm-up (a prefill and 4
    tokens) and one timed prefill of `prompt` plus `decode_tokens` greedy tokens, while the others wait idle. A
    model whose child would not leave enough memory free (less than twice the largest child so far plus 1 GiB
    available), and the LiteRT-LM engine's, get a fresh child per round instead, as all did before (loading each
    model once instead of `repeats` times saved ~50 s of the SmolLM2 demo's 107). Results as `timing`'s, plus
    `peak_rss_mb` (the highest VmHWM)."""
    import tempfile

    names = list(models)
    out = {n: Timing(prompt_tokens=len(prompt)) for n in names}
    peak = {n: 0.0 for n in names}
    servers: dict[str, _Server] = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-llm-") as tmp:
        pfile = Path(tmp) / "prompt.json"
        pfile.write_text(json.dumps([int(t) for t in prompt]))

        def args(name: str) -> list[str]:
            path, runtime = models[name]
            return [str(path), "--runtime", runtime, "--prompt-file", str(pfile), "--decode-tokens",
                    str(decode_tokens), "--threads", str(threads)]

        try:
            if repeats > 1:
                largest = 0.0
                for name in names:
                    if models[name][1] == "litert-lm" or not _room_for_another(largest):
                        continue
                    servers[name] = _Server(args(name), name, timeout_s)
                    largest = max(largest, servers[name].rss_mb)
            for r in range(repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    res = servers[name].round() if name in servers else _run_child(args(name), name, timeout_s)
                    out[name].ttft_ms.append(res["ttft_ms"])
                    out[name].decode_ms.extend(res["decode_ms"])
                    peak[name] = max(peak[name], res.get("peak_mb", 0.0))
                    if advance is not None:
                        advance()
            for name, server in servers.items():
                peak[name] = max(peak[name], server.close())
        finally:
            for server in servers.values():
                server.kill()
    return {n: {**out[n].result(), "peak_rss_mb": peak[n]} for n in names}


def _room_for_another(largest_mb: float) -> bool:
    """Whether another resident child is likely to fit: twice the largest so far plus 1 GiB still available."""
    import psutil  # lazy

    return psutil.virtual_memory().available / 2**20 >= 2 * largest_mb + 1024


class _Server:
    """A measuring child (`python -m edgeopt.llm.measure ... --serve`) that keeps its model loaded: it prints
    {"ready", "rss_mb"} once loaded, a round's {"ttft_ms", "decode_ms"} for each "time" line on its stdin, and
    {"peak_mb"} for "quit". Output is read line by line with a deadline; its stderr goes to a file (never a
    pipe that could fill) and names the failure when it dies."""

    def __init__(self, args: list[str], what: str, timeout_s: float):
        import tempfile

        self.what, self.timeout_s = what, timeout_s
        self._err = tempfile.TemporaryFile()
        self._buf = b""
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeopt.llm.measure", *args, "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        try:
            self.rss_mb = float(self._read().get("rss_mb", 0.0))
        except BaseException:
            self.kill()
            raise

    def round(self) -> dict[str, Any]:
        return self._ask(b"time\n")

    def close(self) -> float:
        res = self._ask(b"quit\n")
        self.proc.wait(timeout=60)
        return float(res["peak_mb"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()

    def _ask(self, line: bytes) -> dict[str, Any]:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: _read reports why
        return self._read()

    def _read(self) -> dict[str, Any]:
        import os
        import select

        deadline = time.monotonic() + self.timeout_s
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if line.startswith(b"{"):
                    return json.loads(line)
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise InputError(f"{self.what}: the measuring child took longer than {self.timeout_s:.0f} s")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait()
                self._err.seek(0)
                raise InputError(f"{self.what}: the measuring child failed: "
                                 f"{_last_error(self._err.read().decode(errors='replace'), self.proc.returncode)}")
            self._buf += chunk


def _last_error(stderr: str, returncode: int | None) -> str:
    err = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("I0000", "WARNING: All"))]
    return err[-1][:200] if err else str(returncode)


def _run_child(args: list[str], what: str, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgeopt.llm.measure", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise InputError(f"{what}: the measuring child took longer than {timeout_s:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise InputError(f"{what}: the measuring child failed: {_last_error(proc.stderr, proc.returncode)}")
    return json.loads(lines[-1])


def _child(argv: list[str]) -> int:
    import argparse

    from edgeopt.measure.memory import maxrss_mb

    ap = argparse.ArgumentParser(prog="python -m edgeopt.llm.measure")
    ap.add_argument("model")
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="a random prompt of this length")
    ap.add_argument("--prompt-file", help="a JSON list of token ids (instead of a random prompt)")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", action="store_true", help="stay loaded: time a round per 'time' line on stdin, "
                    "print the peak RSS on 'quit' (time_in_children's _Server)")
    a = ap.parse_args(argv)
    if a.runtime == "litert-lm":
        return _engine_child(a)
    try:
        s = open_session(a.model, a.runtime, a.threads)
        ids = (json.loads(Path(a.prompt_file).read_text()) if a.prompt_file else
               [int(t) for t in np.random.default_rng(0).integers(3, s.vocab_size, a.prompt_tokens)])
        if a.serve:
            return _serve(s, a.runtime, ids, a.decode_tokens)
        timed = timing({a.runtime: s}, ids, a.decode_tokens, repeats=1)[a.runtime]
    except InputError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps({"ttft_ms": timed["ttft_ms"], "decode_ms": timed["decode_samples_ms"], "peak_mb": maxrss_mb()}))
    return 0


def _serve(session: LlmSession, name: str, ids: list[int], decode_tokens: int) -> int:
    """The resident child's loop (see `_Server`): a first prefill and token so the memory it reports is the
    model's working size, then a timed round per "time" line (`timing` warms up before each)."""
    from edgeopt.measure.memory import maxrss_mb

    session.decode(int(np.argmax(session.prefill(ids))))
    print(json.dumps({"ready": True, "rss_mb": maxrss_mb()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        timed = timing({name: session}, ids, decode_tokens, repeats=1)[name]
        print(json.dumps({"ttft_ms": timed["ttft_ms"], "decode_ms": timed["decode_samples_ms"]}), flush=True)
    print(json.dumps({"peak_mb": maxrss_mb()}), flush=True)
    session.close()
    return 0


def _engine_child(a: Any) -> int:
    """The timing child for a .litertlm bundle on the LiteRT-LM engine, which takes text: the prompt ids are
    decoded (without special tokens; the engine adds its start token), a warm-up generates 8 tokens, then one
    timed generation of `decode_tokens` + 1 greedy tokens (fewer when the model ends its answer)."""
    from edgeopt.llm.litertlm import LiteRtLmGenerator  # lazy: optional extra
    from edgeopt.measure.memory import maxrss_mb

    try:
        gen = LiteRtLmGenerator(a.model, a.threads)
        if gen.tokenizer is None:
            raise InputError(f"{a.model}: timing needs the Hugging Face tokenizer beside the bundle")
        ids = (json.loads(Path(a.prompt_file).read_text()) if a.prompt_file else
               [int(t) for t in np.random.default_rng(0).integers(3, len(gen.tokenizer), a.prompt_tokens)])
        text = gen.tokenizer.decode(ids, skip_special_tokens=True)
        gen.generate(text, max_new_tokens=8, chat=False)
        gen.generate(text, max_new_tokens=a.decode_tokens + 1, chat=False)
        st = gen.stats
        gen.session.close()
    except InputError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps({"ttft_ms": st.ttft_ms, "decode_ms": st.decode_ms, "peak_mb": maxrss_mb(),
                      "prompt_tokens": st.prompt_tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
