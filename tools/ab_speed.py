#!/usr/bin/env python3
"""Benchmark: two ONNX graphs of the same inputs side by side in onnxruntime (an A/B of a
deploy graph written by two versions of the code, say); prints JSON.

    python tools/ab_speed.py OLD.onnx NEW.onnx [--batch 256] [--blocks 12] [--runs 10]

Each graph gets its own session (one thread unless --threads); the two are timed in
alternating blocks of --runs runs each (the order flips every block), so that a machine
whose speed drifts moves both alike. Reports each graph's images/s from its median block,
the median of the blocks' speed ratios (B over A) and the ratio of the best blocks. Inputs
are uniform random numbers in [0, 1) of each input's shape (free dimensions: --batch, and
--size for free spatial sizes): speed does not depend on the values of dense graphs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import emit  # noqa: E402


def _feeds(session, batch: int, size: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for i in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else None for d in i.shape]
        shape = [batch if k == 0 and d is None else (d or size) for k, d in enumerate(dims)]
        out[i.name] = rng.random(shape, dtype=np.float32)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the first graph (A)")
    p.add_argument("b", help="the second graph (B)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28, help="free spatial sizes (default 28)")
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--runs", type=int, default=10, help="runs per block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    import onnxruntime as ort

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = args.threads
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    sa, sb = session(args.a), session(args.b)
    feeds = _feeds(sa, args.batch, args.size)
    if sorted(feeds) != sorted(i.name for i in sb.get_inputs()):
        p.error("the two graphs have different inputs")
    for s in (sa, sb):
        s.run(None, feeds)

    def block(s) -> float:
        t0 = time.perf_counter()
        for _ in range(args.runs):
            s.run(None, feeds)
        return (time.perf_counter() - t0) / args.runs

    ta, tb = [], []
    for k in range(args.blocks):
        first, second = (sa, sb) if k % 2 else (sb, sa)
        t1, t2 = block(first), block(second)
        (ta, tb)[first is sb].append(t1)
        (ta, tb)[second is sb].append(t2)
    ta, tb = np.array(ta), np.array(tb)
    result = {"benchmark": "ab_speed", "a": str(args.a), "b": str(args.b), "batch": args.batch,
              "threads": args.threads, "blocks": args.blocks, "runs_per_block": args.runs,
              "images_per_second": {"a": round(args.batch / float(np.median(ta)), 1),
                                    "b": round(args.batch / float(np.median(tb)), 1)},
              "b_over_a_median_block": round(float(np.median(ta / tb)), 4),
              "b_over_a_best_blocks": round(float(ta.min() / tb.min()), 4)}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
