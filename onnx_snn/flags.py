"""On/off arguments of the Python API, checked: the string "False" is a true value, and a
notebook's ``pool_first="False"`` converted another network without a word."""
from __future__ import annotations

import functools
import inspect

import numpy as np

from .errors import UsageError


def check_flag(value, name: str) -> bool:
    """True or False (numpy's too), else a UsageError naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, not {value!r} ({type(value).__name__})")
    return bool(value)


def checks_flags(fn):
    """``fn`` with every parameter whose default is True or False checked by
    :func:`check_flag` (None passes where the annotation is Optional), and a call that does
    not fit its signature (a misspelt keyword, one argument too many) a UsageError naming
    its parameters, not a TypeError."""
    sig = inspect.signature(fn)
    flags = [p.name for p in sig.parameters.values() if isinstance(p.default, bool)]
    optional = {p.name for p in sig.parameters.values()       # Optional[bool], bool | None
                if "Optional" in str(p.annotation) or "None" in str(p.annotation)}
    name = fn.__qualname__.replace(".__init__", "")

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        bound = _bind(sig, name, args, kwargs)
        for flag in flags:
            if flag in bound.arguments:
                value = bound.arguments[flag]
                if not (value is None and flag in optional):
                    check_flag(value, f"{name}: {flag}")
        return fn(*args, **kwargs)
    return checked


def checks_arguments(fn):
    """``fn`` whose calls that do not fit its signature (a misspelt keyword, one argument too
    many) raise a UsageError naming its parameters, not a TypeError (for a dataclass's
    ``__init__`` that checks its own fields' values)."""
    sig = inspect.signature(fn)
    name = fn.__qualname__.replace(".__init__", "")

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        _bind(sig, name, args, kwargs)
        return fn(*args, **kwargs)
    return checked


def _bind(sig: inspect.Signature, name: str, args, kwargs) -> inspect.BoundArguments:
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as e:
        takes = [p for p in sig.parameters if p not in ("self", "cls")]
        raise UsageError(f"{name}(): {e}; it takes {', '.join(takes)}") from None
