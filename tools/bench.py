"""Side-by-side benchmark of onnx-snn and SpikingJelly's ann2snn on the same trained networks,
the same real data and the same machine, in one run. Prints JSON and a Markdown report.

    python tools/bench.py                 # everything (the tables in README)
    python tools/bench.py --quick         # a smaller run: shipped model, 2000 test images
    python tools/bench.py --deep tools/models/fmnist_resnet20.onnx   # another deep network

Sections (``--sections``):

* ``accuracy``: conversion-only top-1 on the Fashion-MNIST test set at T = 1, 2, 3, 4, 8, 16
  for onnx-snn's ``refined`` (the default's conversion, without its reconstruction), ``datta`` (the paper's Algorithm 1 alone),
  ``deng``, ``max`` and ``percentile`` (``--methods`` adds ``datta-mean``), and
  SpikingJelly's RateCodingRecipe in modes ``max`` and ``99.9%``. The onnx-snn models run in
  onnxruntime; T-independent methods (and SpikingJelly) are run once for the largest T and
  read at every shorter T (exactly what shorter runs give). Each (network, method) is a job
  in its own process; two run at a time with one thread each (``--workers``), which gets
  about 1.3x more out of two cores than one two-thread process.
  SpikingJelly's ann2snn only recognizes ``nn.ReLU``: it converts the same network and
  weights with the clipped ReLUs replaced by ReLU (that ANN's own top-1 is reported).
* ``convert``: conversion time (end to end, the same 512 calibration images, T = 2) and peak
  memory (each in a fresh process, run alone) of onnx-snn (``datta`` and the default
  ``refined``) against SpikingJelly.
* ``throughput``: inference images/s at T = 2, batch 256: the DNN in onnxruntime (the
  floor), the onnx-snn spiking graph and its deploy graph (``onnx-snn deploy``, and its
  faster ``--unit-thresholds`` form, also of the ``--pool-first`` conversion) in
  onnxruntime, SpikingJelly's model in PyTorch; the best of five passes each, the jobs'
  passes taken in turn.
* ``finetune``: top-1 after one epoch (``--finetune-images``, default 8 000 training
  images) of onnx-snn's surrogate-gradient fine-tuning at T = 1 and 2, and the SGL epoch time against SpikingJelly's multi-step training of the same
  network at T = 2 (tools/bench_sgl.py's jobs).

The deeper network (default: the paper's VGG-16 at a quarter width, tools/models/) is trained
with ``python tools/train_dnn.py --arch fmnist_vgg16 --dataset fashion-mnist --epochs 30 --out runs/fmnist_vgg16 --export tools/models/fmnist_vgg16.onnx``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx_snn.table import format_table

# siblings in tools/, which `python tools/bench.py` puts first on sys.path
from _bench_common import calibration_set, emit, peak_rss_mb
from _jobs import add_job_options, print_result, run_job

ROOT = Path(__file__).resolve().parent.parent

T_FULL = (1, 2, 3, 4, 8, 16)
T_QUICK = (1, 2, 4)


# ------------------------------------------------------------------ models and data

def zoo_module(onnx_path: str, relu: bool = False):
    """The model-zoo PyTorch network with the weights (and mu) of an exported ONNX file."""
    import onnx
    import torch
    from onnx_snn import zoo
    m = onnx.load(onnx_path)
    meta = {p.key: p.value for p in m.metadata_props}
    arch = meta["onnx_snn.arch"]
    in_ch = json.loads(meta.get("onnx_snn.input_shape", "[1, 28, 28]"))[0]
    net = zoo.build(arch, int(meta.get("onnx_snn.num_classes", 10)), in_ch)
    state = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    missing = [k for k in net.state_dict() if not k.endswith(".mu") and k not in state]
    if missing:
        raise SystemExit(f"{onnx_path}: weights {missing[:3]} not found by name in the ONNX file")
    net.load_state_dict({**net.state_dict(), **{k: v for k, v in state.items() if k in net.state_dict()}})
    for act, mu in zip(zoo.clipped_relus(net), json.loads(meta["onnx_snn.mu"])):
        act.mu.data.fill_(mu)
    if relu:
        _swap_relu(net)
    return net.eval()


def _swap_relu(module):
    import torch.nn as nn
    from onnx_snn import zoo
    for name, child in module.named_children():
        if isinstance(child, zoo.ClippedReLU):
            setattr(module, name, nn.ReLU())
        else:
            _swap_relu(child)


def data(model_path, n_test=None, n_calib=512):
    import onnx_snn
    from onnx_snn.convert import resolve_data
    nm = onnx_snn.prepare(model_path)
    test = resolve_data("fashion-mnist", nm.preprocess, split="test")
    if n_test:
        test = test.take(n_test)
    calib = calibration_set(nm, n_calib)
    return nm, test, calib


# ------------------------------------------------------------------ accuracy

# label -> (method, SearchConfig options); the T-independent ones share one job ("fixed")
OURS = {"refined": ("refined", {}), "datta": ("datta", {}),
        "datta-mean": ("datta", {"objective": "mean"}), "deng": ("deng", {}),
        "max": ("max", {}), "percentile": ("percentile", {})}
FIXED = ("deng", "max", "percentile")
PEER_JOBS = ("spikingjelly-max", "spikingjelly-99.9%")
DEFAULT_JOBS = ("refined", "datta", "fixed") + PEER_JOBS
EVAL_BATCH = 16     # onnxruntime runs the spiking graph faster on small batches (cache):
PEER_BATCH = 32     # 1.12x batch 32 (1.25x batch 256); SpikingJelly's model 1.27x at 32 vs 256


def ours_accuracy(job, model_path, T_list, test, calib, threads=None):
    """Rows of one onnx-snn job: a datta variant at every T, or the fixed baselines."""
    import onnx_snn
    from onnx_snn.evaluate import evaluate, evaluate_prefixes
    from onnx_snn.scales import SearchConfig
    nm = onnx_snn.prepare(model_path)
    cal = onnx_snn.calibrate(nm, calib.x, show_progress=False, threads=threads)
    rows = {}
    if job != "fixed":
        method, opts = OURS[job]
        cfg = SearchConfig(**opts)
        t0 = time.perf_counter()
        res, build_s = {}, {}
        for T in T_list:
            tb = time.perf_counter()
            snn = onnx_snn.build(nm, cal, T, method, cfg, calib_data=calib.x, threads=threads)
            build_s[T] = round(time.perf_counter() - tb, 1)
            res[T] = evaluate(snn.model, test, batch_size=EVAL_BATCH, threads=threads,
                              show_progress=False)
        rows[job] = {"top1": {T: round(res[T].top1, 2) for T in T_list},
                     "spike_rate": {T: round(res[T].mean_rate, 4) for T in T_list},
                     "build_seconds": build_s, "seconds": round(time.perf_counter() - t0, 1)}
        return rows
    evaluated = {}  # neuron parameters of a T-independent method -> its label
    for label in FIXED:
        method, opts = OURS[label]
        t0 = time.perf_counter()
        snn = onnx_snn.build(nm, cal, max(T_list), method, SearchConfig(**opts))
        key = tuple((r.threshold, r.amplitude, r.leak, r.v_init) for r in snn.records.values())
        if key in evaluated:
            # e.g. percentile on a clipped-ReLU network: the 99.9th percentile of every
            # layer is above its clip bound mu, so the parameters are max's exactly
            same = evaluated[key]
            rows[label] = {**rows[same], "same_parameters_as": same, "seconds": 0.0}
            continue
        evaluated[key] = label
        res = evaluate_prefixes(snn.model, test, T_list, batch_size=EVAL_BATCH, threads=threads,
                                show_progress=False)
        rows[label] = {"top1": {T: round(res[T].top1, 2) for T in T_list},
                       "spike_rate": {T: round(res[T].mean_rate, 4) for T in T_list},
                       "seconds": round(time.perf_counter() - t0, 1)}
    return rows


def peer_accuracy(job, model_path, T_list, test, calib, threads=None):
    import torch
    if threads:
        torch.set_num_threads(threads)
    mode = job.split("-", 1)[1]
    t0 = time.perf_counter()
    snn = sj_convert(zoo_module(model_path, relu=True), calib.x, mode)
    outs = sj_run(snn, test.x, T_list, batch=PEER_BATCH)
    return {job: {"top1": {T: round(float((outs[T].argmax(1) == test.y).mean() * 100), 2) for T in T_list},
                  "seconds": round(time.perf_counter() - t0, 1)}}


def relu_top1(model_path, test):
    """Top-1 of the network SpikingJelly converts (clipped ReLUs replaced by ReLU)."""
    import torch
    ann = zoo_module(model_path, relu=True)
    with torch.no_grad():
        pred = np.concatenate([ann(torch.from_numpy(test.x[s:s + 1000])).argmax(1).numpy()
                               for s in range(0, len(test), 1000)])
    return float((pred == test.y).mean() * 100)


def _child_accuracy(args):
    job = args._job.split(":", 1)[1]
    _, test, calib = data(args._model, args._test or None)
    T_list = tuple(int(t) for t in args._T.split(","))
    fn = peer_accuracy if job.startswith("spikingjelly") else ours_accuracy
    print_result(fn(job, args._model, T_list, test, calib, threads=args._threads))


def accuracy_jobs(models, jobs, T_list, n_test, workers, timeout=None):
    """Run every (model, job) in its own process, ``workers`` at a time with
    ``cores // workers`` threads each (two one-thread processes get more out of two cores than
    one two-thread process: 1.3x here). The longest jobs start first."""
    threads = max(1, (os.cpu_count() or 2) // workers)
    order = {"refined": 0, "datta": 1, "datta-mean": 2, "fixed": 3}
    todo = sorted(((name, path, job) for name, path in models.items() for job in jobs),
                  key=lambda t: (order.get(t[2], 4), not t[0].startswith("deep")))
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        name, path, job = item
        t0 = time.perf_counter()
        # a failed job gives {"error": ...}: the others' results are kept
        r = run_job(__file__, f"acc:{job}", {"model": path, "T": ",".join(map(str, T_list)),
                                             "test": n_test or 0},
                    threads=threads, timeout=timeout)
        _log(f"  {name} {job}: {time.perf_counter() - t0:.0f} s " +
             (r["error"] if "error" in r else
              "; ".join(f"{k} " + ", ".join(f"T={T} {v:.2f}" for T, v in row["top1"].items())
                        for k, row in r.items())))
        return name, job, r

    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, todo))
    out = {name: {"onnx_snn": {}, "peers": {}} for name in models}
    for name, job, r in done:
        part = "peers" if job.startswith("spikingjelly") else "onnx_snn"
        if "error" in r:
            out[name][part][job] = r
            continue
        for label, row in r.items():
            row["top1"] = {int(T): v for T, v in row["top1"].items()}
            out[name][part][label] = row
    for name in models:  # table order
        out[name]["onnx_snn"] = {k: out[name]["onnx_snn"][k] for k in
                                 [*OURS, "fixed"] if k in out[name]["onnx_snn"]}
    return out, threads


def sj_convert(net_relu, calib_x, mode, batch=64):
    import torch
    from spikingjelly.activation_based.ann2snn import Converter
    from spikingjelly.activation_based.ann2snn.recipes import RateCodingRecipe
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(calib_x), torch.zeros(len(calib_x), dtype=torch.long)),
        batch_size=batch)
    return Converter(RateCodingRecipe(loader, mode=mode)).convert(net_relu).eval()


def sj_run(snn, x, T_list, batch=256):
    """Accumulated outputs of a single-step SpikingJelly model, read at every T in T_list."""
    import torch
    from spikingjelly.activation_based import functional
    outs = {T: [] for T in T_list}
    with torch.no_grad():
        for s in range(0, len(x), batch):
            functional.reset_net(snn)
            xb = torch.from_numpy(x[s:s + batch])
            acc = 0
            for t in range(1, max(T_list) + 1):
                acc = acc + snn(xb)
                if t in outs:
                    outs[t].append((acc / t).numpy())
    return {T: np.concatenate(v) for T, v in outs.items()}


# ------------------------------------------------------------------ conversion cost (subprocess)

def _child_convert(args):
    x = np.load(args._calib)
    t0 = time.perf_counter()
    if args._job in ("ours", "ours-refined"):
        import onnx_snn
        snn = onnx_snn.convert(args._model, x, timesteps=2,
                               method="refined" if args._job == "ours-refined" else "datta",
                               calib_samples=None, batch_size=64, show_progress=False,
                               reconstruct=0)   # the conversion alone, as SpikingJelly's
        with tempfile.TemporaryDirectory() as tmp:
            snn.save(os.path.join(tmp, "m.snn.onnx"))
    else:
        import torch
        mode = args._job.split("-", 1)[1]
        snn = sj_convert(zoo_module(args._model, relu=True), x, mode)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(snn, os.path.join(tmp, "m.pt"))
    print_result({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()})


def conversion_cost(model_path, calib, repeat=2, timeout=None):
    with tempfile.TemporaryDirectory() as tmp:
        cpath = os.path.join(tmp, "calib.npy")
        np.save(cpath, calib.x)
        out = {}
        for job in ("ours", "ours-refined", "spikingjelly-max"):
            runs = [run_job(__file__, job, {"model": model_path, "calib": cpath}, timeout=timeout)
                    for _ in range(1 if job == "ours-refined" else repeat)]
            good = [r for r in runs if "error" not in r]
            out[job] = min(good, key=lambda r: r["seconds"]) if good else runs[0]
    if "error" not in out["ours"] and "error" not in out["spikingjelly-max"]:
        out["time_ratio_spikingjelly_over_ours"] = round(out["spikingjelly-max"]["seconds"] / out["ours"]["seconds"], 2)
        out["memory_ratio_spikingjelly_over_ours"] = round(out["spikingjelly-max"]["peak_rss_mb"] / out["ours"]["peak_rss_mb"], 2)
    if "error" not in out["ours-refined"] and "error" not in out["spikingjelly-max"]:
        out["time_ratio_spikingjelly_over_ours_refined"] = round(out["spikingjelly-max"]["seconds"] / out["ours-refined"]["seconds"], 2)
    return out


# ------------------------------------------------------------------ throughput

def throughput(model_path, test, calib, n=2560, batch=256, T=2):
    import onnx_snn
    import torch
    from onnx_snn.runtimes.ort import ModelRunner
    x = test.x[:n]

    def timed(fns, rounds=5):
        """{name: the best images/s of ``rounds`` passes}, the passes of all ``fns`` taken in
        turn, round after round: a pass alone is noisy here, and this machine's speed drifts
        over a minute, which would favour whichever job ran in a fast stretch."""
        for fn in fns.values():
            fn(x[:batch])  # warm-up
        best = dict.fromkeys(fns, 0.0)
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for s in range(0, len(x), batch):
                    fn(x[s:s + batch])
                best[name] = max(best[name], len(x) / (time.perf_counter() - t0))
        return best

    dnn = ModelRunner(model_path)
    nm = onnx_snn.prepare(model_path)
    cal = onnx_snn.calibrate(nm, calib.x, show_progress=False)
    built = onnx_snn.build(nm, cal, T, "datta").model
    snn = ModelRunner(built)
    deployed = ModelRunner(onnx_snn.deploy(built))    # the inference-only graph of the same model
    unit = ModelRunner(onnx_snn.deploy(built, unit_thresholds=True))     # and its faster form
    nm_pf = onnx_snn.prepare(model_path, pool_first=True)   # the same DNN, pools moved first
    unit_pf = ModelRunner(onnx_snn.deploy(
        onnx_snn.build(nm_pf, onnx_snn.calibrate(nm_pf, calib.x, show_progress=False), T, "datta").model,
        unit_thresholds=True))
    sj = sj_convert(zoo_module(model_path, relu=True), calib.x, "max")
    from spikingjelly.activation_based import functional

    def sj_fn(xb):
        with torch.no_grad():
            functional.reset_net(sj)
            t = torch.from_numpy(xb)
            for _ in range(T):
                sj(t)

    r = timed({"dnn_onnxruntime": lambda b: dnn.run({"input": b}),
               "onnx_snn_onnxruntime": lambda b: snn.run({"input": b}),
               "onnx_snn_deploy_onnxruntime": lambda b: deployed.run({"input": b}),
               "onnx_snn_deploy_unit_onnxruntime": lambda b: unit.run({"input": b}),
               "onnx_snn_deploy_unit_pool_first_onnxruntime": lambda b: unit_pf.run({"input": b}),
               "spikingjelly_pytorch": sj_fn})
    r = {k: round(v, 1) for k, v in r.items()}
    r["onnx_snn_over_dnn"] = round(r["onnx_snn_onnxruntime"] / r["dnn_onnxruntime"], 3)
    r["deploy_over_dnn"] = round(r["onnx_snn_deploy_onnxruntime"] / r["dnn_onnxruntime"], 3)
    r["spikingjelly_over_dnn"] = round(r["spikingjelly_pytorch"] / r["dnn_onnxruntime"], 3)
    r["onnx_snn_over_spikingjelly"] = round(r["onnx_snn_onnxruntime"] / r["spikingjelly_pytorch"], 2)
    r["deploy_over_spikingjelly"] = round(r["onnx_snn_deploy_onnxruntime"] / r["spikingjelly_pytorch"], 2)
    r["deploy_unit_over_dnn"] = round(r["onnx_snn_deploy_unit_onnxruntime"] / r["dnn_onnxruntime"], 3)
    r["deploy_unit_over_spikingjelly"] = round(r["onnx_snn_deploy_unit_onnxruntime"] / r["spikingjelly_pytorch"], 2)
    r["deploy_unit_pool_first_over_dnn"] = round(
        r["onnx_snn_deploy_unit_pool_first_onnxruntime"] / r["dnn_onnxruntime"], 3)
    r["deploy_unit_pool_first_over_spikingjelly"] = round(
        r["onnx_snn_deploy_unit_pool_first_onnxruntime"] / r["spikingjelly_pytorch"], 2)
    r.update({"timesteps": T, "batch": batch, "images": n})
    return r


# ------------------------------------------------------------------ fine-tuning

def finetune_section(model_path, nm, test, calib, quick, train_images, timeout=None):
    import onnx_snn
    from onnx_snn.evaluate import evaluate
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    import bench_sgl
    cal = onnx_snn.calibrate(nm, calib.x, show_progress=False)
    out = {"epochs": 1, "limit_train": train_images, "top1": {}}
    limit_test = 2000 if quick else None
    with tempfile.TemporaryDirectory() as tmp:
        for T in (1, 2):
            src = os.path.join(tmp, f"T{T}.snn.onnx")
            snn = onnx_snn.build(nm, cal, T, "datta")
            snn.save(src)
            # the starting point in onnxruntime (the accuracy table's datta row)
            start = evaluate(snn.model, test, batch_size=EVAL_BATCH, limit=limit_test,
                             show_progress=False).top1
            r = finetune(src, os.path.join(tmp, f"T{T}.tuned.snn.onnx"), "fashion-mnist",
                         FinetuneConfig(epochs=1, limit_train=out["limit_train"],
                                        limit_test=limit_test, initial_eval=False, eval_batch=64),
                         show_progress=False, log=lambda *a: None)
            out["top1"][T] = {"conversion": round(start, 2), "after_1_epoch": r.epochs[-1].test_top1,
                              "teacher": os.path.basename(r.teacher) if r.teacher else None,
                              "epoch_seconds": round(r.seconds_per_epoch, 1)}
            _log(f"  fine-tuned T={T}: {start:.2f} -> {r.epochs[-1].test_top1:.2f}")
    args = argparse.Namespace(images=1600 if quick else 3200, batch=64)
    jobs = {"dnn": bench_sgl.sgl_job("dnn", args, timeout=timeout)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "T2.snn.onnx")
        onnx_snn.build(nm, cal, 2, "datta").save(path)
        jobs["onnx_snn_T2"] = bench_sgl.sgl_job("snn", args, model=path, T=2, timeout=timeout)
    jobs["spikingjelly_T2"] = bench_sgl.sgl_job("spikingjelly", args, T=2, timeout=timeout)
    for k in ("onnx_snn_T2", "spikingjelly_T2"):
        if "error" not in jobs[k] and "error" not in jobs["dnn"]:
            jobs[k]["epoch_time_vs_dnn"] = round(jobs[k]["seconds_per_epoch"] / jobs["dnn"]["seconds_per_epoch"], 2)
    if all("error" not in jobs[k] for k in ("onnx_snn_T2", "spikingjelly_T2")):
        jobs["spikingjelly_over_onnx_snn_epoch_time"] = round(
            jobs["spikingjelly_T2"]["seconds_per_epoch"] / jobs["onnx_snn_T2"]["seconds_per_epoch"], 2)
    out["sgl_epoch_cost"] = jobs
    out["sgl_images"] = args.images
    return out


# ------------------------------------------------------------------ report

def markdown(result) -> str:
    lines = [f"Benchmark run {result['environment']['date']} on {result['environment']['machine']} "
             f"({result['environment']['cpu']}); onnxruntime {result['environment']['onnxruntime']}, "
             f"torch {result['environment'].get('torch', '-')}, SpikingJelly {result.get('spikingjelly', '-')}; "
             f"{result['seconds']:.0f} s in all.", ""]
    first = next(iter(result["models"].values()), {}).get("accuracy")
    if first:
        lines += [f"Accuracy jobs: one process per (network, method), {first['workers']} at a time with "
                  f"{first['threads_per_worker']} thread(s) each; {first['seconds_all_models']:.0f} s "
                  "for all accuracy tables.", ""]
    for name, model in result["models"].items():
        acc = model.get("accuracy")
        if acc:
            T_list = acc["timesteps"]
            lines += [f"**{name}** ({model['path']}): DNN top-1 {acc['dnn_top1']:.2f}% on "
                      f"{acc['test_images']} test images; the ReLU version SpikingJelly converts: "
                      f"{acc.get('relu_top1', float('nan')):.2f}%.", ""]
            rows = []
            for label, row in {**acc["onnx_snn"], **acc.get("peers", {})}.items():
                who = label if label.startswith("spikingjelly") else f"onnx-snn {label}"
                if "error" in row:
                    rows.append([who, f"failed: {row['error'][:120]}"] + [""] * (len(T_list) - 1))
                    continue
                if row.get("same_parameters_as"):
                    who += f" (= {row['same_parameters_as']}'s parameters)"
                rows.append([who] + [f"{row['top1'][T]:.2f}" for T in T_list])
            lines += [format_table(["method"] + [f"T={T}" for T in T_list], rows, markdown=True), ""]
        conv = model.get("convert")
        if conv and "error" not in conv.get("ours", {}):
            o, s = conv["ours"], conv.get("spikingjelly-max", {})
            q = conv.get("ours-refined", {})
            lines += [f"Conversion ({name}, 512 calibration images, T=2): onnx-snn datta {o['seconds']:.1f} s, "
                      f"{o['peak_rss_mb']:.0f} MB peak; refined (the conversion alone) {q.get('seconds', float('nan')):.1f} s, "
                      f"{q.get('peak_rss_mb', float('nan')):.0f} MB; SpikingJelly {s.get('seconds', float('nan')):.1f} s, "
                      f"{s.get('peak_rss_mb', float('nan')):.0f} MB peak.", ""]
        thr = model.get("throughput")
        if thr:
            lines += [f"Inference at T={thr['timesteps']}, batch {thr['batch']} ({name}): DNN in onnxruntime "
                      f"{thr['dnn_onnxruntime']:.0f} img/s; onnx-snn in onnxruntime "
                      f"{thr['onnx_snn_onnxruntime']:.0f} img/s ({thr['onnx_snn_over_dnn']:.2f}x the DNN)"
                      + (f", its deploy graph {thr['onnx_snn_deploy_onnxruntime']:.0f} img/s "
                         f"({thr['deploy_over_dnn']:.2f}x)" if "deploy_over_dnn" in thr else "")
                      + (f", its `--unit-thresholds` deploy graph "
                         f"{thr['onnx_snn_deploy_unit_onnxruntime']:.0f} img/s ({thr['deploy_unit_over_dnn']:.2f}x)"
                         if "deploy_unit_over_dnn" in thr else "")
                      + f"; SpikingJelly in PyTorch {thr['spikingjelly_pytorch']:.0f} img/s "
                      f"({thr['spikingjelly_over_dnn']:.2f}x; onnx-snn {thr['onnx_snn_over_spikingjelly']:.2f}x "
                      + (f"and its deploy graph {thr['deploy_over_spikingjelly']:.2f}x "
                         if "deploy_over_spikingjelly" in thr else "")
                      + (f"(`--unit-thresholds` {thr['deploy_unit_over_spikingjelly']:.2f}x"
                         + (f", with `--pool-first` {thr['deploy_unit_pool_first_over_spikingjelly']:.2f}x"
                            f" = {thr['deploy_unit_pool_first_over_dnn']:.2f}x the DNN"
                            if "deploy_unit_pool_first_over_spikingjelly" in thr else "") + ") "
                         if "deploy_unit_over_spikingjelly" in thr else "")
                      + "SpikingJelly).", ""]
        ft = model.get("finetune")
        if ft:
            j = ft["sgl_epoch_cost"]
            images = f"{ft['limit_train']} training images" if ft.get("limit_train") else "60k images"
            lines += [f"Fine-tuning ({name}, 1 epoch on {images}): T=1 {ft['top1'][1]['conversion']:.2f} -> "
                      f"{ft['top1'][1]['after_1_epoch']:.2f}%, T=2 {ft['top1'][2]['conversion']:.2f} -> "
                      f"{ft['top1'][2]['after_1_epoch']:.2f}%. Training epoch (60k images, batch 64): DNN "
                      f"{j['dnn'].get('seconds_per_epoch', float('nan')):.0f} s, onnx-snn T=2 "
                      f"{j['onnx_snn_T2'].get('seconds_per_epoch', float('nan')):.0f} s, SpikingJelly T=2 "
                      f"{j['spikingjelly_T2'].get('seconds_per_epoch', float('nan')):.0f} s "
                      f"(extrapolated from {ft.get('sgl_images', 3200)} images).", ""]
    return "\n".join(lines)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shipped model only, 2000 test images, T=1,2,4")
    ap.add_argument("--deep", default=str(ROOT / "tools" / "models" / "fmnist_vgg16.onnx"),
                    help="the second, deeper network (skipped with a note when missing)")
    ap.add_argument("--sections", default="accuracy,convert,throughput,finetune")
    ap.add_argument("--test-images", type=int, help="evaluate on the first N test images only "
                    "(default: all 10,000; 2,000 with --quick)")
    ap.add_argument("-T", "--timesteps", type=int, nargs="+",
                    help=f"time steps for the accuracy tables (default: {' '.join(map(str, T_FULL))}; "
                         f"{' '.join(map(str, T_QUICK))} with --quick)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_JOBS), metavar="JOB",
                    help="accuracy jobs: refined, datta, datta-mean, fixed (deng, max, "
                         "percentile), spikingjelly-max, spikingjelly-99.9%% (default: all but "
                         "datta-mean)")
    ap.add_argument("--workers", type=int, default=2,
                    help="accuracy jobs run in parallel processes (default: 2, one thread each)")
    ap.add_argument("--finetune-images", type=int, default=8000,
                    help="training images for the fine-tuning epoch (default: 8000; 2000 "
                         "with --quick)")
    ap.add_argument("--job-timeout", type=float, metavar="SECONDS",
                    help="stop any one child-process job after this long; it is reported "
                         "as failed and the others are kept (default: no limit)")
    ap.add_argument("--json", help="write the JSON here")
    ap.add_argument("--markdown", help="write the Markdown report here")
    add_job_options(ap, model=str, calib=str, T=str, test=int)
    args = ap.parse_args(argv)
    if args._job:
        os.environ.setdefault("ONNX_SNN_PROGRESS", "0")
        (_child_accuracy if args._job.startswith("acc:") else _child_convert)(args)
        return 0
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    unknown = [j for j in args.methods if j not in (*OURS, "fixed", *PEER_JOBS) or j in FIXED]
    if unknown:
        ap.error(f"unknown accuracy job(s) {', '.join(unknown)}")
    os.environ.setdefault("ONNX_SNN_PROGRESS", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly calibrates with tqdm bars
    from onnx_snn.demo import shipped_model_path
    try:
        import spikingjelly
        sj_version = getattr(spikingjelly, "__version__", None)
        if sj_version is None:
            from importlib.metadata import version
            sj_version = version("spikingjelly")
    except ImportError:
        raise SystemExit("SpikingJelly is not installed: pip install spikingjelly")
    sections = set(args.sections.split(","))
    models = {"shipped fmnist_vgg": str(shipped_model_path())}
    notes = []
    if not args.quick:
        if Path(args.deep).is_file():
            models["deeper " + Path(args.deep).stem] = args.deep
        else:
            notes.append(f"{args.deep} not found: train it with tools/train_dnn.py (see --help)")
            _log("note: " + notes[-1])
    T_list = tuple(sorted(set(args.timesteps))) if args.timesteps else (T_QUICK if args.quick else T_FULL)
    n_test = args.test_images or (2000 if args.quick else None)
    t_start = time.perf_counter()
    result = {"benchmark": "onnx-snn vs SpikingJelly ann2snn", "quick": args.quick,
              "spikingjelly": sj_version, "notes": notes, "models": {}}
    if "accuracy" in sections:
        _log(f"accuracy: {len(models) * len(args.methods)} jobs, {args.workers} at a time")
        t_acc = time.perf_counter()
        tables, threads = accuracy_jobs(models, args.methods, T_list, n_test, args.workers,
                                        args.job_timeout)
        acc_seconds = round(time.perf_counter() - t_acc, 1)
    for name, path in models.items():
        _log(f"{name}: {path}")
        nm, test, calib = data(path, n_test)
        entry = {"path": os.path.relpath(path, ROOT)}
        if "accuracy" in sections:
            import onnx_snn
            dnn = onnx_snn.evaluate(path, test, show_progress=False)
            entry["accuracy"] = {"timesteps": list(T_list), "test_images": len(test),
                                 "dnn_top1": dnn.top1, "relu_top1": relu_top1(path, test),
                                 **tables[name], "workers": args.workers,
                                 "threads_per_worker": threads,
                                 "seconds_all_models": acc_seconds}
        if "convert" in sections:
            entry["convert"] = conversion_cost(path, calib, timeout=args.job_timeout)
            _log(f"  conversion: {entry['convert']}")
        if "throughput" in sections:
            entry["throughput"] = throughput(path, test, calib, n=1024 if args.quick else 2560)
            _log(f"  throughput: {entry['throughput']}")
        if "finetune" in sections and name.startswith("shipped"):
            entry["finetune"] = finetune_section(path, nm, test, calib, args.quick,
                                                 2000 if args.quick else args.finetune_images,
                                                 args.job_timeout)
        result["models"][name] = entry
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    emit(result, args.json)
    md = markdown(result)
    _log("\n" + md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
