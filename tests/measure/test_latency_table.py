"""Latency tables for once-for-all subnets: every part of the space is measured, predictions sum the parts a
subnet runs, and the table round-trips through JSON."""

from __future__ import annotations

import pytest
import torch

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
