"""onnx_snn.values: one answer to "is this a number" for every user-facing check."""
import math

import numpy as np
import pytest

from onnx_snn.values import is_int, is_nonnegative, is_real


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


@pytest.mark.parametrize("v,ok", [(3, True), (np.int64(3), True), (np.uint8(0), True),
                                  (True, False), (np.bool_(True), False), (2.0, False),
                                  (np.float32(2), False), ("2", False)])
def test_int_means_an_integer_type_and_not_a_bool(v, ok):
    assert is_int(v) is ok
