"""Latency tables for once-for-all subnets: every part of the space is measured, predictions sum the parts a
subnet runs, and the table round-trips through JSON."""

from __future__ import annotations

import pytest
import torch
from helpers import RecordingExecutor

from edgeopt.measure.latency_table import LatencyTable, measure_subnets, parts_of
from edgeopt.nn import ofa

CFG = ofa.OFAConfig(depths=(1, 2), kernel_sizes=(3, 5), expand_ratios=(2, 3), resolutions=(12, 16),
                    widths=(8, 16), strides=(1, 2), stem_width=8, head_width=16, num_classes=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    net = ofa.OFANet(CFG).eval()
    return net, LatencyTable.build(net, tmp_path_factory.mktemp("table"), threads=1, runs=4)


def test_every_subnet_of_the_space_is_covered_and_predicted_as_its_parts(built):
    net, table = built
    ex = ofa.OFASubNetworkExtractor(net)
    # 2 resolutions × (stem + head) + 2 stages × 2 positions × 2 kernels × 2 expansions × 2 resolutions
    assert len(table.entries) == 2 * 2 + 2 * 2 * 2 * 2 * 2
    assert all(v > 0 for v in table.entries.values()) and table.overhead_ms > 0
    for seed in range(6):
        sub = ex.sample_random(seed=seed)
        keys = parts_of(net, sub)
        assert len(keys) == 2 + sum(sub.d) and keys[0] == f"stem@{sub.r}"
        expect = sum(table.entries[k] for k in keys) - (len(keys) - 1) * table.overhead_ms
        assert table.predict(net, sub) == pytest.approx(expect)
    small, large = ex.sample_smallest(), ex.sample_largest()
    assert parts_of(net, large)[-1] == "head@8" and parts_of(net, small)[-1] == "head@6"


def test_json_round_trip_and_foreign_spaces(built, tmp_path):
    net, table = built
    back = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert back == table
    other = ofa.OFANet(ofa.OFAConfig(depths=(1, 2), kernel_sizes=(3, 7), expand_ratios=(2, 3), resolutions=(12, 16),
                                     widths=(8, 16), strides=(1, 2), stem_width=8, head_width=16, num_classes=4))
    with pytest.raises(ValueError, match="no entry for"):
        table.predict(other, ofa.OFASubNetworkExtractor(other).sample_largest())


def test_whole_subnets_are_measured(built, tmp_path):
    net, _ = built
    ex = ofa.OFASubNetworkExtractor(net)
    ms = measure_subnets(ex, [ex.sample_smallest(), ex.sample_largest()], tmp_path, threads=1, runs=4)
    assert len(ms) == 2 and all(v > 0 for v in ms)


TINY = ofa.OFAConfig(depths=(1,), kernel_sizes=(3, 5), expand_ratios=(2,), resolutions=(12,), widths=(8,),
                     strides=(1,), stem_width=8, head_width=16, num_classes=4)


@pytest.mark.parametrize("runtime", ["openvino", "litert"])
def test_tables_on_other_runtimes_cover_the_space_and_predict_whole_subnets(runtime, tmp_path):
    pytest.importorskip({"openvino": "openvino", "litert": "litert_torch"}[runtime])
    torch.manual_seed(0)
    net = ofa.OFANet(TINY).eval()
    table = LatencyTable.build(net, tmp_path / "t", threads=1, runs=4, runtime=runtime)
    assert table.runtime == runtime and set(table.entries) == {"stem@12", "head@12", "s0f-k3-e2@12", "s0f-k5-e2@12"}
    suffix = ".tflite" if runtime == "litert" else ".onnx"
    files = sorted(p.suffix for p in (tmp_path / "t").iterdir() if p.name != "parts.json")
    assert files == [suffix] * 5  # 4 parts and the overhead graph
    ex = ofa.OFASubNetworkExtractor(net)
    (ms,) = measure_subnets(ex, [ex.sample_largest()], tmp_path / "m", threads=1, runs=4, runtime=runtime)
    assert ms > 0 and table.predict(net, ex.sample_largest()) > 0
    assert LatencyTable.load(table.save(tmp_path / "t.json")).runtime == runtime


def test_an_unknown_runtime_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="field 'runtime'.*tensorrt"):
        LatencyTable.build(ofa.OFANet(TINY), tmp_path, runtime="tensorrt")


def test_the_timing_is_one_measure_task_of_the_executor(tmp_path):
    torch.manual_seed(0)
    net = ofa.OFANet(TINY).eval()
    ex = RecordingExecutor()
    table = LatencyTable.build(net, tmp_path, threads=1, runs=3, executor=ex)
    assert ex.log == [("measure", "time_parts")] and len(table.entries) == 4


