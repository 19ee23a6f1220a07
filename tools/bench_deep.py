#!/usr/bin/env python3
"""Benchmark: deep networks at 1-4 time steps, on real Fashion-MNIST; prints JSON (and a
Markdown table with ``--markdown``).

    python tools/bench_deep.py                       # about 18-25 min on 2 cores
    python tools/bench_deep.py --quick               # 2 000 test images, 4 000 for SGL
    python tools/bench_deep.py --no-finetune --parallel 1 --methods refined-no-bias-no-weights,refined-per-layer-no-bias,refined-per-layer-no-bias-no-weights,refined-no-bias,refined
                                                     # the ablation of docs/FORMAT.md
    python tools/bench_deep.py --no-finetune --methods refined-2048
                                                     # the default on 2 048 calibration images
    python tools/bench_deep.py --no-finetune -T 2 --methods refined-seed1,refined-seed2,refined-seed3
                                                     # the default with other sampled neurons
    python tools/bench_deep.py --finetune-only --finetune-lr 1e-4
                                                     # the SGL epoch at another learning rate
    python tools/bench_deep.py --finetune-only --finetune-batch 128
                                                     # ... at another batch size
    python tools/bench_deep.py --finetune-only --finetune-loss per-step
                                                     # ... on each step's loss (TET)
    python tools/bench_deep.py --nets vgg16-l2,resnet20-l2 --methods refined,datta,deng
                                                     # the two nets trained on with --levels 2
    python tools/bench_deep.py --no-finetune --nets vgg16-qcfs,resnet20-qcfs --methods refined,deng
                                                     # ... exported with their rounding (QCFS)
    python tools/bench_deep.py --no-finetune --methods refined,refined-pool-first
                                                     # convert --pool-first against the default
    python tools/bench_deep.py --no-finetune --methods refined-signed,deng-signed
                                                     # convert --signed-spikes
    python tools/bench_deep.py --no-finetune -T 1,2,4 --methods default
                                                     # the default: reconstructed within its budget
    python tools/bench_deep.py --no-finetune -T 1,2,4 --methods refined-reconstruct
                                                     # convert --reconstruct (needs PyTorch)
    python tools/bench_deep.py --finetune-only --nets vgg16,resnet20 --finetune-reconstruct 30
                                                     # the SGL epoch from that conversion
    python tools/bench_deep.py --no-finetune -T 1,2,4 --methods refined-fixed-ridge,refined-fixed-ridge-seed1,refined-seed1
                                                     # one ridge for every layer (before 2026-12-04)

For each network (the shipped 4-conv VGG, the paper's VGG-16 and ResNet-20 at a quarter of
their widths, trained with tools/train_dnn.py, shipped in tools/models/):

* the DNN's top-1 on the test images;
* conversion-only top-1 at T = 1, 2, 4 for the default (``refined``, then reconstructed for
  as many epochs as its budget gives: onnx_snn/auto_reconstruct.py), ``refined`` alone,
  ``datta`` (the paper's Algorithm 1 alone), ``deng`` and ``max``, 512 calibration training
  images, in onnxruntime;
* one epoch of SGL fine-tuning at T=2 (the default recipe) from the default conversion
  (``--finetune-teacher``: distilled from the DNN, ``onnx-snn finetune --teacher auto``);
* the default conversion's seconds and peak memory (end to end, 512 images, T=2).

Every job runs in a fresh process (``tools/_jobs.py``), two at a time with one thread each;
a failing job keeps the others. The figures in README come from this command.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

# siblings in tools/, which `python tools/bench_deep.py` puts first on sys.path
from _bench_common import CALIBRATION_IMAGES, calibration_set, emit, peak_rss_mb
from _jobs import add_job_options, print_result, run_job

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "shipped": ROOT / "onnx_snn" / "models" / "fmnist_vgg.onnx",
    "vgg16": ROOT / "tools" / "models" / "fmnist_vgg16.onnx",
    "resnet20": ROOT / "tools" / "models" / "fmnist_resnet20.onnx",
    # the same two after 10 more epochs with activations rounded to 3 levels
    # (train_dnn.py --levels 2 --init-from ...): opt-in, --nets vgg16-l2,resnet20-l2
    "vgg16-l2": ROOT / "tools" / "models" / "fmnist_vgg16_l2.onnx",
    "resnet20-l2": ROOT / "tools" / "models" / "fmnist_resnet20_l2.onnx",
    # those two exported with the rounding written out, as a QCFS-trained network's export
    # holds it (Floor); made from them by the zoo at the start of a run that asks for them
    "vgg16-qcfs": ROOT / "runs" / "bench_deep" / "fmnist_vgg16_qcfs.onnx",
    "resnet20-qcfs": ROOT / "runs" / "bench_deep" / "fmnist_resnet20_qcfs.onnx",
}
#: the QCFS-form nets and the model each is exported from
QCFS_FROM = {"vgg16-qcfs": "vgg16-l2", "resnet20-qcfs": "resnet20-l2"}
#: what a plain run benchmarks
DEFAULT_NETS = ("shipped", "vgg16", "resnet20")
DESCRIPTION = {
    "shipped": "shipped fmnist_vgg (4 conv + 2 FC)",
    "vgg16": "VGG-16, 13 conv + 3 FC, quarter width (16-128 channels)",
    "resnet20": "ResNet-20 (the paper's: 3-conv stem, 8 basic blocks), quarter width (16-128)",
    "vgg16-l2": "VGG-16, trained 10 more epochs with activations rounded to 3 levels",
    "resnet20-l2": "ResNet-20, trained 10 more epochs with activations rounded to 3 levels",
    "vgg16-qcfs": "vgg16-l2 exported with its rounding (QCFS's Floor form; the DNN is rounded)",
    "resnet20-qcfs": "resnet20-l2 exported with its rounding (QCFS's Floor form)",
}
METHODS = ("default", "refined", "datta", "deng", "max")
#: the ablation of the refined method (``--methods ...``): name -> (method, SearchConfig fields)
VARIANTS = {
    # convert's default: refined, then reconstructed as far as the budget goes
    # (onnx_snn/auto_reconstruct.py; PyTorch is installed here)
    "default": ("refined", {}),
    "refined": ("refined", {}),
    "refined-no-weights": ("refined", {"weight_calibration": False}),
    "refined-per-layer": ("refined", {"per_channel": False}),
    "refined-per-layer-no-weights": ("refined", {"per_channel": False, "weight_calibration": False}),
    # the parts of the default switched off one by one (the ablation of docs/FORMAT.md,
    # measured before the bias correction joined the default, when it was "refined+bias")
    "refined-no-bias": ("refined", {"bias_correction": False}),
    "refined-no-bias-no-weights": ("refined", {"bias_correction": False,
                                               "weight_calibration": False}),
    "refined-per-layer-no-bias": ("refined", {"per_channel": False, "bias_correction": False}),
    "refined-per-layer-no-bias-no-weights": ("refined", {"per_channel": False,
                                                         "bias_correction": False,
                                                         "weight_calibration": False}),
    "datta": ("datta", {}), "deng": ("deng", {}), "max": ("max", {}),
    "percentile": ("percentile", {}),
}
#: variants calibrated on more than the benchmarks' 512 training images (--calib-samples N)
CALIB_IMAGES = {"refined-2048": 2048, "refined-2048-seed1": 2048,
                "refined-1024": 1024, "refined-1024-seed1": 1024}
VARIANTS.update({name: ("refined", {}) for name in CALIB_IMAGES})
#: the default with another seed for the refinement's sampled neurons (the same calibration
#: images): the spread over seeds is the noise in every figure of the default
SEEDS = {f"refined-seed{k}": k for k in (1, 2, 3)}
SEEDS.update({"refined-2048-seed1": 1, "refined-1024-seed1": 1})
VARIANTS.update({name: ("refined", {}) for name in SEEDS})
#: the default until 2026-12-04: the weight calibration's ridge toward zero (now toward the
#: layer's own weights), and at T = 1 fitted to h (now min(h, mu)), seeds 0 and 1
VARIANTS["refined-ridge-to-zero"] = ("refined", {"weight_ridge_to_original": False,
                                                 "one_step_ceiling": False})
VARIANTS["refined-ridge-to-zero-seed1"] = ("refined", {"weight_ridge_to_original": False,
                                                       "one_step_ceiling": False})
SEEDS["refined-ridge-to-zero-seed1"] = 1
#: the weight calibration at T = 1 fitted to h, not min(h, mu), where a layer feeds a site
#: alone (the default until 2026-12-04), seeds 0-2
NO_CEILING = {"refined-no-ceiling": 0, "refined-no-ceiling-seed1": 1, "refined-no-ceiling-seed2": 2}
VARIANTS.update({name: ("refined", {"one_step_ceiling": False}) for name in NO_CEILING})
SEEDS.update({name: k for name, k in NO_CEILING.items() if k})
#: the default with every max pool that reads an activation moved ahead of it (``convert
#: --pool-first``), at seed 0 and seeds 1-3
POOL_FIRST = {"refined-pool-first": 0, **{f"refined-pool-first-seed{k}": k for k in (1, 2, 3)}}
VARIANTS.update({name: ("refined", {}) for name in POOL_FIRST})
#: signed neurons (``convert --signed-spikes``): the default at seeds 0-3, and deng's
#: parameters (threshold mu, membrane mu/2: the rounding a net trained with --levels T learnt)
SIGNED = {"refined-signed": 0, **{f"refined-signed-seed{k}": k for k in (1, 2, 3)}}
VARIANTS.update({name: ("refined", {"signed_spikes": True}) for name in SIGNED})
VARIANTS["deng-signed"] = ("deng", {"signed_spikes": True})
#: the per-channel search coarse to fine (``convert --search-stride 4``), seeds 0-3
STRIDE4 = {"refined-stride4": 0, **{f"refined-stride4-seed{k}": k for k in (1, 2, 3)}}
VARIANTS.update({name: ("refined", {"search_stride": 4}) for name in STRIDE4})
#: every percentile at any T (the default's search above T = 4 until 2026-12-06; at T <= 4 the
#: default is this)
VARIANTS["refined-stride1"] = ("refined", {"search_stride": 1})
#: one ridge other than 0.01 for every layer (docs/FORMAT.md, tried and dropped before the
#: ridge was chosen per layer)
RIDGES = {f"refined-ridge{r:g}": r for r in (0.001, 0.003, 0.03)}
VARIANTS.update({name: ("refined", {"weight_ridge": r, "weight_ridge_grid": None})
                 for name, r in RIDGES.items()})

#: the weight calibration fitted to max(h, -floor * mu) where a layer feeds a site alone
FLOORS = {f"refined-floor{f:g}": f for f in (0.0, 0.25, 1.0)}
VARIANTS.update({name: ("refined", {"weight_target_floor": f}) for name, f in FLOORS.items()})

#: one ridge for every layer (weight_ridge 0.01), the default until 2026-12-04
VARIANTS["refined-fixed-ridge"] = ("refined", {"weight_ridge_grid": None})
VARIANTS["refined-fixed-ridge-seed1"] = ("refined", {"weight_ridge_grid": None})
SEEDS["refined-fixed-ridge-seed1"] = 1
#: the weight calibration's verdict from every fifth calibration batch (the default until
#: 2026-12-03; now every second), seeds 0-3
HOLDOUT5 = {"refined-holdout5": 0, **{f"refined-holdout5-seed{k}": k for k in (1, 2, 3)}}
VARIANTS.update({name: ("refined", {"weight_holdout": 5}) for name in HOLDOUT5})
#: the default calibrated and refined in batches of another size than 64 (a memory setting:
#: since 2026-12-05 the conversion should not depend on it; at 512 the whole set is one batch)
BATCHES = {f"refined-batch{b}": b for b in (32, 128, 512)}
VARIANTS.update({name: ("refined", {}) for name in BATCHES})
#: the default calibrated on another draw of the 512 (or 1024) training images (the other
#: variants all use draw 0): how much the choice of images moves a conversion
DRAWS = {f"refined-draw{k}": k for k in (1, 2, 3)}
DRAWS.update({f"refined-1024-draw{k}": k for k in (1, 2)})
CALIB_IMAGES.update({f"refined-1024-draw{k}": 1024 for k in (1, 2)})
VARIANTS.update({name: ("refined", {}) for name in DRAWS})
#: the default, then reconstructed (``convert --reconstruct E``): name -> (epochs, seed of the
#: refinement and of the reconstruction's shuffles); "-2048": on 2048 calibration images
RECONSTRUCT = {"refined-reconstruct": (30, 0), "refined-reconstruct-seed1": (30, 1),
               "refined-reconstruct-seed2": (30, 2), "refined-reconstruct-2048": (8, 0),
               "refined-reconstruct10": (10, 0), "refined-signed-reconstruct": (30, 0),
               "refined-signed-reconstruct-seed1": (30, 1)}
VARIANTS.update({name: ("refined", {"signed_spikes": "signed" in name}) for name in RECONSTRUCT})
SEEDS.update({name: k for name, (_, k) in RECONSTRUCT.items() if k})
CALIB_IMAGES["refined-reconstruct-2048"] = 2048
#: convert's default at ``--seed`` k: the calibration draw, the refinement's sampled neurons
#: and the reconstruction's images all k (the reconstruction's shuffles stay 0, as convert's);
#: "-signed": with ``--signed-spikes``
DEFAULTS = {"default": 0, "default-seed1": 1, "default-seed2": 2,
            "default-signed": 0, "default-signed-seed1": 1}
VARIANTS.update({name: ("refined", {"signed_spikes": "signed" in name}) for name in DEFAULTS})
DRAWS.update({name: k for name, k in DEFAULTS.items() if k})
SEEDS.update({name: k for name, k in DEFAULTS.items() if k})
#: methods whose parameters do not depend on T: one run at the largest T gives every shorter one
T_FREE = ("deng", "max")


def _test_set(nm, n):
    from onnx_snn.convert import resolve_data
    return resolve_data("fashion-mnist", nm.preprocess, split="test").take(n)


# ------------------------------------------------------------------ the jobs (child side)

def job_accuracy(net: str, method: str, Ts, test_images: int) -> dict:
    import onnx_snn
    from onnx_snn.evaluate import evaluate, evaluate_prefixes
    nm = onnx_snn.prepare(str(NETS[net]), pool_first=method in POOL_FIRST)
    test = _test_set(nm, test_images)
    n_cal = CALIB_IMAGES.get(method, CALIBRATION_IMAGES)
    calib_x = calibration_set(nm, n_cal, DRAWS.get(method, 0)).x
    if method in DEFAULTS:           # convert's: it may train on more of the training set
        from onnx_snn.convert import resolve_data
        train = resolve_data("fashion-mnist", nm.preprocess, split="train")
    cal = onnx_snn.calibrate(nm, calib_x, show_progress=False,
                             **({"batch_size": BATCHES[method]} if method in BATCHES else {}),
                             **({"seed": DEFAULTS[method]} if method in DEFAULTS else {}))
    out = {"net": net, "method": method, "top1": {}, "convert_seconds": {},
           "calibration_images": n_cal}
    if method == "dnn":
        out["top1"] = evaluate(str(NETS[net]), test, show_progress=False).top1
        return out
    from onnx_snn.scales import SearchConfig
    base, options = VARIANTS[method]
    cfg = SearchConfig(**options)
    if base in T_FREE:
        snn = onnx_snn.build(nm, cal, max(Ts), base, cfg)
        res = evaluate_prefixes(snn.model, test, Ts, show_progress=False)
        out["top1"] = {str(t): r.top1 for t, r in res.items()}
        return out
    for T in Ts:
        t0 = time.perf_counter()
        seed = {**SEEDS, **POOL_FIRST, **SIGNED, **STRIDE4, **HOLDOUT5}.get(method, 0)
        snn = onnx_snn.build(nm, cal, T, base, cfg, seed=seed)
        from onnx_snn.runtimes.torch.reconstruct import ReconstructConfig, reconstruct
        epochs, k = RECONSTRUCT.get(method) or (0, 0)
        rcfg, train_x = (ReconstructConfig(epochs=epochs, seed=k) if epochs else None), calib_x
        held_x = None
        if method in DEFAULTS:       # (its budget may give none: the refinement alone)
            rcfg, train_x, held_x = _default_reconstruction(nm, train, calib_x, T,
                                                            DEFAULTS[method])
        if rcfg is not None:
            t1 = time.perf_counter()
            rec = reconstruct(snn, nm.model, train_x, rcfg, show_progress=False,
                              measure_rows=n_cal, held_out=held_x, guard=held_x is not None)
            out.setdefault("reconstruct_seconds", {})[str(T)] = time.perf_counter() - t1
            out.setdefault("reconstruction", {})[str(T)] = {
                k2: rec[k2] for k2 in ("kept", "before", "after", "epochs", "images", "held_out")
                if k2 in rec}
        out["convert_seconds"][str(T)] = time.perf_counter() - t0
        out["top1"][str(T)] = evaluate(snn.model, test, show_progress=False).top1
    return out


def _default_reconstruction(nm, train, calib_x, T, seed: int = 0):
    """(ReconstructConfig or None, its images, the held-out images or None) of convert's
    default (``--seed``) for ``nm`` calibrated on ``calib_x`` (draw ``seed`` of ``train``,
    the training set) at ``T``: its budget's epochs, on the calibration images and as many
    more of the training set as the budget affords, checked on others held out."""
    from onnx_snn import auto_reconstruct as ar
    from onnx_snn.convert import auto_config
    n = len(next(iter(calib_x.values()))) if isinstance(calib_x, dict) else len(calib_x)
    p = ar.plan_for_data("refined", T, nm.model, calib_x, have_torch=True, available=len(train))
    if not p.epochs:                       # (the refinement alone: nothing to train or check)
        return None, calib_x, None
    rows, held = ar.reconstruction_rows(len(train), train.rows(n, seed), p.images, seed,
                                        ar.sample_bytes(train.x))
    return (auto_config(p), calib_x if rows is None else ar.rows_of(train.x, rows),
            None if held is None else ar.rows_of(train.x, held))


def job_cost(net: str) -> dict:
    """The default conversion end to end, as `onnx-snn convert` runs it (reconstructed where
    PyTorch is installed, unless $ONNX_SNN_RECONSTRUCT=0: the refinement alone)."""
    import onnx_snn
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        snn = onnx_snn.convert(str(NETS[net]), "fashion-mnist", timesteps=2, show_progress=False)
        snn.save(os.path.join(tmp, "m.snn.onnx"))
    return {"net": net, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "calibration_seconds": snn.report["calibration"]["seconds"],
            "refinement_seconds": snn.report.get("sequential", {}).get("seconds"),
            # (None where the default did not reconstruct: $ONNX_SNN_RECONSTRUCT=0, no PyTorch)
            "reconstruction_seconds": snn.report.get("reconstruction", {}).get("seconds")}


def job_finetune(net: str, images: int, test_images: int, epochs: int,
                 lr: Optional[float] = None, teacher: bool = False, signed: bool = False,
                 batch: Optional[int] = None, initial: bool = False,
                 loss: str = "mean", schedule: Optional[str] = None,
                 dropout: bool = True, reconstruct: int = 0) -> dict:
    import onnx_snn
    from onnx_snn.evaluate import evaluate
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    nm = onnx_snn.prepare(str(NETS[net]))
    test = _test_set(nm, test_images)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "m.snn.onnx"), os.path.join(tmp, "m.tuned.snn.onnx")
        snn = onnx_snn.convert(str(NETS[net]), "fashion-mnist", timesteps=2, show_progress=False,
                               signed_spikes=signed, reconstruct=reconstruct or "auto")
        snn.save(src)
        before = evaluate(src, test, show_progress=False).top1
        cfg = FinetuneConfig(epochs=epochs, limit_train=images, limit_test=test_images,
                             **({} if lr is None else {"lr": lr}),
                             **({} if batch is None else {"batch_size": batch}),
                             **({"teacher": "auto"} if teacher else {}),
                             train_initial=initial, initial_eval=False, loss=loss,
                             dropout=dropout,
                             **({} if schedule is None else {"schedule": schedule}))
        t0 = time.perf_counter()
        r = finetune(src, out, "fashion-mnist", cfg, show_progress=False, log=lambda *a: None)
        seconds = time.perf_counter() - t0
        after = evaluate(out, test, show_progress=False).top1
    return {"net": net, "timesteps": 2, "epochs": epochs, "train_images": images, "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "signed_spikes": signed, "train_initial": initial, "loss": loss, "dropout": dropout,
            "schedule": cfg.schedule, "reconstruct_epochs": reconstruct,
            "teacher": os.path.basename(r.teacher) if r.teacher else None,   # None: labels
            "top1_before": before, "top1_after": after, "top1_torch": r.best_top1,
            "seconds": seconds, "seconds_per_epoch": r.seconds_per_epoch}


# ------------------------------------------------------------------ the parent

def _table(result: dict) -> str:
    from onnx_snn.table import format_table
    Ts = result["timesteps"]
    lines = []
    for net, r in result["nets"].items():
        dnn = r.get("dnn")
        lines.append(f"**{DESCRIPTION[net]}**: DNN top-1 "
                     + (f"{dnn:.2f} %" if isinstance(dnn, float) else "?")
                     + f" ({result['test_images']} test images)\n")
        rows = []
        for m in result["methods"]:
            acc = r["accuracy"].get(m, {})
            label = {"default": "default (refined, reconstructed)", "refined": "refined alone",
                     "datta": "datta (Algorithm 1)"}.get(m, m)
            rows.append([label] + [f"{acc[str(t)]:.2f}" if str(t) in acc else "failed" for t in Ts])
        if rows:
            lines.append(format_table(["method"] + [f"T={t}" for t in Ts], rows, markdown=True))
        ft, cost = r.get("finetune", {}), r.get("cost", {})
        if "top1_after" in ft:
            lines.append(f"\nSGL at T=2, {ft['epochs']} epoch on {ft['train_images']} training "
                         + (f"images, lr {ft['lr']:g}" if "lr" in ft else "images")
                         + (f", batch {ft['batch_size']}" if "batch_size" in ft else "")
                         + (f", distilled from {ft['teacher']}" if ft.get("teacher") else
                            ", labels only" if "teacher" in ft else "")
                         + (", signed neurons" if ft.get("signed_spikes") else "")
                         + (", initial membranes trained" if ft.get("train_initial") else "")
                         + (", without dropout" if ft.get("dropout") is False else "")
                         + (f", {ft['loss']} loss" if ft.get("loss", "mean") != "mean" else "")
                         + (f", {ft['schedule']} lr schedule" if "schedule" in ft else "")
                         + ": "
                         f"{ft['top1_before']:.2f} -> **{ft['top1_after']:.2f}** "
                         f"({ft['seconds']:.0f} s)")
        if "seconds" in cost:
            parts = [f"{what} {cost[k]:.1f} s" for what, k in
                     (("refined in", "refinement_seconds"),
                      ("reconstructed in", "reconstruction_seconds")) if cost.get(k) is not None]
            lines.append(f"\nDefault conversion, 512 images, T=2: {cost['seconds']:.1f} s end to "
                         f"end, {cost['peak_rss_mb']:.0f} MB peak"
                         + (f" ({', '.join(parts)})" if parts else "")
                         + ("" if cost.get("reconstruction_seconds") is not None
                            else ", not reconstructed"))
        lines.append("")
    return "\n".join(lines)


def export_qcfs(src: Path, dst: Path) -> None:
    """Write ``src`` (a zoo network trained with --levels) to ``dst`` with its rounding
    written out in QCFS's form (``zoo.export_onnx(keep_levels=True)``), its metadata kept."""
    import json

    import onnx
    from onnx_snn import zoo
    m = onnx.load(str(src))
    meta = {p.key: p.value for p in m.metadata_props}
    levels = json.loads(meta["onnx_snn.recipe"])["levels"]
    shape = json.loads(meta["onnx_snn.input_shape"])
    net = zoo.build(meta["onnx_snn.arch"], int(meta.get("onnx_snn.num_classes", 10)), shape[0],
                    input_size=shape[-1])
    own = net.state_dict()
    state = zoo.onnx_parameters(m)
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items() if k in own}})
    for act, mu in zip(zoo.clipped_relus(net), json.loads(meta["onnx_snn.mu"])):
        act.mu.data.fill_(float(mu))
    zoo.set_levels(net, levels)
    dst.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in meta.items() if k not in ("onnx_snn.mu", "onnx_snn.input_shape")}
    zoo.export_onnx(net.eval(), dst, shape, metadata={**keep, "onnx_snn.levels": levels},
                    keep_levels=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join(DEFAULT_NETS),
                   help="comma-separated, from: " + ", ".join(NETS))
    p.add_argument("--methods", help="comma-separated, from: " + ", ".join(VARIANTS)
                   + f" (default: {','.join(METHODS)})")
    p.add_argument("-T", "--timesteps", default="1,2,4", help="comma-separated T (default 1,2,4)")
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--finetune-images", type=int, default=60000,
                   help="training images for the SGL epoch (default: all 60 000)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float,
                   help="the SGL epoch's learning rate (default: onnx-snn finetune's)")
    p.add_argument("--finetune-batch", type=int,
                   help="the SGL epoch's batch size (default: onnx-snn finetune's)")
    p.add_argument("--finetune-teacher", action="store_true",
                   help="the SGL epoch distilled from the DNN (finetune --teacher auto), not on "
                        "the labels")
    p.add_argument("--finetune-signed", action="store_true",
                   help="the SGL epoch from the conversion with signed neurons "
                        "(convert --signed-spikes), not the default's")
    p.add_argument("--finetune-reconstruct", type=int, default=0, metavar="EPOCHS",
                   help="the SGL epoch from the conversion reconstructed for EPOCHS epochs "
                        "(convert --reconstruct EPOCHS), not the default's (0: the default's)")
    p.add_argument("--finetune-no-dropout", action="store_true",
                   help="fine-tune without the source DNN's dropout (finetune --no-dropout)")
    p.add_argument("--finetune-initial", action="store_true",
                   help="the SGL epoch trains the neurons' initial membranes too "
                        "(finetune --train-initial)")
    from onnx_snn.cli import FINETUNE_LOSSES     # (finetune's LOSSES, read without torch)
    p.add_argument("--finetune-loss", choices=FINETUNE_LOSSES, default=FINETUNE_LOSSES[0],
                   help="the SGL epoch's loss (finetune --loss; default: mean)")
    from onnx_snn.cli import FINETUNE_SCHEDULES
    p.add_argument("--finetune-schedule", choices=FINETUNE_SCHEDULES,
                   help="the SGL epoch's learning-rate schedule (finetune --schedule; default: "
                        "finetune's)")
    p.add_argument("--no-finetune", action="store_true")
    p.add_argument("--finetune-only", action="store_true",
                   help="only the SGL epoch (and the DNN's top-1), no conversion table or cost")
    p.add_argument("--quick", action="store_true",
                   help="2 000 test images, SGL on 4 000 training images")
    p.add_argument("--parallel", type=int, default=2, help="jobs at a time (default 2)")
    p.add_argument("--job-timeout", type=float, default=3600)
    p.add_argument("--json", help="also write the JSON here")
    p.add_argument("--markdown", help="also write the Markdown tables here")
    add_job_options(p, net=str, method=str, ts=str, n=int, images=int, epochs=int, lr=float, batch=int,
                    teacher=int, signed=int, initial=int, loss=str, schedule=str, nodrop=int,
                    recon=int)
    args = p.parse_args(argv)
    if args._job:
        if args._threads:
            import onnxruntime  # noqa: F401
            os.environ["OMP_NUM_THREADS"] = str(args._threads)
            try:
                import torch
                torch.set_num_threads(args._threads)
            except ImportError:
                pass
        Ts = [int(t) for t in (args._ts or "2").split(",")]
        if args._job == "accuracy":
            print_result(job_accuracy(args._net, args._method, Ts, args._n))
        elif args._job == "cost":
            print_result(job_cost(args._net))
        elif args._job == "finetune":
            print_result(job_finetune(args._net, args._images, args._n, args._epochs, args._lr,
                                      bool(args._teacher), bool(args._signed), args._batch,
                                      bool(args._initial), args._loss or "mean", args._schedule,
                                      not args._nodrop, args._recon or 0))
        return 0

    if args.no_finetune and (args.finetune_only or args.finetune_teacher or args.finetune_signed
                             or args.finetune_initial):
        p.error("--no-finetune excludes --finetune-only, --finetune-teacher, --finetune-signed "
                "and --finetune-initial")
    if args.finetune_only and args.methods:
        p.error("--finetune-only runs no conversion table: drop --methods")
    if args.finetune_lr is not None and not args.finetune_lr > 0:
        p.error(f"--finetune-lr must be positive, not {args.finetune_lr}")
    if args.finetune_batch is not None and not args.finetune_batch > 0:
        p.error(f"--finetune-batch must be positive, not {args.finetune_batch}")
    if args.methods is None:
        args.methods = "" if args.finetune_only else ",".join(METHODS)
    if args.quick:
        args.test_images, args.finetune_images = 2000, 4000
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        p.error(f"unknown net(s) {unknown}; choose from {list(NETS)}")
    for n in nets:
        if n in QCFS_FROM and NETS[QCFS_FROM[n]].is_file():
            export_qcfs(NETS[QCFS_FROM[n]], NETS[n])
    missing = [str(NETS[n]) for n in nets if not NETS[n].is_file()]
    if missing:
        p.error(f"missing model file(s) {missing}; train them with tools/train_dnn.py (README)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in VARIANTS for m in methods):
        p.error(f"unknown method(s) {[m for m in methods if m not in VARIANTS]}; "
                f"choose from {list(VARIANTS)}")
    Ts = sorted({int(t) for t in args.timesteps.split(",")})
    t0 = time.perf_counter()
    jobs = []
    for net in nets:
        jobs.append((net, "dnn", "accuracy", {"net": net, "method": "dnn", "ts": "1",
                                              "n": args.test_images}))
        for m in methods:
            jobs.append((net, m, "accuracy", {"net": net, "method": m,
                                              "ts": ",".join(map(str, Ts)), "n": args.test_images}))
    # the long fine-tuning jobs first, so that the pool stays busy
    tune = [] if args.no_finetune else [
        (net, "finetune", "finetune", {"net": net, "images": args.finetune_images,
                                       "n": args.test_images, "epochs": args.finetune_epochs,
                                       **({} if args.finetune_lr is None else {"lr": args.finetune_lr}),
                                       **({} if args.finetune_batch is None else
                                          {"batch": args.finetune_batch}),
                                       **({"teacher": 1} if args.finetune_teacher else {}),
                                       **({"signed": 1} if args.finetune_signed else {}),
                                       **({"initial": 1} if args.finetune_initial else {}),
                                       **({"nodrop": 1} if args.finetune_no_dropout else {}),
                                       **({"recon": args.finetune_reconstruct}
                                          if args.finetune_reconstruct else {}),
                                       **({"loss": args.finetune_loss}
                                          if args.finetune_loss != "mean" else {}),
                                       **({"schedule": args.finetune_schedule}
                                          if args.finetune_schedule else {})})
        for net in nets]
    results = {net: {"accuracy": {}} for net in nets}

    def run(job):
        net, what, kind, opts = job
        started = time.perf_counter()
        r = run_job(__file__, kind, opts, threads=1, timeout=args.job_timeout)
        r["job_seconds"] = time.perf_counter() - started
        print(f"bench_deep: {net} {what}: " + (r.get("error") or "done")
              + f" ({r['job_seconds']:.0f} s)", file=sys.stderr, flush=True)
        return job, r

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for (net, what, kind, _), r in pool.map(run, tune + jobs):
            if kind == "finetune":
                results[net]["finetune"] = r
            elif what == "dnn":
                results[net]["dnn"] = r.get("top1", r.get("error"))
            else:
                results[net]["accuracy"][what] = r.get("top1", {}) if "error" not in r else {}
                if "error" in r:
                    results[net].setdefault("errors", {})[what] = r["error"]
                elif r.get("convert_seconds"):
                    results[net].setdefault("build_seconds", {})[what] = r["convert_seconds"]
    for net in [] if args.finetune_only else nets:   # alone: the conversion's own time and memory
        results[net]["cost"] = run((net, "cost", "cost", {"net": net}))[1]
    result = {"benchmark": "bench_deep", "command": "python tools/bench_deep.py "
              + " ".join(sys.argv[1:] if argv is None else argv),
              "seconds": time.perf_counter() - t0, "test_images": args.test_images,
              "timesteps": Ts if methods else [], "methods": methods, "nets": results}
    table = _table(result)
    print(table, file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
