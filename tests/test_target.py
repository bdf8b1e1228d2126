"""Target: parsing /proc/cpuinfo, declared targets, the defaults each implies, and the unknown-name error."""

from __future__ import annotations

import json
import sys

import pytest

from edgeopt.errors import RecipeError
from edgeopt.target import KNOWN_TARGETS, Target, detect_target, get_target, parse_isa

# An AVX2 desktop without VNNI (Skylake, i7-6700), trimmed to one processor.
X86_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-6700 CPU @ 3.40GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx rdseed adx smap clflushopt xsaveopt xsavec xgetbv1 xsaves
"""

# A Cascade Lake server: AVX-512 with VNNI.
X86_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""

# Alder Lake: AVX-VNNI (256-bit) without AVX-512.
X86_AVX_VNNI = """processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-12700
flags\t\t: sse sse2 fma avx f16c avx2 avx_vnni
"""

X86_BASELINE = """processor\t: 0
model name\t: Some old x86
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2
"""

# A Neoverse-N2 style arm64 core (Graviton3-like): dot product, int8 matmul, SVE, bf16.
ARM_N2 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop sha3 asimddp sha512 sve asimdfhm uscat ilrcpc flagm sb paca pacg dcpodp sve2 i8mm bf16 bti
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd49
"""

# A Cortex-A53 (Raspberry Pi 3, 64-bit): NEON only, no dot product.
ARM_A53 = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd03
"""


def test_x86_without_vnni_reduces_range():
    t = detect_target(X86_AVX2)
    assert t.arch == "x86_64"
    assert t.name == "cpu-avx2"
    assert {"avx", "avx2", "fma", "f16c"} <= set(t.isa)
    assert "avx512_vnni" not in t.isa
    assert t.reduce_range is True
    assert t.has_int8_dot is False
    assert t.quant_format == "QOperator"
    assert (t.activation_type, t.weight_type) == ("uint8", "int8")
    assert t.cpu_model == "Intel(R) Core(TM) i7-6700 CPU @ 3.40GHz"
    assert t.detected is False  # the text did not come from this machine


def test_x86_with_vnni_keeps_full_range():
    t = detect_target(X86_VNNI)
    assert t.name == "cpu-avx512-vnni"
    assert {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= set(t.isa)
    assert t.reduce_range is False
    assert t.has_int8_dot is True
    why = dict(t.implications())["reduce_range"]
    assert "VNNI" in why and "saturat" in why


def test_avx_vnni_without_avx512_is_named_avx2_but_needs_no_reduce_range():
    t = detect_target(X86_AVX_VNNI)
    assert t.name == "cpu-avx2"
    assert "avx_vnni" in t.isa and "avx512f" not in t.isa
    assert t.reduce_range is False and t.has_int8_dot is True


def test_baseline_x86_is_plain_cpu():
    t = detect_target(X86_BASELINE)
    assert t.name == "cpu" and t.isa == () and t.reduce_range is True


def test_arm_features_dotprod_i8mm():
    t = detect_target(ARM_N2)
    assert t.arch == "arm64" and t.name == "arm64"
    assert set(t.isa) == {"neon", "asimd", "dotprod", "i8mm", "sve", "bf16", "fp16"}
    assert t.reduce_range is False
    assert t.has_int8_dot is True
    assert t.cpu_model == "ARM implementer 0x41 part 0xd49"


def test_arm_without_dotprod():
    t = detect_target(ARM_A53)
    assert set(t.isa) == {"neon", "asimd"}
    assert t.has_int8_dot is False and t.reduce_range is False


def test_py_cpuinfo_spellings_normalize():
    assert parse_isa(["avx2", "avx512vnni", "avxvnni", "amx_int8", "avx512bf16"], "x86_64") == (
        "avx2", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def test_detect_this_machine():
    import os

    t = detect_target()
    assert t.detected is True
    assert t.cores == len(os.sched_getaffinity(0))
    assert 1 <= t.threads <= t.cores
    assert t.memory_gb > 0
    assert "onnxruntime" in t.runtimes and t.runtimes["onnxruntime"][0].isdigit()
    assert t.name in KNOWN_TARGETS


def test_module_import_is_lean():
    import subprocess

    code = ("import sys, edgeopt.target as m; m.detect_target(); "
            "print(sorted(x for x in ('torch', 'onnxruntime', 'onnx') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in KNOWN_TARGETS if n != "auto"])
def test_declared_targets(name):
    t = get_target(name)
    assert t.name == name and t.detected is False
    assert t.power_w > 0 and t.threads >= 1
    assert t.quant_format in ("QOperator", "QDQ")
    assert all(isinstance(k, str) and why for k, why in t.implications())
    assert Target.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_declared_defaults():
    assert get_target("cpu-avx2").reduce_range is True
    vnni = get_target("cpu-avx512-vnni")
    assert vnni.reduce_range is False and "avx512_vnni" in vnni.isa and vnni.arch == "x86_64"
    arm = get_target("arm64")
    assert arm.arch == "arm64" and "dotprod" in arm.isa and arm.reduce_range is False
    mobile = get_target("mobile-cpu")
    assert mobile.cores <= 4 and mobile.memory_gb <= 4 and 2 <= mobile.power_w <= 3
    cuda = get_target("cuda")
    assert (cuda.quant_format, cuda.execution_provider) == ("QDQ", "CUDAExecutionProvider")
    assert (cuda.activation_type, cuda.weight_type) == ("int8", "int8")
    npu = get_target("npu-qdq")
    assert npu.quant_format == "QDQ" and npu.per_channel is False
    assert get_target("cpu").quant_format == "QOperator"


def test_no_int8_ops_are_honest():
    t = get_target("cpu-avx512-vnni")
    for op in ("LayerNormalization", "Erf", "Div", "Pow", "ReduceMean"):
        assert op in t.no_int8_ops
    for op in ("MatMul", "Gemm", "Conv", "Add", "Mul", "MaxPool", "Concat", "Sigmoid", "Softmax"):
        assert op not in t.no_int8_ops


def test_no_int8_ops_have_no_quantized_cpu_kernel():
    """Each listed op has no int8 kernel in this ONNX Runtime's CPU EP (checked against its kernel registry)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    quantized = {k.op_name for k in C.get_all_opkernel_def() if k.provider == "CPUExecutionProvider"
                 and k.op_name.startswith(("QLinear", "Q"))}
    t = get_target("cpu")
    for op in t.no_int8_ops:
        assert f"QLinear{op}" not in quantized and f"Q{op}" not in quantized


def test_power_scales_with_cores_on_x86():
    t = detect_target(X86_VNNI)
    assert t.power_w == pytest.approx(10.0 * t.cores)


def test_unknown_target_lists_known_ones():
    with pytest.raises(RecipeError) as e:
        get_target("tpu-v9")
    msg = str(e.value)
    assert "\n" not in msg
    assert "tpu-v9" in msg
    for n in KNOWN_TARGETS:
        assert n in msg


def test_get_target_auto_is_detected_and_passthrough():
    t = get_target("auto")
    assert t.detected is True
    assert get_target(t) is t
