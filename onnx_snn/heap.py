"""Giving the C heap's free memory back to the system between the phases of long work.

glibc's malloc keeps freed memory for reuse: after a phase that made and dropped many tensors
of a few MB (PyTorch's activations, onnxruntime's outputs), the process's resident memory
stays at that phase's peak and the next phase's fragments pile on top of it. The
reconstruction of a 3 x 56 x 56 depthwise-residual network held 0.8 GB of live memory at a
resident 2.1 GB (`runtimes/torch/reconstruct.py`, README "Memory"). :func:`trim` returns
what is free (``malloc_trim(0)``, which also releases whole free pages inside the heap);
elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(None)       # the process's own C library (no ldconfig run)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim() -> bool:
    """Give the heap's free memory back to the system; whether anything was returned (False
    where the C library cannot)."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
