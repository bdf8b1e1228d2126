"""benchmarks/ofa.py: its checks run end to end on a short sequence and record what they measured."""

from __future__ import annotations

import json


def test_nn_part_checks_and_json(load_benchmark, tmp_path):
    ofa = load_benchmark("ofa")
    out = tmp_path / "r.json"
    rc = ofa.main(["--parts", "nn", "--runs", "10", "--seq", "16", "--out", str(tmp_path / "run"), "--json", str(out)])
    rec = json.loads(out.read_text())
    checks = {c["claim"]: c["holds"] for c in rec["checks"]}
    assert any("8.4x" in k and v for k, v in checks.items())  # predicted = counted in the graphs
    assert any("leaves 34 heads" in k and v for k, v in checks.items())
    assert rec["results"]["nn"]["heads"]["bytes"]["34 heads"] < rec["results"]["nn"]["heads"]["bytes"]["48 heads"]
    assert rec["results"]["nn"]["heads"]["max_abs_vs_torch"] < 1e-4
    assert rc in (0, 1)  # the speed check is timing: it may not hold on a busy machine; it is recorded either way
    assert ofa.main(["--parts", "ofa-search"]) == 2  # an unknown part is a usage error
