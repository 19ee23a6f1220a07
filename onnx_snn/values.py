"""What counts as a number in values a user passes (configs, rate files, energy costs)."""
from __future__ import annotations

import math
import numbers


def is_real(v) -> bool:
    """A real number: int, float and numpy's, not a bool (numpy's ``bool_`` is no
    ``numbers.Real``; Python's ``True`` is, and is refused here)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_nonnegative(v) -> bool:
    """A finite real number >= 0 (see :func:`is_real`)."""
    return bool(is_real(v) and math.isfinite(v) and v >= 0)


def is_int(v) -> bool:
    """A whole number of int type: int and numpy's integers, not a bool (nor 2.0)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
