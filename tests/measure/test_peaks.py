"""GEMM peaks: both rates measured with ONNX Runtime's own int8 kernel, cached per machine/threads/size, bad input."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import InputError
from edgeopt.measure.peaks import GemmPeaks, gemm_peaks


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    return tmp_path / "peaks"


def test_measures_both_rates_and_caches(cache):
    p = gemm_peaks(1, size=64, runs=3)
    assert isinstance(p, GemmPeaks) and not p.cached
    assert p.fp32_gflops > 0 and p.int8_gops > 0
    assert p.ratio == pytest.approx(p.int8_gops / p.fp32_gflops, rel=1e-2)
    assert p.int8_kernel == "DynamicQuantizeMatMul"  # what ONNX Runtime fuses its dynamic quantization into
    assert (p.threads, p.size, p.runs) == (1, 64, 3)
    assert p.fp32_ms <= p.fp32_p50_ms and p.int8_ms <= p.int8_p50_ms  # rates use the 10th percentile
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left
    assert json.loads(files[0].read_text())["fp32_gflops"] == p.fp32_gflops
    json.dumps(p.to_dict())

    again = gemm_peaks(1, size=64, runs=3)
    assert again.cached and again.fp32_gflops == p.fp32_gflops and again.int8_gops == p.int8_gops
    fresh = gemm_peaks(1, size=64, runs=3, refresh=True)
    assert not fresh.cached
    gemm_peaks(1, size=32, runs=3)  # another size: another entry
    assert len(list(cache.iterdir())) == 2


def test_torn_cache_file_is_remeasured(cache):
    gemm_peaks(1, size=32, runs=2)
    (f,) = cache.iterdir()
    f.write_text("{not json")
    p = gemm_peaks(1, size=32, runs=2)
    assert not p.cached
    assert json.loads(f.read_text())["size"] == 32


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"threads": 1, "size": 8}, {"threads": 1, "runs": 0},
                                    {"threads": True}])
def test_bad_arguments(cache, kwargs):
    threads = kwargs.pop("threads")
    with pytest.raises(InputError):
        gemm_peaks(threads, **kwargs)
    assert not cache.exists()
