"""Operations per training step: how many aten operations (on a GPU, about one kernel launch
each) one SGL step issues, against the DNN's training step and SpikingJelly's; prints JSON.

    python tools/count_ops.py [-T 2] [--batch 64] [--out FILE]

The network of ``tools/bench_sgl.py`` (the shipped model's architecture; onnx-snn's from the
shipped model converted at T), one forward pass with the loss and one backward pass, on the
CPU, counted with ``torch.profiler``: each aten operation called from Python or from autograd,
not the ones it calls itself. Reshapes and views are counted too (they launch nothing);
``views_among_them`` says how many of each count they are. ``onnx_snn`` is the runtime's
default on a GPU (each layer once on all T steps, the neurons in one autograd node per
layer); ``onnx_snn_step_by_step`` the steps run one by one (``fold_time = False``, the
default on the CPU).
The optimizer step is left out (Adam's foreach form is a handful of operations on any
network). On a GPU at small sizes a training step is launch-bound, so this count, not the
FLOPs, sets its time (docs/MEASUREMENTS.md, on a GPU).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _bench_common import emit

ROOT = Path(__file__).resolve().parents[1]


#: aten operations that only make a view (no kernel launch on a GPU)
VIEWS = {"aten::" + v for v in ("select", "slice", "reshape", "view", "t", "unbind", "flatten",
                                "detach", "alias", "as_strided", "expand", "squeeze",
                                "unsqueeze", "transpose", "permute", "narrow", "split")}
def count(step) -> tuple:
    """(top-level aten operations, the views among them) of one call of ``step`` (after one
    call to warm up)."""
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = [e.name for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(ops), sum(1 for o in ops if o in VIEWS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-T", "--timesteps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as Fn

    import onnx_snn
    from onnx_snn import zoo
    from onnx_snn.runtimes.torch import SpikingNetwork
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    dnn = zoo.build("fmnist_vgg", 10, 1).train()
    counts = {"dnn": count(lambda: Fn.cross_entropy(dnn(x), y).backward())}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.snn.onnx")
        onnx_snn.convert(str(ROOT / "onnx_snn" / "models" / "fmnist_vgg.onnx"), "fashion-mnist",
                         timesteps=args.timesteps, show_progress=False,
                         reconstruct=0).save(path)
        snn = SpikingNetwork.from_onnx(path).train()

        def snn_step():
            Fn.cross_entropy(snn(x, args.timesteps, record_spikes=False), y).backward()
        snn.fold_time = True       # the runtime's default on a GPU, which this count is for
        counts["onnx_snn"] = count(snn_step)
        snn.fold_time = False      # the steps one by one (the runtime before 2026-12-04)
        counts["onnx_snn_step_by_step"] = count(snn_step)
    result = {"benchmark": "aten operations per training step (forward + backward)",
              "timesteps": args.timesteps, "batch": args.batch}
    result.update({k: total for k, (total, _) in counts.items()})
    try:
        from spikingjelly.activation_based import functional

        from bench_sgl import spikingjelly_net
        sj = spikingjelly_net()

        def sj_step():
            functional.reset_net(sj)
            out = sj(x.unsqueeze(0).repeat(args.timesteps, 1, 1, 1, 1)).mean(0)
            Fn.cross_entropy(out, y).backward()
        counts["spikingjelly"] = count(sj_step)
        result["spikingjelly"] = counts["spikingjelly"][0]
    except ImportError as e:
        result["spikingjelly"] = {"error": f"not installed: {e}"}
    result["onnx_snn_over_dnn"] = round(result["onnx_snn"] / result["dnn"], 2)
    # views launch no kernel on a GPU
    result["views_among_them"] = {k: views for k, (_, views) in counts.items()}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
