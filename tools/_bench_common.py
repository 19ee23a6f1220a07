"""Small helpers shared by the benchmark scripts: machine info, JSON output, timing."""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Optional


def machine() -> dict:
    import numpy
    import onnxruntime
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "cpu": _cpu_name(), "python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d")}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _status_mb(field: str) -> Optional[float]:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    now = _status_mb("VmRSS")
    return 0.0 if now is None else now


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which starts afresh at exec. (Not
    ru_maxrss: a child keeps the high-water mark of the parent it was forked from.)"""
    peak = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


CALIBRATION_IMAGES = 512


def calibration_set(nm, n: int = CALIBRATION_IMAGES, draw: int = 0):
    """The benchmarks' calibration images: the same seeded ``n`` Fashion-MNIST training
    images (``draw``: another seed's), with the model's preprocessing (a Dataset)."""
    from onnx_snn.convert import resolve_data
    return resolve_data("fashion-mnist", nm.preprocess, split="train").take(n, seed=draw)


def bench_calibration(nm, n: int = CALIBRATION_IMAGES):
    """``onnx_snn.calibrate`` on :func:`calibration_set`, quietly."""
    import onnx_snn
    return onnx_snn.calibrate(nm, calibration_set(nm, n).x, show_progress=False)


def emit(result: dict, out: Optional[str]) -> None:
    """Print the JSON result and write it to ``out`` when given."""
    result.setdefault("environment", machine())
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def use_code(path: str) -> None:
    """Import ``onnx_snn`` from the checkout at ``path``: first on ``sys.path``, with the
    editable install's finder dropped, so that nothing but the path decides which package
    is imported (a job's ``code`` says which was). For before/after runs of the same
    benchmark: ``git worktree add /tmp/base REV``, then ``--code /tmp/base``."""
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
    sys.path.insert(0, os.path.abspath(path))
