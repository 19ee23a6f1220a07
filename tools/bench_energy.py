"""Spikes per layer, FLOPs and compute energy of the shipped model's SNN against its DNN, at
T = 1, 2, 3 for ``refined`` (the default), ``datta`` and ``deng`` (conversion only, and fine-tuned
models when given);
prints JSON and a Markdown table.

    python tools/bench_energy.py [--tuned-dir runs/finetune] [--preset 45nm-fp32]

Spike rates are recorded on the 10 000 Fashion-MNIST test images in onnxruntime; energy per
onnx_snn.analyze (DNN: MACs x E_MAC; SNN: the direct-encoded first layer in MACs, every other
layer FLOPs x input spikes per neuron in ACs).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from onnx_snn.table import format_table

# a sibling in tools/, which `python tools/bench_energy.py` puts first on sys.path
from _bench_common import bench_calibration, emit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-T", "--timesteps", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--methods", nargs="+", default=["refined", "datta", "deng"])
    ap.add_argument("--tuned-dir", help="folder with T<T>.tuned.snn.onnx from tools/bench_finetune.py")
    ap.add_argument("--preset", default="45nm-fp32", choices=["45nm-fp32", "45nm-int32"])
    ap.add_argument("--limit", type=int, help="fewer test images")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--markdown", help="write the Markdown table here")
    args = ap.parse_args(argv)
    os.environ.setdefault("ONNX_SNN_PROGRESS", "0")

    import onnx_snn
    from onnx_snn.analyze import ENERGY_PRESETS, analyze
    from onnx_snn.demo import shipped_model_path

    model = str(shipped_model_path())
    nm = onnx_snn.prepare(model)
    cal = bench_calibration(nm)
    mac, ac = ENERGY_PRESETS[args.preset]
    candidates = []
    for method in args.methods:
        for T in args.timesteps:
            candidates.append((f"{method} T={T}", onnx_snn.build(nm, cal, T, method).model))
    if args.tuned_dir:
        for T in args.timesteps:
            p = Path(args.tuned_dir) / f"T{T}.tuned.snn.onnx"
            if p.is_file():
                candidates.append((f"datta T={T} fine-tuned", str(p)))
    rows = []
    for label, m in candidates:
        r = onnx_snn.evaluate(m, "fashion-mnist", limit=args.limit, show_progress=False)
        counted = {**r.sites, **r.pools}     # the max pools' output spikes too
        rates = r.rates
        a = analyze(m, rates, r.timesteps, mac, ac, dnn_model=model)
        d = a.to_dict()
        t = d["totals"]
        rows.append({"model": label, "top1": r.top1,
                     "spikes_per_image": {k: round(s.spikes_per_sample, 1) for k, s in counted.items()},
                     "spikes_per_neuron": {k: round(s.spikes_per_neuron, 4) for k, s in counted.items()},
                     "dnn_flops": t["dnn_flops"], "snn_flops": t["snn_flops"],
                     "dnn_energy_uj": t["dnn_energy_pj"] / 1e6, "snn_energy_uj": t["snn_energy_pj"] / 1e6,
                     "energy_ratio": t["dnn_energy_pj"] / t["snn_energy_pj"],
                     "flops_ratio": t["dnn_flops"] / t["snn_flops"]})
        print(f"{label}: top-1 {r.top1:.2f}%, DNN/SNN energy {rows[-1]['energy_ratio']:.2f}x", file=sys.stderr)
    sites = list(rows[0]["spikes_per_image"])
    headers = (["SNN", "top-1 %"] + [f"spikes/img {s}" for s in sites] +
               ["MFLOPs (DNN / SNN)", "energy uJ (DNN / SNN)", "DNN/SNN energy"])
    table = [[r["model"], f"{r['top1']:.2f}"] + [f"{r['spikes_per_image'][s]:.0f}" for s in sites] +
             [f"{r['dnn_flops'] / 1e6:.2f} / {r['snn_flops'] / 1e6:.2f}",
              f"{r['dnn_energy_uj']:.1f} / {r['snn_energy_uj']:.1f}", f"{r['energy_ratio']:.2f}x"]
             for r in rows]
    text = format_table(headers, table, markdown=True)
    print(text, file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    emit({"benchmark": "energy of the shipped model", "preset": args.preset,
          "mac_pj": mac, "ac_pj": ac, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
