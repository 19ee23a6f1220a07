"""Benchmark: the cost of surrogate-gradient fine-tuning (SGL) against the DNN's own
training, on the shipped Fashion-MNIST network, in one run; prints JSON.

    python tools/bench_sgl.py [--images 3200] [--batch 64] [-T 1 2 3 5] [--repeat 2] [--no-peer]
    python tools/bench_sgl.py --device cuda       # on a GPU (tools/gpu_check.sh runs this)
    python tools/bench_sgl.py -T 2 4 --compare-fold --no-peer   # folded vs step by step

Each job runs in a fresh subprocess on the same ``--images`` training images (batch
``--batch``, no augmentation, 2 warm-up batches not timed), in ``--repeat`` rounds of all
jobs, keeping each job's fastest round:

* ``dnn``: the model-zoo network (onnx_snn/zoo.py ``fmnist_vgg``) trained with SGD, the DNN's
  own recipe;
* ``snn_T*``: the shipped model converted with ``datta`` at T and trained with onnx-snn's
  PyTorch runtime (Adam amsgrad, backprop through the T steps; the runtime's default for
  the device: each layer once on all T steps on CUDA, the steps one by one on the CPU);
* ``snn_T*_folded`` or ``snn_T*_step_by_step`` (``--compare-fold``): the same the other way
  (``SpikingNetwork.fold_time`` True on the CPU, False on CUDA);
* ``snn_T2_teacher``: the same at T = 2 distilled from the DNN (``finetune --teacher``: its
  outputs computed in onnxruntime on every batch, the teacher's cost included);
* ``spikingjelly_T2``: the same network built from SpikingJelly's multi-step layers and IF
  neurons (surrogate gradient) and trained at T = 2 (the peer; skipped when SpikingJelly is
  not installed).

Reported per job: images/s, seconds per 60k-image epoch (extrapolated from the timed
batches), peak RSS and the RSS growth during training (the training working set), and each
ratio to the DNN. With ``--device cuda`` the data is on the GPU before the clock starts, each
timed span ends with ``torch.cuda.synchronize()``, and the peak of CUDA memory is reported too
(SpikingJelly 2 chooses its own multi-step neuron kernel). A job that fails is reported with its error (and its stderr's last lines);
the others are kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# siblings in tools/, which `python tools/bench_sgl.py` puts first on sys.path
from _bench_common import bench_calibration, emit, peak_rss_mb, rss_mb
from _jobs import add_job_options, print_result, run_job


def _data(n):
    from onnx_snn.datasets import apply_preprocess, load_dataset
    ds = load_dataset("fashion-mnist:train").take(n, seed=0)
    return apply_preprocess(ds.x, [0.2860], [0.3530]), ds.y


def _device(args):
    import torch
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device")
    return dev


def _sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_loop(step, x, y, batch, dev):
    import torch
    xs, ys = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    nb = len(x) // batch
    before = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(nb):
        if i == 2:
            _sync(dev)
            before = rss_mb()
            t0 = time.perf_counter()
        step(xs[i * batch:(i + 1) * batch], ys[i * batch:(i + 1) * batch])
    _sync(dev)
    seconds = time.perf_counter() - t0
    timed = (nb - 2) * batch
    out = {"images_per_second": timed / seconds, "seconds_per_epoch": 60000 * seconds / timed,
           "peak_rss_mb": peak_rss_mb(), "rss_growth_mb": peak_rss_mb() - before,
           "device": str(dev)}
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        out["device_name"] = torch.cuda.get_device_name(dev)
    return out


def job_dnn(args):
    import torch
    import torch.nn.functional as Fn
    from onnx_snn import zoo
    torch.manual_seed(0)
    dev = _device(args)
    net = zoo.build("fmnist_vgg", 10, 1).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.95, weight_decay=5e-4)

    def step(xb, yb):
        loss = Fn.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    x, y = _data(args.images)
    return _time_loop(step, x, y, args.batch, dev)


def job_snn(args):
    import torch
    import torch.nn.functional as Fn
    from onnx_snn.runtimes.torch import SpikingNetwork
    torch.manual_seed(0)
    dev = _device(args)
    net = SpikingNetwork.from_onnx(args.model).to(dev).train()
    net.fold_time = None if args.fold is None else bool(args.fold)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)

    teacher = None
    if args.teacher:   # finetune --teacher: distill from the DNN, run in onnxruntime
        from onnx_snn.runtimes.torch.teacher import Teacher, distillation_loss, open_runner
        teacher = Teacher(args.teacher, open_runner(args.teacher), is_source=True, sha256="")

    def step(xb, yb):
        out = net(xb, args.T, record_spikes=False)
        if teacher is None:
            loss = Fn.cross_entropy(out, yb)
        else:
            loss = distillation_loss(out, teacher(xb.cpu().numpy()).to(xb.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.project()
    x, y = _data(args.images)
    return _time_loop(step, x, y, args.batch, dev)


def spikingjelly_net():
    """The shipped model's architecture in SpikingJelly: multi-step IF layers (soft reset,
    ATan surrogate), each convolution run once on all T steps."""
    import torch.nn as nn
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def lif():   # SpikingJelly 2 picks its own multi-step kernel for the device
        return neuron.IFNode(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.ATan(),
                             step_mode="m")

    net = nn.Sequential(
        layer.Conv2d(1, 32, 3, padding=1), lif(), layer.Conv2d(32, 32, 3, padding=1), lif(),
        layer.MaxPool2d(2), layer.Conv2d(32, 64, 3, padding=1), lif(),
        layer.Conv2d(64, 64, 3, padding=1), lif(), layer.MaxPool2d(2), layer.Flatten(),
        layer.Linear(64 * 7 * 7, 256), lif(), layer.Linear(256, 10))
    functional.set_step_mode(net, "m")
    return net


def job_spikingjelly(args):
    import torch
    import torch.nn.functional as Fn
    from spikingjelly.activation_based import functional
    torch.manual_seed(0)
    dev = _device(args)

    net = spikingjelly_net().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)

    def step(xb, yb):
        functional.reset_net(net)
        out = net(xb.unsqueeze(0).repeat(args.T, 1, 1, 1, 1)).mean(0)
        loss = Fn.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    x, y = _data(args.images)
    from importlib.metadata import version
    return {**_time_loop(step, x, y, args.batch, dev), "spikingjelly": version("spikingjelly")}


JOBS = {"dnn": job_dnn, "snn": job_snn, "spikingjelly": job_spikingjelly}


def sgl_job(job, args, model=None, T=None, timeout=None, teacher=None, fold=None):
    """One job of :data:`JOBS` in a fresh process on ``args.images`` images of batch
    ``args.batch``: its result, or ``{"error": ..., "stderr_tail": ...}``."""
    return run_job(__file__, job, {"model": model, "T": T, "teacher": teacher,
                                   "fold": fold}, timeout=timeout,
                   argv=["--images", str(args.images), "--batch", str(args.batch),
                         "--device", args.device])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3200, help="training images timed per job")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("-T", "--timesteps", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--no-peer", action="store_true", help="skip SpikingJelly")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of all jobs; each job's fastest "
                                                         "round is kept (default 2)")
    ap.add_argument("--job-timeout", type=float, metavar="SECONDS",
                    help="stop any one job after this long; it is reported as failed "
                         "(default: no limit)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--compare-fold", action="store_true",
                    help="also time onnx-snn the other way: its layers run once on all T "
                         "steps on the CPU (SpikingNetwork.fold_time = True), step by step on "
                         "CUDA, beside the default")
    ap.add_argument("--out", help="also write the JSON here")
    add_job_options(ap, model=str, T=int, teacher=str, fold=int)
    args = ap.parse_args(argv)
    if args._job:
        args.model, args.T, args.teacher = args._model, args._T, args._teacher
        args.fold = args._fold
        print_result(JOBS[args._job](args))
        return 0
    import onnx_snn
    from onnx_snn.demo import shipped_model_path
    result = {"benchmark": "SGL epoch cost vs DNN training, shipped fmnist_vgg",
              "images_timed": args.images, "batch": args.batch, "repeat": args.repeat,
              "device": args.device, "jobs": {}}
    jobs = result["jobs"]

    def keep_best(name, r):
        # the fastest of the rounds: this machine's timing noise only ever slows a job down
        old = jobs.get(name)
        if old is None or "error" in old or ("error" not in r and r["seconds_per_epoch"] < old["seconds_per_epoch"]):
            jobs[name] = r

    with tempfile.TemporaryDirectory() as tmp:
        model = str(shipped_model_path())
        nm = onnx_snn.prepare(model)
        cal = bench_calibration(nm)
        paths = {}
        for T in args.timesteps:
            paths[T] = os.path.join(tmp, f"T{T}.snn.onnx")
            onnx_snn.build(nm, cal, T, "datta").save(paths[T])
        for _ in range(args.repeat):  # rounds of every job, so slow spells hit all of them
            keep_best("dnn", sgl_job("dnn", args, timeout=args.job_timeout))
            for T in args.timesteps:
                keep_best(f"snn_T{T}", sgl_job("snn", args, model=paths[T], T=T,
                                               timeout=args.job_timeout))
                if args.compare_fold:
                    other = 0 if args.device.startswith("cuda") else 1
                    keep_best(f"snn_T{T}_{'folded' if other else 'step_by_step'}", sgl_job(
                        "snn", args, model=paths[T], T=T, timeout=args.job_timeout, fold=other))
                if T == 2:   # finetune --teacher: distillation from the DNN (runtimes/torch/teacher.py)
                    keep_best("snn_T2_teacher", sgl_job("snn", args, model=paths[T], T=T,
                                                        timeout=args.job_timeout, teacher=model))
            if not args.no_peer:
                keep_best("spikingjelly_T2", sgl_job("spikingjelly", args, T=2,
                                                     timeout=args.job_timeout))
    base = jobs["dnn"]
    for name, r in jobs.items():
        if "error" in r or "error" in base or name == "dnn":  # no ratio without both
            continue
        r["epoch_time_vs_dnn"] = round(r["seconds_per_epoch"] / base["seconds_per_epoch"], 2)
        r["peak_rss_vs_dnn"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 2)
        r["rss_growth_vs_dnn"] = round(r["rss_growth_mb"] / max(base["rss_growth_mb"], 1e-9), 2)
    for r in jobs.values():
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = round(v, 2)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
