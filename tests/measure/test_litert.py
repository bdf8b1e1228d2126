"""LiteRtRunner: both LiteRT APIs give PyTorch's outputs in order (as copies), take feeds by name and of any batch,
and refuse bad files, signatures and feeds with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.errors import InputError
from edgeopt.measure.litert import LiteRtRunner, signature_name

litert_torch = pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

N_OUT = 12  # more than 10 outputs: output_10 must not come before output_2


class Fan(nn.Module):
    """Two inputs (floats and int64 token ids), twelve outputs of different shapes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.emb = nn.Embedding(20, 6)

    def forward(self, x, ids):
        h = self.fc(x) + self.emb(ids).sum(1)
        return tuple(h * (i + 1) if i % 2 else h[:, : i // 2 + 1] - i for i in range(N_OUT))


def _feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 6)).astype(np.float32),
            "ids": rng.integers(0, 20, (batch, 3)).astype(np.int64)}


def _torch(m, feed):
    with torch.no_grad():
        return [t.numpy() for t in m(torch.from_numpy(feed["x"]), torch.from_numpy(feed["ids"]))]


@pytest.fixture(scope="module")
def fan():
    torch.manual_seed(0)
    return Fan().eval()


@pytest.fixture(scope="module")
def tflite(fan, tmp_path_factory):
    """Fan converted at batch 2 (static shapes), inputs named by keyword."""
    litert_torch.config.show_progress = False
    path = tmp_path_factory.mktemp("litert_runner") / "fan.tflite"
    sample = {k: torch.from_numpy(v) for k, v in _feed(2, 0).items()}
    litert_torch.convert(fan, sample_kwargs=sample).export(str(path))
    return path


@pytest.mark.parametrize("api", ["interpreter", "compiled"])
def test_outputs_match_torch_in_order_as_copies(fan, tflite, api):
    with LiteRtRunner(tflite, 2, api=api) as r:
        assert r.threads == 2 and r.api == api and "XNNPACK" in r.label and r.name == "litert"
        assert r.input_names == ["x", "ids"] and r.output_names == [f"output_{i}" for i in range(N_OUT)]
        feed = _feed(2, 1)
        first = r.run(feed)
        want = _torch(fan, feed)
        assert [a.shape for a in first] == [w.shape for w in want]
        for a, w in zip(first, want):
            np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-5)
        keep = first[0].copy()
        first[0][:] = 123.0  # the runner's next result must not share memory with this one
        second = r.run(_feed(2, 1))
        np.testing.assert_array_equal(second[0], keep)
        assert not np.shares_memory(first[0], second[0])
    with pytest.raises(InputError, match="runner is closed"):
        r.run(feed)


@pytest.mark.parametrize("api", ["interpreter", "compiled"])
def test_other_batches_run_in_chunks_of_the_traced_batch(fan, tflite, api):
    with LiteRtRunner(tflite, 1, api=api) as r:
        for batch in (1, 5):
            feed = _feed(batch, batch)
            got = r.run(feed)
            for a, w in zip(got, _torch(fan, feed)):
                assert a.shape == w.shape
                np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-5)


def test_feed_names_and_dtypes_are_adapted(fan, tflite):
    with LiteRtRunner(tflite, 1, api="interpreter") as r:
        feed = _feed(2, 4)
        feed["ids"] = feed["ids"].astype(np.int64)  # the file takes int32 (litert-torch converts without x64)
        np.testing.assert_allclose(r.run(feed)[0], _torch(fan, feed)[0], rtol=1e-5, atol=1e-5)
        with pytest.raises(InputError, match="feed has no input 'ids'"):
            r.run({"x": feed["x"]})
        with pytest.raises(InputError, match="fixed shapes"):
            r.run({"x": np.zeros((2, 7), np.float32), "ids": feed["ids"]})
    assert signature_name("input.ids") == "input_ids" and signature_name("class") == "_class"


def test_weight_cache_is_written_and_reused(fan, tflite, tmp_path):
    cache = tmp_path / "cache" / "fan.xnn"
    with LiteRtRunner(tflite, 1, api="compiled", weight_cache=cache) as r:
        a = r.run(_feed(2, 2))
    assert cache.is_file() and cache.stat().st_size > 0
    with LiteRtRunner(tflite, 1, api="compiled", weight_cache=cache) as r:
        b = r.run(_feed(2, 2))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(InputError, match="weight cache needs api='compiled'"):
        LiteRtRunner(tflite, 1, api="interpreter", weight_cache=cache)


@pytest.mark.parametrize("cut", [100, 0.6])
def test_truncated_file_is_one_line(tflite, tmp_path, cut):
    data = tflite.read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(data[: int(cut if cut >= 1 else len(data) * cut)])
    with pytest.raises(InputError) as e:
        LiteRtRunner(bad, 1)
    assert "cut.tflite: not a valid .tflite file (" in str(e.value) and "\n" not in str(e.value)


def test_bad_arguments_are_refused(tflite, tmp_path):
    with pytest.raises(InputError, match="no such .tflite file"):
        LiteRtRunner(tmp_path / "missing.tflite", 1)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(InputError, match="not a valid .tflite file"):
        LiteRtRunner(junk, 1)
    with pytest.raises(InputError, match="no signature 'decode'.*serving_default"):
        LiteRtRunner(tflite, 1, signature="decode")
    with pytest.raises(InputError, match="threads must be >= 1"):
        LiteRtRunner(tflite, 0)
    with pytest.raises(InputError, match="unknown LiteRT api"):
        LiteRtRunner(tflite, 1, api="gpu")  # type: ignore[arg-type]
