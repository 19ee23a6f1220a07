"""onnx_snn.values: one answer to "is this a number" for every user-facing check."""
import math

import numpy as np
import pytest

from onnx_snn.values import is_nonnegative, is_real


@pytest.mark.parametrize("v", [0, 3, -2.5, np.int64(4), np.float32(0.5), np.float64(-1), math.inf])
def test_real_numbers_of_python_and_numpy_are_real(v):
    assert is_real(v)


@pytest.mark.parametrize("v", [True, False, np.bool_(True), "1", None, [1], np.array([1.0]),
                               1 + 2j])
def test_bools_strings_arrays_and_complex_are_not(v):
    assert not is_real(v)


@pytest.mark.parametrize("v,ok", [(0, True), (2.5, True), (np.float32(1), True), (-1e-9, False),
                                  (math.nan, False), (math.inf, False), (True, False)])
def test_nonnegative_means_finite_and_at_least_zero(v, ok):
    assert is_nonnegative(v) is ok
