"""Helpers shared by tests (importable as `helpers`: pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np


def run_onnx(path: Path | str, feeds: list[dict]) -> list[np.ndarray]:
    """First output of an ONNX model for each feed (one-thread ONNX Runtime session)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def record_reused(monkeypatch) -> dict:
    """Patch Pipeline._reuse to record {stage name: artifact} of every stage a resumed run takes from disk."""
    from edgeopt.pipeline import Pipeline

    reused: dict = {}
    real = Pipeline._reuse

    def reuse(self, old, name, key, *args):
        got = real(self, old, name, key, *args)
        if got is not None:
            reused[name] = got[1]
        return got

    monkeypatch.setattr(Pipeline, "_reuse", reuse)
    return reused


def square_matmul(path: Path | str, n: int):
    """An ONNX model y = x @ W with a random n×n fp32 weight (4·n² bytes: n=2048 is 16 MiB), as an Artifact."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeopt.artifact import Artifact

    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return Artifact.from_onnx(path)


def spy_runs(monkeypatch, classes, calls: dict, made: dict) -> None:
    """Patch each pass class's `run` to count its calls in `calls` and keep its output in `made` (by pass name)."""
    for cls in classes:
        real = cls.run

        def run(self, art, ctx, real=real):
            calls[self.name] += 1
            made[self.name] = real(self, art, ctx)
            return made[self.name]

        monkeypatch.setattr(cls, "run", run)


def interrupt_run(monkeypatch, cls) -> None:
    """Patch a pass class's `run` to raise KeyboardInterrupt, as Ctrl-C during that stage would."""

    def interrupted(self, art, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "run", interrupted)


def check_session_limits(session, ids) -> None:
    """An LlmSession made with max_cache 8 (and max_prompt 8): prompt and cache limits give one-line errors."""
    import pytest

    from edgeopt.errors import InputError
    from edgeopt.llm.session import check_prompt

    with pytest.raises(InputError, match="prompt is 9 tokens, longer than the largest prefill"):
        session.prefill(ids[:9])
    with pytest.raises(InputError, match="decode before prefill"):
        session.decode(5)
    with pytest.raises(InputError, match="exceed the KV cache"):
        check_prompt(session, 6, max_new_tokens=3)
    session.prefill(ids[:7])
    session.decode(ids[7])
    with pytest.raises(InputError, match="KV cache is full"):
        session.decode(ids[8])


class RecordingExecutor:
    """An executor that is not local (`slots` 2): each task's job must be plain data (JSON), as if it went to
    another node; it runs inline and is logged as (kind, function name)."""

    name, slots = "recording", 2

    def __init__(self):
        self.log: list[tuple[str, str]] = []

    def _run(self, kind: str, fn, job):
        import json

        from edgeopt.executor import _DoneFuture

        json.dumps(job)
        self.log.append((kind, fn.__name__))
        return _DoneFuture(fn(job))

    def build(self, fn, job):
        return self._run("build", fn, job)

    def measure(self, fn, job):
        return self._run("measure", fn, job)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def two_node_ray_executor():
    """A Ray executor on a local two-node cluster on 127.0.0.1: the head (1 CPU) offers one unit of this machine's
    target resource, the worker (1 CPU) only `builder`. Yields (executor, target resource name); pytest skips where
    Ray is missing or cannot start. The executor is closed and the cluster shut down afterwards."""
    import pytest

    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from edgeopt.executor import make_executor, ray_on_loopback, target_resource
    from edgeopt.target import get_target

    target = get_target("auto")
    resource = target_resource(target.name)
    try:
        with ray_on_loopback():
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "resources": {resource: 1}, "include_dashboard": False})
            cluster.add_node(num_cpus=1, resources={"builder": 2})
            cluster.wait_for_nodes()
    except Exception as e:  # noqa: BLE001 (Ray's start-up failures vary)
        pytest.skip(f"cannot start a local Ray cluster here: {type(e).__name__}: {e}")
    try:
        ex = make_executor("ray", address=cluster.address, target=target.name)
        try:
            yield ex, resource
        finally:
            ex.close()
    finally:
        cluster.shutdown()


WORDS = ["<unk>", "<s>", "</s>", "the", "capital", "of", "france", "is", "paris", "a", "city", "user", ":",
         "assistant", "hello", "world"]


def word_tokenizer(chat_template: str | None = None):
    """A real Hugging Face fast tokenizer over the 16 `WORDS` (built in code, no download): <s> / </s> are BOS / EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        t.chat_template = chat_template
    return t
