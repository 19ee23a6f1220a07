"""The prepared GPU check of issue 14: spiking inference and SGL fine-tuning on a CUDA device
against the DNN (and SpikingJelly), in one run; prints JSON.

    python tools/bench_gpu.py [--device cuda] [--batch 256] [-T 2] [--sgl-images 12800]
    bash tools/gpu_check.sh          # on a lent GPU machine (installs carried wheels, then this)

Inference, for the shipped model and the trained quarter-width VGG-16 and ResNet-20 (each
converted here with the default method at T, 512 calibration images), on the Fashion-MNIST
test images at batch ``--batch``, after two warm-up batches, every timed span closed by a
device synchronization:

* ``onnxruntime``: the DNN file, the spiking Loop graph and its deploy graph
  (``onnx-snn deploy``) with the CUDA execution provider,
  when this onnxruntime has it (``providers`` lists what it has; without CUDA the section says
  so and nothing is timed: it needs the onnxruntime-gpu package);
* ``torch``: the spiking graph in the PyTorch runtime (``SpikingNetwork``, eval, no grad)
  against the same architecture as a plain PyTorch DNN (``onnx_snn.zoo``, the weights do not
  change the speed), both on the device.

SGL: ``tools/bench_sgl.py --device DEVICE --compare-fold`` (the DNN's training step,
onnx-snn's at ``--sgl-timesteps``, time-folded (the default on CUDA) and step by step,
SpikingJelly's at T=2 when it is installed), on ``--sgl-images`` images.

``--device cpu`` runs everything on the CPU (a smoke test; the CPU figures in README come from
bench.py and bench_sgl.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# siblings in tools/, which `python tools/bench_gpu.py` puts first on sys.path
from _bench_common import bench_calibration, emit

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "shipped": (ROOT / "onnx_snn" / "models" / "fmnist_vgg.onnx", "fmnist_vgg"),
    "vgg16": (ROOT / "tools" / "models" / "fmnist_vgg16.onnx", "fmnist_vgg16"),
    "resnet20": (ROOT / "tools" / "models" / "fmnist_resnet20.onnx", "fmnist_resnet20"),
}


def _timed(fn, x, batch, sync, warmup=2) -> float:
    """Images per second of ``fn`` over ``x`` in batches (the first ``warmup`` not timed)."""
    nb = len(x) // batch
    for i in range(min(warmup, nb)):
        fn(x[i * batch:(i + 1) * batch])
    sync()
    t0 = time.perf_counter()
    for i in range(nb):
        fn(x[i * batch:(i + 1) * batch])
    sync()
    return nb * batch / (time.perf_counter() - t0)


def ort_section(dnn_path: str, snn_path: str, x, batch: int, timesteps: int,
                deploy_path: str = None) -> dict:
    import numpy as np
    import onnxruntime as ort
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"available": False, "providers": providers,
                "why": "this onnxruntime has no CUDAExecutionProvider (it needs onnxruntime-gpu)"}
    out = {"available": True, "providers": providers}
    graphs = [("dnn", dnn_path), ("snn", snn_path)] + ([("deploy", deploy_path)] if deploy_path else [])
    for name, path in graphs:
        sess = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
        inp = sess.get_inputs()[0].name
        extra = {}
        if any(i.name == "timesteps" for i in sess.get_inputs()):
            extra["timesteps"] = np.array(timesteps, np.int64)
        out[f"{name}_images_per_second"] = _timed(
            lambda xb: sess.run(None, {inp: xb, **extra}), x, batch, lambda: None)
        out[f"{name}_providers"] = sess.get_providers()
    out["snn_over_dnn"] = out["snn_images_per_second"] / out["dnn_images_per_second"]
    if deploy_path:
        out["deploy_over_dnn"] = out["deploy_images_per_second"] / out["dnn_images_per_second"]
    return out


def torch_section(arch: str, snn_path: str, x, batch: int, timesteps: int, device: str) -> dict:
    import torch
    from onnx_snn import zoo
    from onnx_snn.runtimes.torch import SpikingNetwork
    dev = torch.device(device)
    xs = torch.from_numpy(x).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    dnn = zoo.build(arch, 10, int(x.shape[1])).to(dev).eval()
    snn = SpikingNetwork.from_onnx(snn_path).to(dev).eval()
    with torch.no_grad():
        d = _timed(dnn, xs, batch, sync)
        s = _timed(lambda xb: snn(xb, timesteps, record_spikes=False), xs, batch, sync)
    return {"dnn_images_per_second": d, "snn_images_per_second": s, "snn_over_dnn": s / d}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("-T", "--timesteps", type=int, default=2)
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, from {', '.join(NETS)}")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--sgl-images", type=int, default=12800, help="training images timed per SGL job")
    ap.add_argument("--sgl-timesteps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--no-sgl", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    import torch

    import onnx_snn
    from onnx_snn.convert import resolve_data
    if args.test_images < args.batch:
        ap.error(f"--test-images ({args.test_images}) must be at least one --batch ({args.batch})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA device (use --device cpu for a smoke test)")
    result = {"benchmark": "GPU: spiking inference and SGL against the DNN", "device": args.device,
              "device_name": (torch.cuda.get_device_name(torch.device(args.device))
                              if args.device.startswith("cuda") else "cpu"),
              "torch": torch.__version__, "batch": args.batch, "timesteps": args.timesteps,
              "inference": {}}
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for net in nets:
            path, arch = NETS[net]
            nm = onnx_snn.prepare(str(path))
            x = resolve_data("fashion-mnist", nm.preprocess, split="test").take(args.test_images).x
            snn_path = os.path.join(tmp, f"{net}.snn.onnx")
            onnx_snn.build(nm, bench_calibration(nm), args.timesteps, "refined").save(snn_path)
            deploy_path = os.path.join(tmp, f"{net}.deploy.onnx")
            onnx_snn.deploy(snn_path, deploy_path)
            r = {}
            for name, fn in (("onnxruntime", lambda: ort_section(str(path), snn_path, x, args.batch,
                                                                  args.timesteps, deploy_path)),
                             ("torch", lambda: torch_section(arch, snn_path, x, args.batch,
                                                             args.timesteps, args.device))):
                try:
                    r[name] = fn()
                except Exception as e:   # one failing part keeps the others
                    r[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            result["inference"][net] = r
        if not args.no_sgl:
            import bench_sgl
            sgl_out = os.path.join(tmp, "sgl.json")
            with contextlib.redirect_stdout(sys.stderr):   # one JSON document on stdout
                bench_sgl.main(["--device", args.device, "--images", str(args.sgl_images),
                                "--repeat", "1", "-T", *map(str, args.sgl_timesteps),
                                "--compare-fold", "--out", sgl_out])
            result["sgl"] = json.loads(Path(sgl_out).read_text())["jobs"]
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
