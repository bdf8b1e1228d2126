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


def test_merged_parts_keep_tensor_names_unique_for_the_quantizer(tiny_llm):
    from ai_edge_litert import schema_py_generated as S

    _, d = tiny_llm
    part = (d / "fp32.tflite").read_bytes()
    # the same model twice, its second copy's signatures renamed: every tensor name collides
    from ai_edge_litert.tools import flatbuffer_utils as fu

    second = fu.read_model_from_bytearray(bytearray(part))
    for sig in second.signatureDefs:
        sig.signatureKey = sig.signatureKey + b"_again"
    merged = merge([part, bytes(fu.convert_object_to_bytearray(second))])
    m = S.Model.GetRootAsModel(merged, 0)
    names = [m.Subgraphs(i).Tensors(j).Name() for i in range(m.SubgraphsLength())
             for j in range(m.Subgraphs(i).TensorsLength())]
    assert len(names) == len(set(names)) and any(n.endswith(b";merged1") for n in names)
    assert m.SignatureDefsLength() == 8 and len(merged) < 1.05 * len(part)  # weights stored once
