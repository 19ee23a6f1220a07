"""JSON text for the files and lines this project writes: strict JSON, which every parser
reads (Python's ``json`` would write a float NaN or infinity as a bare ``NaN``/``Infinity``
token, which JavaScript's ``JSON.parse`` and strict parsers reject); such values become
``null``."""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import numpy as np


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, recursively
    through dicts, lists and tuples; numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite_or_null(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, indent: Optional[int] = 2) -> str:
    """Strict JSON text of ``value`` (non-finite floats as ``null``)."""
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False)
