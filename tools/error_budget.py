#!/usr/bin/env python
"""Where a spiking model loses accuracy: rounding or the currents' movement over the steps.

For a spiking model and the DNN it was converted from, on labeled test images, reports top-1
of three networks and, per site, how far each one's output is from the DNN's clipped
activation there (relative RMS error, correlation):

* the DNN;
* the spiking network as it runs (T steps, in the PyTorch runtime, which onnxruntime agrees
  with: docs/FORMAT.md);
* the *constant-current* network: the same file, each neuron driven by the constant current
  it receives and emitting its mean output over the T steps, layer after layer
  (``SpikingNetwork.site_outputs(constant=True)``). At T = 2 each neuron then rounds its
  current to one of three levels, as a quantized DNN would; what the spiking network loses
  beyond it is its temporal error (a neuron whose input arrives unevenly over the steps fires
  early and cannot take the spike back, or late and cannot catch up).

Prints a table on stderr and JSON on stdout::

    python tools/error_budget.py MODEL.snn.onnx [--dnn DNN.onnx] [--data fashion-mnist]
        [--limit 2000] [--json FILE]

``--dnn`` defaults to the file the conversion recorded (``onnx_snn.source``), ``--data`` to
the dataset it recorded (the test split). A conversion with ``--pool-first`` moved pools in
the DNN it spiked: give that DNN's sites by converting without it, or read top-1 only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import emit  # noqa: E402


def site_errors(out, target) -> dict:
    """Relative RMS error and correlation of ``out`` against ``target`` (numpy arrays)."""
    import numpy as np
    o, t = np.asarray(out, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    rms = float(np.sqrt(np.mean(t ** 2)))
    err = float(np.sqrt(np.mean((o - t) ** 2)))
    corr = float(np.corrcoef(o, t)[0, 1]) if o.std() > 0 and t.std() > 0 else float("nan")
    return {"relative_rms_error": err / rms if rms > 0 else float("nan"), "correlation": corr,
            "mean_error": float(np.mean(o - t)) / rms if rms > 0 else float("nan")}


def _per_channel(y, value):
    """``y`` [N, C, ...] times ``value`` (None: 1; a number, or one per channel, axis 1)."""
    import numpy as np
    if value is None:
        return y
    v = np.asarray(value, np.float32)
    return y * (v.reshape([1, -1] + [1] * (y.ndim - 2)) if v.ndim else v)


def budget(model_path: str, dnn_path: str, data, limit: int, batch: int = 256) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from onnx_snn.convert import prepare
    from onnx_snn.spiking import format as fmt
    from runtimes.torch.finetune import load_split
    from runtimes.torch.network import SpikingNetwork

    model = onnx.load(model_path)
    view = fmt.read_spiking(model, model_path)
    net = SpikingNetwork(model).eval()
    ds = load_split(model, data, "test", limit, None, view)
    nm = prepare(dnn_path)
    names = {o.name for o in nm.model.graph.output}
    known = {v.name for v in nm.model.graph.value_info} | {o for n in nm.model.graph.node
                                                           for o in n.output}
    sites = [s for s in view.info.sites if s.input in known]
    for s in sites:
        if s.input not in names:
            nm.model.graph.output.append(onnx.helper.make_tensor_value_info(
                s.input, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(nm.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    x, y = ds.x, np.asarray(ds.y)
    acc = {"dnn": [], "spiking": [], "constant_current": []}
    parts = {k: {s.name: [] for s in sites} for k in ("dnn", "spiking", "constant_current")}
    for i in range(0, len(y), batch):
        xb = x[i:i + batch]
        got = dict(zip(outs, sess.run(None, {sess.get_inputs()[0].name: xb})))
        acc["dnn"].append(got[outs[0]].reshape(len(xb), -1).argmax(1))
        for s in sites:
            parts["dnn"][s.name].append(np.clip(got[s.input], 0, s.mu))
        for key, constant in (("spiking", False), ("constant_current", True)):
            o, per_site = net.site_outputs(torch.from_numpy(np.ascontiguousarray(xb)),
                                           constant=constant)
            acc[key].append(o.reshape(len(xb), -1).argmax(1).numpy())
            for s in sites:   # a binary-spike file's spikes are 1: their amplitude was folded
                parts[key][s.name].append(_per_channel(per_site[s.name].numpy(), s.folded_amplitude))
    top1 = {k: round(100 * float(np.mean(np.concatenate(v) == y)), 2) for k, v in acc.items()}
    # the two spiking runs on the same images: the standard error of their top-1 difference
    a, b = (np.concatenate(acc[k]) == y for k in ("spiking", "constant_current"))
    paired = {"images_only_constant_right": int(np.sum(b & ~a)),
              "images_only_spiking_right": int(np.sum(a & ~b)),
              "difference_se_points": round(100 * float(np.std(b.astype(float) - a) / np.sqrt(len(y))), 2)}
    rows = []
    for s in sites:
        target = np.concatenate(parts["dnn"][s.name])
        row = {"site": s.name, "shape": list(s.shape)}
        for key in ("spiking", "constant_current"):
            row[key] = site_errors(np.concatenate(parts[key][s.name]), target)
        rows.append(row)
    return {"top1": top1, "temporal_paired": paired, "sites": rows, "images": int(len(y)),
            "timesteps": int(view.info.timesteps),
            "sites_without_dnn_tensor": [s.name for s in view.info.sites if s not in sites]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a spiking model (.snn.onnx)")
    p.add_argument("--dnn", help="the DNN it was converted from (default: the recorded one)")
    p.add_argument("--data", help="labeled test data, as eval takes it (default: the recorded)")
    p.add_argument("--limit", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    from onnx_snn.recorded_files import recorded_dataset
    from runtimes.torch.teacher import source_dnn_of
    dnn = args.dnn or source_dnn_of(args.model)
    if not dnn or not os.path.exists(dnn):
        p.error("the DNN it was converted from is not recorded, or its file moved or changed: "
                "give --dnn")
    data = args.data or recorded_dataset(args.model)
    if not data:
        p.error("the model records no dataset: give --data")
    t0 = time.perf_counter()
    result = {"benchmark": "error_budget", "model": args.model, "dnn": dnn, "data": data,
              **budget(args.model, dnn, data, args.limit)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    t = result["top1"]
    print(f"top-1 (%) on {result['images']} images at T = {result['timesteps']}: DNN "
          f"{t['dnn']}, spiking {t['spiking']}, constant currents {t['constant_current']} "
          f"(their difference +- {result['temporal_paired']['difference_se_points']}, one "
          "standard error)", file=sys.stderr)
    print(f"{'site':10s} {'shape':16s} {'rel. error spiking':>19s} {'constant':>9s} "
          f"{'corr. spiking':>14s} {'constant':>9s}", file=sys.stderr)
    for r in result["sites"]:
        sp, cc = r["spiking"], r["constant_current"]
        print(f"{r['site']:10s} {str(r['shape']):16s} {sp['relative_rms_error']:19.3f} "
              f"{cc['relative_rms_error']:9.3f} {sp['correlation']:14.3f} "
              f"{cc['correlation']:9.3f}", file=sys.stderr)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
