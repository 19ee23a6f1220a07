"""One runner for the benchmarks' child-process jobs (tools/bench.py, bench_convert.py,
bench_sgl.py).

A benchmark measures each job (a conversion, a training loop, an accuracy table) in a fresh
Python process, so that its time and peak memory are its own: the tool reruns its own script
with hidden options, the child does the one job and prints its result as a JSON object on
the last line of its stdout.

Parent::

    r = run_job(__file__, "convert", {"model": path, "calib": calib_path}, timeout=600)
    if "error" in r: ...          # the job failed; the other jobs' results are kept

Child (the same script)::

    add_job_options(parser, model=str, calib=str)  # hidden --_job, --_model, --_calib, --_threads
    args = parser.parse_args()
    if args._job:
        print_result(do_the_job(args))
        return 0

Like the other sibling modules, this one is imported by its plain name (``from _jobs import
run_job``): a tool runs as ``python tools/NAME.py``, which puts tools/ first on ``sys.path``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence

#: set in every job's environment: no progress bars (onnx-snn's nor tqdm's) on its stderr
JOB_ENV = {"ONNX_SNN_PROGRESS": "0", "TQDM_DISABLE": "1"}
#: how much of a failed job's stderr is kept in its result (``stderr_tail``)
STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 3000


def add_job_options(parser: argparse.ArgumentParser, **types) -> None:
    """The child side: hidden ``--_job`` and ``--_threads`` (int), and ``--_NAME`` of type
    ``types[NAME]`` for each option a parent passes to :func:`run_job`."""
    parser.add_argument("--_job", help=argparse.SUPPRESS)
    parser.add_argument("--_threads", type=int, help=argparse.SUPPRESS)
    for name, type_ in types.items():
        parser.add_argument(f"--_{name}", type=type_, help=argparse.SUPPRESS)


def print_result(result: Mapping) -> None:
    """The child side: the job's result, one JSON line on stdout (the last one)."""
    print(json.dumps(result), flush=True)


def _text(out) -> str:
    if out is None:
        return ""
    return out.decode(errors="replace") if isinstance(out, bytes) else out


def _tail(stderr: str) -> str:
    lines = stderr.strip().splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)[-STDERR_TAIL_CHARS:]


def run_job(script: str, job: str, options: Optional[Mapping] = None, *,
            argv: Sequence[str] = (), threads: Optional[int] = None,
            timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None) -> dict:
    """Run ``python SCRIPT [ARGV] --_job JOB --_NAME VALUE ...`` (one ``--_NAME`` per
    ``options`` item that is not None) in a fresh process and return the JSON object on the
    last line of its stdout.

    ``threads``: the job's thread count, passed as ``--_threads`` and as OMP/MKL/OpenBLAS
    environment variables. ``timeout``: seconds before the job is killed (None: no limit).
    ``env``: more environment variables (besides :data:`JOB_ENV`).

    Never raises for a failed job: a job that exits non-zero, is killed, times out or prints
    no JSON gives ``{"error": MESSAGE, "stderr_tail": ...}`` (MESSAGE: the last line of its
    stderr, normally the exception, or what went wrong; ``stderr_tail``: its last lines), so
    a caller running many jobs keeps the others' results.
    """
    cmd = [sys.executable, str(script), *map(str, argv), "--_job", job]
    for name, value in (options or {}).items():
        if value is not None:
            cmd += [f"--_{name}", str(value)]
    full_env = {**os.environ, **JOB_ENV, **(env or {})}
    if threads:
        cmd += ["--_threads", str(threads)]
        n = str(threads)
        full_env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"error": f"the {job} job timed out after {timeout:g} s",
                "stderr_tail": _tail(_text(e.stderr))}
    except OSError as e:
        return {"error": f"the {job} job did not start: {e}", "stderr_tail": ""}
    tail = _tail(p.stderr)
    if p.returncode:
        if p.returncode < 0:  # e.g. SIGKILL from the out-of-memory killer
            error = f"the {job} job was killed by signal {-p.returncode}"
        else:
            error = (tail.splitlines()[-1] if tail
                     else f"the {job} job failed with exit code {p.returncode}")
        return {"error": error, "stderr_tail": tail}
    lines = p.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = None
    if not isinstance(result, dict):
        return {"error": f"no JSON from the {job} job: {(lines or ['(no output)'])[-1][:200]}",
                "stderr_tail": tail}
    return result
