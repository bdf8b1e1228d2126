"""edgeopt.llm.merge: parts converted from the same weights merged into one model with shared buffers."""

from __future__ import annotations

import pytest

from edgeopt.errors import InputError
from edgeopt.llm.merge import merge


def test_merge_refuses_a_signature_in_two_parts_and_nothing(tiny_llm):
    _, d = tiny_llm
    part = (d / "fp32.tflite").read_bytes()
    with pytest.raises(InputError, match="signature 'prefill_8' is in two of the parts"):
        merge([part, part])
    with pytest.raises(InputError, match="nothing to merge"):
        merge([])


def test_merging_one_part_keeps_its_signatures_and_buffers(tiny_llm):
    from edgeopt.analyze.tflite import tflite_info

    _, d = tiny_llm
    part = (d / "fp32.tflite").read_bytes()
    merged = merge([part])
    assert abs(len(merged) - len(part)) < 0.01 * len(part)  # the same weights, stored once
    out = d.parent / "merged-one.tflite"
    out.write_bytes(merged)
    assert set(tflite_info(out)["signatures"]) == set(tflite_info(d / "fp32.tflite")["signatures"])
