"""Fidelity numbers on constructed arrays, and gate decisions with their reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import cosine_rows as helper_cosine

from edgeopt.errors import InputError, RecipeError
from edgeopt.measure.fidelity import compare, cosine_rows, gate
from edgeopt.measure.fidelity import GateSpec


def test_identical_outputs():
    a = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    f = compare([a], [a.copy()])
    assert f == {"max_abs": 0.0, "mean_abs": 0.0, "mean_cosine": pytest.approx(1.0), "min_cosine": pytest.approx(1.0),
                 "n": 4}


def test_known_numbers():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = np.array([[1.0, 0.0], [1.0, 1.0]])
    f = compare([ref], [out])
    assert f["max_abs"] == 1.0
    assert f["mean_abs"] == 0.25
    assert f["min_cosine"] == pytest.approx(1 / math.sqrt(2))
    assert f["mean_cosine"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert f["n"] == 2


def test_cosine_ignores_scale_but_not_sign_and_pools_across_arrays():
    a = np.array([[1.0, 2.0, 3.0]])
    f = compare([a, a], [2 * a, -a])
    assert f["max_abs"] == 6.0
    assert f["n"] == 2
    assert f["min_cosine"] == pytest.approx(-1.0)
    assert f["mean_cosine"] == pytest.approx(0.0)


def test_non_batch_dims_are_flattened_per_sample():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((3, 4, 5))
    out = ref.copy()
    out[1] = -out[1]  # only sample 1 is flipped
    cos = cosine_rows(ref, out)
    assert cos.tolist() == pytest.approx([1.0, -1.0, 1.0])
    assert compare([ref], [out])["n"] == 3


def test_cosine_in_float64_matches_reference_helper():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 384)).astype(np.float16)
    b = (a.astype(np.float32) + rng.standard_normal((6, 384)).astype(np.float32) * 0.1).astype(np.float16)
    np.testing.assert_allclose(cosine_rows(a, b), helper_cosine(a, b), rtol=1e-12)
    assert compare([a], [b])["min_cosine"] == pytest.approx(helper_cosine(a, b).min())


def test_zero_rows_and_1d_outputs():
    z = np.zeros((2, 3))
    one = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert cosine_rows(z, z).tolist() == [1.0, 1.0]
    assert cosine_rows(z, one).tolist() == [1.0, 0.0]
    # a 1-d output is one row: cosine over the whole vector, not sign agreement per element
    f = compare([np.array([1.0, 2.0])], [np.array([2.0, 1.0])])
    assert f["n"] == 1 and f["min_cosine"] == pytest.approx(0.8)


def test_nan_propagates_and_fails_every_gate():
    ref = np.ones((2, 3))
    out = ref.copy()
    out[0, 1] = np.nan
    f = compare([ref], [out])
    assert math.isnan(f["max_abs"]) and math.isnan(f["min_cosine"])
    passed, why = gate(f, {"min_cosine": 0.5, "max_abs": 10})
    assert not passed and "min_cosine nan < 0.5" in why and "max_abs nan > 10" in why


def test_shape_and_length_mismatch_are_input_errors():
    with pytest.raises(InputError) as e:
        compare([np.zeros((1, 384))], [np.zeros((1, 128))])
    assert "(1, 128)" in str(e.value) and "(1, 384)" in str(e.value)
    with pytest.raises(InputError, match="2 reference outputs but 1"):
        compare([np.zeros(2), np.zeros(2)], [np.zeros(2)])
    with pytest.raises(InputError, match="no outputs"):
        compare([], [])


def test_gate_pass_and_fail_reasons():
    f = {"max_abs": 0.02, "mean_abs": 0.001, "mean_cosine": 0.999, "min_cosine": 0.97, "n": 10}
    passed, why = gate(f, GateSpec(min_cosine=0.99, max_abs=0.05))
    assert not passed
    assert why == "min_cosine 0.97 < 0.99; max_abs 0.02 <= 0.05"  # failures first
    passed, why = gate(f, {"mean_cosine": 0.99, "min_cosine": 0.95})
    assert passed and "mean_cosine 0.999 >= 0.99" in why and "min_cosine 0.97 >= 0.95" in why
    passed, why = gate(f, {"max_abs": 0.01})
    assert not passed and why == "max_abs 0.02 > 0.01"


def test_gate_edges():
    assert gate({"min_cosine": 0.5}, None) == (True, "no gates")
    assert gate({"min_cosine": 0.5}, GateSpec()) == (True, "no gates")
    assert gate({"min_cosine": 0.99}, {"min_cosine": 0.99})[0] is True  # the limit itself passes
    passed, why = gate({}, {"min_cosine": 0.99})
    assert not passed and "min_cosine not measured" in why
    passed, why = gate(None, {"max_abs": 1})
    assert not passed and "max_abs not measured" in why
    with pytest.raises(RecipeError, match="min_cosin"):
        gate({"min_cosine": 1.0}, {"min_cosin": 0.9})
    with pytest.raises(RecipeError, match="max_abs"):
        gate({"max_abs": 1.0}, {"max_abs": -1})


def test_compare_runner_outputs_end_to_end(tiny_bert_torch, tiny_bert_onnx, tiny_bert_feeds):
    from edgeopt.measure.runners import make_runner

    rt, ro = make_runner(tiny_bert_torch, 1), make_runner(tiny_bert_onnx, 1)
    ref = [rt.run(f)[0] for f in tiny_bert_feeds]
    out = [ro.run(f)[0] for f in tiny_bert_feeds]
    f = compare(ref, out)
    assert f["n"] == len(tiny_bert_feeds)
    assert f["min_cosine"] > 0.9999 and f["max_abs"] < 1e-4
    assert gate(f, {"min_cosine": 0.999})[0]


def test_decision_agreement_counts_frames_on_the_same_side_of_the_threshold():
    ref = [np.array([[0.1, 0.9, 0.6, 0.4]])]
    out = [np.array([[0.2, 0.8, 0.45, 0.3]])]  # the third frame flips
    fid = compare(ref, out, threshold=0.5)
    assert fid["decision_agreement"] == 0.75
    assert "decision_agreement" not in compare(ref, out)  # only for models decided at a threshold
    assert gate(fid, {"min_decision_agreement": 0.7})[0]
    ok, why = gate(fid, {"min_decision_agreement": 0.99})
    assert not ok and "decision_agreement 0.75 < 0.99" in why
