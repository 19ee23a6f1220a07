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
FLOPs, sets its time (README, on a GPU).
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
#: last: how many of each count are views
COUNTED: dict = {}


def count(step, name: str = "") -> int:
    """Top-level aten operations of one call of ``step`` (after one call to warm up); the
    views among them are kept in COUNTED[name]."""
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = [e.name for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    COUNTED[name] = sum(1 for o in ops if o in VIEWS)
    return len(ops)


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
    result = {"benchmark": "aten operations per training step (forward + backward)",
              "timesteps": args.timesteps, "batch": args.batch,
              "dnn": count(lambda: Fn.cross_entropy(dnn(x), y).backward(), "dnn")}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.snn.onnx")
        onnx_snn.convert(str(ROOT / "onnx_snn" / "models" / "fmnist_vgg.onnx"), "fashion-mnist",
                         timesteps=args.timesteps, show_progress=False).save(path)
        snn = SpikingNetwork.from_onnx(path).train()
        snn.fold_time = True       # the runtime's default on a GPU, which this count is for
        result["onnx_snn"] = count(lambda: Fn.cross_entropy(
            snn(x, args.timesteps, record_spikes=False), y).backward(), "onnx_snn")
        snn.fold_time = False      # the steps one by one (the runtime before 2026-12-04)
        result["onnx_snn_step_by_step"] = count(lambda: Fn.cross_entropy(
            snn(x, args.timesteps, record_spikes=False), y).backward(), "onnx_snn_step_by_step")
    try:
        from spikingjelly.activation_based import functional

        from bench_sgl import spikingjelly_net
        sj = spikingjelly_net()

        def sj_step():
            functional.reset_net(sj)
            out = sj(x.unsqueeze(0).repeat(args.timesteps, 1, 1, 1, 1)).mean(0)
            Fn.cross_entropy(out, y).backward()
        result["spikingjelly"] = count(sj_step, "spikingjelly")
    except ImportError as e:
        result["spikingjelly"] = {"error": f"not installed: {e}"}
    result["onnx_snn_over_dnn"] = round(result["onnx_snn"] / result["dnn"], 2)
    result["views_among_them"] = dict(COUNTED)   # launch no kernel on a GPU
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
