"""Where onnxruntime spends its time on a model: kernel time per op type (the spiking graph's
Loop body included), from onnxruntime's own profiler; prints JSON.

    python tools/profile_ort.py MODEL.onnx [--images 1024] [--batch 256] [-T 2]
    python tools/profile_ort.py --shipped -T 2      # the shipped model, converted with datta,
                                                    # and its deploy graph

For a spiking model the op types are grouped as well: ``conv/gemm`` (the synaptic layers),
``neuron`` (the elementwise ops of ai.onnx_snn.LIFNeuron and the spike counters), ``layout``
(onnxruntime's NCHWc reorders around its blocked convolutions) and ``other``. The ``Loop``
node's own time includes its body, so it is left out of the shares.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

# a sibling in tools/, which `python tools/profile_ort.py` puts first on sys.path
from _bench_common import bench_calibration, emit

GROUPS = {
    "conv/gemm": ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "ConvTranspose"),
    "neuron": ("Mul", "Add", "Sub", "GreaterOrEqual", "Cast", "CastLike", "ReduceSum", "Div", "Round",
               "Where", "Greater", "Less", "And", "Abs"),
    "layout": ("ReorderInput", "ReorderOutput"),
}


def group_of(op: str) -> str:
    return next((g for g, ops in GROUPS.items() if op in ops), "other")


def profile(model_path: str, x, batch: int, timesteps=None) -> dict:
    import numpy as np
    import onnxruntime as ort
    from onnx_snn.model_io import load_model
    from onnx_snn.spiking import format as fmt
    model = load_model(model_path)
    spiking = fmt.is_spiking(model)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        feeds = {}
        if spiking and timesteps and fmt.TIMESTEPS_INPUT in {i.name for i in sess.get_inputs()}:
            feeds[fmt.TIMESTEPS_INPUT] = np.array(int(timesteps), np.int64)
        for s in range(0, len(x), batch):
            sess.run(None, {name: x[s:s + batch], **feeds})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    per_op.pop("Loop", None)  # its time is its body's, already counted
    total = sum(per_op.values()) or 1
    groups = collections.Counter()
    for op, us in per_op.items():
        groups[group_of(op)] += us
    return {"model": model_path, "spiking": spiking, "images": len(x), "batch": batch,
            "kernel_ms": round(total / 1e3, 1),
            "share_by_group": {g: round(v / total, 3) for g, v in groups.most_common()},
            "ms_by_op": {op: round(us / 1e3, 1) for op, us in per_op.most_common()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="an ONNX model (DNN or spiking)")
    ap.add_argument("--shipped", action="store_true", help="profile the shipped model's DNN and its "
                                                            "datta conversion at -T")
    ap.add_argument("-T", "--timesteps", type=int, default=2)
    ap.add_argument("--images", type=int, default=1024, help="Fashion-MNIST test images to run")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if not args.model and not args.shipped:
        ap.error("give a MODEL or --shipped")
    import onnx_snn
    from onnx_snn.convert import resolve_data
    from onnx_snn.demo import shipped_model_path
    path = args.model or str(shipped_model_path())
    import onnx
    from onnx_snn.spiking import format as fmt
    proto = onnx.load(path, load_external_data=False)
    if fmt.is_spiking(proto):   # a spiking model: its recorded preprocessing
        nm, preprocess = None, fmt.read_info(proto, path).preprocess
    else:
        nm = onnx_snn.prepare(path)
        preprocess = nm.preprocess
    x = resolve_data("fashion-mnist", preprocess, split="test").take(args.images).x
    result = {"benchmark": "onnxruntime kernel time by op type"}
    if args.shipped and nm is None:
        ap.error("--shipped profiles a DNN and its conversion; give a DNN")
    if args.shipped:
        cal = bench_calibration(nm)
        with tempfile.TemporaryDirectory() as tmp:
            snn_path = os.path.join(tmp, f"T{args.timesteps}.snn.onnx")
            deploy_path = os.path.join(tmp, f"T{args.timesteps}.deploy.onnx")
            onnx_snn.build(nm, cal, args.timesteps, "datta").save(snn_path)
            onnx_snn.deploy(snn_path, deploy_path)
            result["dnn"] = profile(path, x, args.batch)
            result["snn"] = profile(snn_path, x, args.batch, args.timesteps)
            result["snn"]["model"] = f"{os.path.basename(path)} -> datta T={args.timesteps}"
            result["deploy"] = profile(deploy_path, x, args.batch, args.timesteps)
            result["deploy"]["model"] = f"{os.path.basename(path)} -> datta T={args.timesteps} -> deploy graph"
        for k in ("snn", "deploy"):
            result[f"{k}_over_dnn_kernel_time"] = round(result[k]["kernel_ms"] / result["dnn"]["kernel_ms"], 2)
    else:
        result["profile"] = profile(path, x, args.batch, args.timesteps)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
