"""Benchmark: how conversion time grows with a network's depth; print JSON.

    python tools/bench_depth.py                              # conv chains of 100-800 layers
    python tools/bench_depth.py --kind mlp --depths 250,500,1000,2000
    options: [--kind conv|mlp] [--depths 100,200,400,800] [--methods refined,datta]
             [--images 32] [-T 2] [--threads 1] [--job-timeout 900] [--out depth.json]
             [--code DIR]      # the onnx_snn package of another checkout (git worktree)

Each network is a plain chain of ``depth`` layers, each a layer and a ReLU (no trained
threshold: ``mu`` is estimated), then a dense classifier: ``conv``, 1x1 convolutions of 4
channels on 1x28x28 (near-identity weights, so every layer keeps firing), or ``mlp``, 8x8
dense layers on 8 inputs. Weights are seeded; the calibration data are the first
``--images`` Fashion-MNIST training images (``conv``) or seeded normal vectors (``mlp``):
this measures time, not accuracy. Every conversion runs in a fresh process
(tools/_jobs.py); its result gives the end-to-end ``seconds`` of ``onnx_snn.convert``, the
refinement's own (``refine_seconds``) and the peak memory. ``growth`` is each depth's time
over the previous depth's (2.0 per doubling is linear; 4.0 quadratic). ``--code DIR`` runs
the conversions with the ``onnx_snn`` of the checkout at DIR (``git worktree add DIR REV``),
not the installed one, to compare two versions on the same chains; ``code`` names the one used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from _bench_common import use_code
from _jobs import add_job_options, print_result, run_job


def build(kind: str, depth: int, path: str) -> None:
    """The chain, saved to ``path``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    width = 4 if kind == "conv" else 8
    for i in range(depth):
        cin = 1 if (kind == "conv" and i == 0) else width
        if kind == "conv":
            w = np.eye(width, cin)[:, :, None, None] + 0.1 * rng.standard_normal((width, cin, 1, 1))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"]))
        else:
            w = 0.98 * np.eye(width) + 0.05 * rng.standard_normal((width, width))
            nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"c{i}"], transB=1))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((0.02 * rng.standard_normal(width)).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    features = width * 28 * 28 if kind == "conv" else width
    if kind == "conv":
        nodes.append(helper.make_node("Flatten", [prev], ["flat"]))
        prev = "flat"
    inits.append(numpy_helper.from_array(
        (0.05 * rng.standard_normal((10, features))).astype(np.float32), "fc"))
    nodes.append(helper.make_node("Gemm", [prev, "fc"], ["y"], transB=1))
    shape = ["N", 1, 28, 28] if kind == "conv" else ["N", width]
    g = helper.make_graph(nodes, f"{kind}{depth}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def calibration(kind: str, images: int, path: str) -> None:
    import numpy as np
    if kind == "conv":
        from onnx_snn.datasets import load_dataset
        x = load_dataset("fashion-mnist", split="train").x[:images]
    else:
        x = np.random.default_rng(1).standard_normal((images, 8)).astype(np.float32)
    np.savez(path, x=np.asarray(x, np.float32))


def job_convert(args) -> dict:
    import logging
    import re
    logging.disable(logging.WARNING)      # "N plain ReLU layers", once per depth
    if args._code:
        use_code(args._code)
    import onnx_snn
    t0 = time.perf_counter()
    snn = onnx_snn.convert(args._model, args._calib, timesteps=args._timesteps,
                           method=args._method, show_progress=False,
                           reconstruct=0)    # the conversion's cost alone, not the training's
    seconds = time.perf_counter() - t0
    with open("/proc/self/status") as f:
        peak = int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024
    seq = snn.report.get("sequential") or {}
    return {"seconds": round(seconds, 2), "refine_seconds": round(seq.get("seconds", 0.0), 2),
            "sites": len(snn.records), "peak_rss_mb": round(peak),
            "code": os.path.dirname(os.path.dirname(os.path.abspath(onnx_snn.__file__)))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("conv", "mlp"), default="conv")
    p.add_argument("--depths", default="100,200,400,800",
                   help="layers per chain, comma-separated (default 100,200,400,800)")
    p.add_argument("--methods", default="refined,datta")
    p.add_argument("--images", type=int, default=32, help="calibration images (default 32)")
    p.add_argument("-T", "--timesteps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="threads per conversion (default 1: the growth, not the speed)")
    p.add_argument("--job-timeout", type=float, default=900)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--code", help="convert with the onnx_snn of the checkout at this folder "
                   "(e.g. a git worktree of an older commit), not the installed one")
    add_job_options(p, model=str, calib=str, method=str, timesteps=int, code=str)
    args = p.parse_args()
    if args._job:
        print_result(job_convert(args))
        return 0
    depths = [int(d) for d in args.depths.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    result = {"benchmark": "conversion time against depth", "kind": args.kind,
              "images": args.images, "timesteps": args.timesteps, "threads": args.threads,
              "methods": {m: {} for m in methods}}
    with tempfile.TemporaryDirectory() as tmp:
        calib = os.path.join(tmp, "calib.npz")
        calibration(args.kind, args.images, calib)
        for depth in depths:
            model = os.path.join(tmp, f"{args.kind}{depth}.onnx")
            build(args.kind, depth, model)
            for m in methods:
                r = run_job(__file__, "convert", {"model": model, "calib": calib, "method": m,
                                                  "timesteps": args.timesteps, "code": args.code},
                            threads=args.threads, timeout=args.job_timeout)
                result["methods"][m][str(depth)] = r
                print(f"{args.kind} depth {depth} {m}: "
                      + (f"{r['seconds']} s" if "seconds" in r else r["error"]), file=sys.stderr)
    for m, rows in result["methods"].items():
        times = [(int(d), r.get("seconds")) for d, r in rows.items()]
        for (d0, t0), (d1, t1) in zip(times, times[1:]):
            if t0 and t1:
                rows[str(d1)]["growth"] = round(t1 / t0, 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
