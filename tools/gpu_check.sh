#!/usr/bin/env bash
# The prepared device check of issue 14, for a session that is lent a GPU machine.
#
# Here, once (needs pip's registry; writes the ignored folders .whl/ and .data/):
#     bash tools/gpu_check.sh --prepare
# then, through the device tool, from the repository root:
#     run(command="bash tools/gpu_check.sh", carry=[".whl", ".data"], timeout_s=540)
# It installs the carried wheels (what the machine's image lacks: onnx-graphsurgeon,
# SpikingJelly), points ONNX_SNN_DATA at the carried Fashion-MNIST files and runs
# tools/bench_gpu.py, then tools/bench_paper_gpu.py (the paper's full-width VGG-16 and
# ResNet-20 trained, converted, evaluated and fine-tuned) in what is left of
# GPU_CHECK_SECONDS (default 470: the device tool's 540 s call limit less the start); the
# JSON and the logs land in $OUT (runs/gpu/ when run here). `bash tools/gpu_check.sh --paper
# ARGS...` runs bench_paper_gpu.py alone with ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    echo "Other arguments are passed to tools/bench_gpu.py (see python tools/bench_gpu.py --help)."
    exit 0
fi

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .whl && mkdir -p .whl .data/fashion-mnist
    py=${PYTHON:-python3}
    # the GPU machine's python is 3.12; these are pure Python. SpikingJelly 2.0.0 imports
    # loguru (its other needs are in the image, or imported only to plot)
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 --platform any -d .whl \
        onnx-graphsurgeon spikingjelly==2.0.0 "loguru>=0.7,<1"
    cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
    du -sh .whl .data
    exit 0
fi

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
# the project itself, laid out as pyproject.toml installs it (runtimes/ is onnx_snn.runtimes):
# copied, not built, so that no setuptools is needed (pyproject's license field needs
# setuptools >= 77, which a machine's image may lack: pip install . failed on 65)
mkdir -p /tmp/site && rm -rf /tmp/site/onnx_snn
cp -r onnx_snn /tmp/site/onnx_snn && rm -rf /tmp/site/onnx_snn/runtimes
cp -r runtimes /tmp/site/onnx_snn/runtimes
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
# from /tmp: in the repository root the source folder onnx_snn/ (without runtimes/) would shadow it
(cd /tmp && python3 -c "import onnx_snn.runtimes.torch, onnx_graphsurgeon, spikingjelly.activation_based.neuron")
export ONNX_SNN_DATA=${ONNX_SNN_DATA:-$PWD/.data/fashion-mnist}
export ONNX_SNN_PROGRESS=0 PYTHONUNBUFFERED=1
out=${OUT:-runs/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu_device.txt" 2>&1 || true
if [[ "${1:-}" == "--paper" ]]; then    # bench_paper_gpu.py alone, with the arguments after --paper
    shift
    python3 tools/bench_paper_gpu.py --out "$out/paper.json" "${@}" 2>&1 | tee "$out/paper.log" | tail -n 40
    exit 0
fi
total=${GPU_CHECK_SECONDS:-470}
rc=0
python3 tools/bench_gpu.py --out "$out/gpu.json" --sgl-timesteps 2 "${@}" 2>&1 | tee "$out/gpu.log" || rc=$?
left=$(( total - SECONDS - 15 ))
echo "bench_gpu done at ${SECONDS} s; ${left} s for bench_paper_gpu" | tee -a "$out/gpu.log"
if (( left > 60 )); then
    python3 tools/bench_paper_gpu.py --budget "$left" --out "$out/paper.json" 2>&1 \
        | tee "$out/paper.log" | tail -n 40 || rc=$?
fi
exit $rc
