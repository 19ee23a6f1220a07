"""Giving the heap's free memory back (onnx_snn/heap.py)."""
import ctypes

import pytest

import onnx_snn.heap as H


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_trim_gives_back_the_free_memory_the_heap_kept():
    """100 MB of small blocks freed under one still in use above them stay resident (glibc
    cannot shrink its heap past a live block); trim gives them back."""
    if H._malloc_trim() is None:
        pytest.skip("no glibc malloc_trim here")
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(25_000)]
    for b in blocks:
        ctypes.memset(b, 1, 4096)          # resident
    top = libc.malloc(64)
    for b in blocks:
        libc.free(b)
    held = _rss_mb()
    assert H.trim() is True
    assert _rss_mb() < held - 50
    libc.free(top)


def test_trim_does_nothing_without_malloc_trim(monkeypatch):
    """Where the C library has no malloc_trim (musl, macOS), trim is a no-op that says so."""
    monkeypatch.setattr(H, "_malloc_trim", lambda: None)
    assert H.trim() is False
