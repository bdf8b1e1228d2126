"""Multiplications counted from the ATen ops a call runs: matrix products, convolutions, the Winograd module."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.kernels.op_count import count_multiplications, winograd_multiplications


def test_matrix_products_count_output_elements_times_the_reduction():
    a, b = torch.randn(2, 3), torch.randn(3, 4)
    out, c = count_multiplications(lambda: torch.mm(a, b))
    assert out.shape == (2, 4) and c.total == 2 * 3 * 4 and c.by_op == {"mm": 24}
    assert count_multiplications(lambda: torch.randn(5, 2, 3) @ torch.randn(5, 3, 4))[1].total == 5 * 2 * 3 * 4
    assert count_multiplications(lambda: torch.randn(5, 2, 3) @ torch.randn(3, 4))[1].total == 5 * 2 * 3 * 4
    assert count_multiplications(lambda: torch.randn(7) @ torch.randn(7))[1].total == 7
    bias = torch.zeros(5, 2, 4)
    c = count_multiplications(lambda: torch.baddbmm(bias, torch.randn(5, 2, 3), torch.randn(5, 3, 4)))[1]
    assert c.of("baddbmm") == 5 * 2 * 3 * 4
    lin = nn.Linear(3, 4)
    assert count_multiplications(lambda: lin(torch.randn(6, 3)))[1].total == 6 * 3 * 4


def test_convolutions_count_groups_and_transposes():
    x = torch.randn(1, 4, 5, 5)
    c = count_multiplications(lambda: F.conv2d(x, torch.randn(8, 4, 3, 3)))[1]
    assert c.total == 8 * 3 * 3 * 4 * 9  # output elements x C_in x kernel
    c = count_multiplications(lambda: F.conv2d(x, torch.randn(8, 2, 3, 3), groups=2))[1]
    assert c.total == 8 * 3 * 3 * 2 * 9  # each output sees C_in / groups channels
    c = count_multiplications(lambda: F.conv_transpose2d(x, torch.randn(4, 6, 3, 3)))[1]
    assert c.total == 4 * 5 * 5 * 6 * 9  # every input element meets C_out x kernel weights


def test_element_wise_products_count_but_scalar_scaling_and_additions_do_not():
    x = torch.randn(5, 2, 3)
    assert count_multiplications(lambda: x * torch.randn(3))[1].total == 30
    assert count_multiplications(lambda: (x * 2 + x).sum())[1].total == 0


def test_winograd_counts_of_a_known_conv():
    # 3 -> 5 channels at 8x8, F(2x2, 3x3): 16 tiles of 4x4 inputs
    r = winograd_multiplications(2, c_in=3, c_out=5, size=8)
    assert r["direct"] == 5 * 8 * 8 * 3 * 9  # 8640
    assert r["elementwise"] == 16 * 5 * 3 * 16  # α² x C_out x C_in x tiles = 3840
    assert r["input_transform"] == 3 * 16 * 16 * 16  # per channel: α² filters of α² taps over 16 tiles
    assert r["output_transform"] == 4 * 16 * 5 * 16  # (m², α²) @ (α², C_out x tiles)
    assert r["winograd_total"] == 3840 + 12288 + 5120
    assert r["ratio"] == Fraction(9, 4)
    assert r["max_abs_diff"] < 1e-4  # the counted run computed the same convolution


@pytest.mark.parametrize("m, theory", [(2, Fraction(9, 4)), (4, Fraction(4)), (6, Fraction(81, 16)),
                                       (8, Fraction(144, 25))])
def test_winograd_ratio_equals_theory_on_whole_tiles(m, theory):
    assert winograd_multiplications(m, c_in=2, c_out=3, size=24)["ratio"] == theory


def test_ragged_tiles_count_whole_tiles():
    # 10x10 output with F(4x4): 3x3 tiles cover 12x12, so Winograd does more than the whole-tile ratio
    r = winograd_multiplications(4, c_in=2, c_out=2, size=10)
    assert r["elementwise"] == 36 * 2 * 2 * 9
    assert r["ratio"] == Fraction(2 * 2 * 100 * 9, 36 * 2 * 2 * 9) < Fraction(4)