def _true_ms(table, net, subnet, scale=1.3, overhead=0.004):
    """What a runtime with `scale` and per-call `overhead` would measure for `subnet` (timings made up, so the fit is
    checked exactly; measuring whole subnets is checked by test_whole_subnets_are_measured)."""
    total, n = table.parts_sum(net, subnet)
    return scale * (total - (n - 1) * overhead)


def test_calibration_refits_scale_and_overhead_on_measured_whole_subnets(built, tmp_path, monkeypatch):
    import dataclasses

    from edgeopt.measure import latency_table

    net, table = built
    off = dataclasses.replace(table, overhead_ms=0.0)  # no overhead taken off: every prediction too high
    timed = []

    def measure(ex, subs, folder, **kw):
        timed.append(len(subs))
        return [_true_ms(table, net, s) for s in subs]

    monkeypatch.setattr(latency_table, "measure_subnets", measure)
    fit = off.calibrate(net, tmp_path, subnets=5, runs=4)
    assert timed == [5] and fit["subnets"] == 5 and off.calibrated == 5
    assert (off.scale, off.overhead_ms) == (pytest.approx(1.3), pytest.approx(0.004, abs=1e-9))
    assert fit["error_after_pct"] < 1e-6 < fit["error_before_pct"]
    back = LatencyTable.load(off.save(tmp_path / "t.json"))
    assert (back.scale, back.calibrated, back.overhead_ms) == (off.scale, 5, off.overhead_ms)
    ex = ofa.OFASubNetworkExtractor(net)
    total, n = off.parts_sum(net, ex.sample_largest())
    assert off.predict(net, ex.sample_largest()) == pytest.approx(off.scale * (total - (n - 1) * off.overhead_ms))


def test_a_fit_that_comes_out_negative_or_on_too_few_subnets_keeps_the_table(built):
    import dataclasses

    from edgeopt.measure.latency_table import calibration_subnets

    net, table = built
    subs = calibration_subnets(net, 4)
    for subnets, measured in ((subs, [-_true_ms(table, net, s) for s in subs]),  # scale < 0
                              (subs[:2], [_true_ms(table, net, s) for s in subs[:2]])):  # < 3 subnets
        kept = dataclasses.replace(table)
        kept.fit(net, subnets, measured)
        assert (kept.scale, kept.overhead_ms, kept.calibrated) == (table.scale, table.overhead_ms, 0)


def test_part_files_are_reused_only_for_the_same_part(tmp_path):
    from edgeopt.measure.latency_table import time_graphs

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1).eval()
    graphs = {"a": (conv, (1, 2, 6, 6))}
    time_graphs(graphs, tmp_path, threads=1, runs=3)
    part = tmp_path / "part0.onnx"
    first = part.stat().st_mtime_ns
    time_graphs(graphs, tmp_path, threads=1, runs=3)
    assert part.stat().st_mtime_ns == first  # same part: the file is reused
    with torch.no_grad():
        conv.weight.add_(1.0)
    time_graphs(graphs, tmp_path, threads=1, runs=3)
    assert part.stat().st_mtime_ns != first  # other weights: exported again


def test_calibration_and_probe_subnets_are_timed_with_the_parts(tmp_path, monkeypatch):
    """build(calibrate=N) times N whole subnets beside the parts and fits the table to them (the fit itself is
    checked on exact timings above: on 4 noisy runs its sign is up to the machine)."""
    torch.manual_seed(0)
    net = ofa.OFANet(CFG).eval()
    ex = ofa.OFASubNetworkExtractor(net)
    probe = [ex.sample_smallest(), ex.sample_largest()]
    fitted = []
    monkeypatch.setattr(LatencyTable, "fit", lambda self, n, subs, ms: fitted.append((list(subs), list(ms))))
    table = LatencyTable.build(net, tmp_path, threads=1, runs=4, calibrate=4, probe=probe)
    assert len(table.entries) == 2 * 2 + 2 * 2 * 2 * 2 * 2
    ((subs, ms),) = fitted
    from edgeopt.measure.latency_table import calibration_subnets
    assert subs == calibration_subnets(net, 4) and len(ms) == 4 and all(m > 0 for m in ms)
    assert len(table.probe_ms) == 2 and all(m > 0 for m in table.probe_ms)
    assert table.raw_predict(net, probe[1]) == pytest.approx(
        table.parts_sum(net, probe[1])[0] - (table.parts_sum(net, probe[1])[1] - 1) * table.call_ms)
    assert LatencyTable.load(table.save(tmp_path / "t.json")).call_ms == table.call_ms
