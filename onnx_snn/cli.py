"""The ``onnx-snn`` command line: a thin layer over the Python API.

User errors print one line, ``onnx-snn: error: ...``, and exit with the code of their kind
(see ``onnx_snn.errors``): 2 usage, 3 unreadable model, 4 unsupported model, 5 data,
6 output path, 7 diverged training, 8 not a spiking model, 9 missing dependency; 130 on
SIGINT, 143 on SIGTERM (temporary files removed). Every output path is checked before the
work and the outputs are written together at the end; a closed stdout is not an error.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import errno
import os
import re
import signal
import sys
import warnings
import threading
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__, auto_reconstruct, json_text
from .calibrate import DEFAULT_BATCH_SIZE, DEFAULT_CALIB_SAMPLES, DEFAULT_SAMPLE_SIZE
from .convert import MAX_BATCH_SIZE, MAX_SAMPLE_SIZE, MAX_TIMESTEPS, check_seed
from .errors import EXIT_CODES, OnnxSnnError, Terminated, UsageError, shortened  # noqa: F401  (Terminated: signals)
from .model_io import MAX_OPSET, MIN_OPSET
from .spiking.batch_chunks import DEFAULT_BATCH_CHUNK, MAX_BATCH_CHUNK
from .spiking.deploy import DEPLOY_MAX_TIMESTEPS
from .scales import DEFAULT_METHOD, DEFAULT_TIMESTEPS, METHODS, OBJECTIVES, SearchConfig

SEARCH = SearchConfig()   # the search's defaults, shown in --help

EPILOG_CONVERT = """\
examples:
  onnx-snn convert model.onnx --calib fashion-mnist -T 2          # the default: refined
  onnx-snn convert model.onnx --calib calib.npy -T 1 --report report.json
  onnx-snn convert model.onnx --calib fashion-mnist -T 2 --method datta   # the paper's alone
  onnx-snn convert resnet.onnx --calib cifar10 --data-dir ~/data --mean 0.49 0.48 0.45 --std 0.25 0.24 0.26
  onnx-snn convert model.onnx --calib fashion-mnist -T 2 --reconstruct 0  # not trained
                       # to follow the DNN after (the default, with PyTorch installed, is)

methods:
  refined     (default) the paper's Algorithm 1, then every layer, in order, refined on the
              spiking network's own input currents (its earlier layers already converted):
              thresholds, amplitudes and initial membranes per channel, chosen by
              simulating the neurons, the layers that read spikes refitted to the DNN's
              outputs and each channel's mean input current corrected. The most accurate
              at T=1-4, on deep networks above all; costs a few T-step passes of each layer
              over the calibration set. With PyTorch installed it is then reconstructed
              (--reconstruct, which says how long) where the network is small enough
  datta       Datta & Beerel 2022, Algorithm 1 alone: per-layer threshold scale alpha
              (searched over the layer's own activation percentiles) and output scale beta
              (fine grid) that best match the DNN activation at this T
  max         threshold = mu, alpha = beta = 1 (plain rate conversion)
  deng        Deng et al. 2021: threshold = mu, initial membrane threshold/2
  percentile  Rueckauer et al. 2017: threshold = the p-th percentile of activations
"""

EPILOG_EVAL = """\
examples:
  onnx-snn eval model.snn.onnx --data fashion-mnist          # top-1 and spike rates
  onnx-snn eval model.snn.onnx --data fashion-mnist -T 4     # run at another T (refined and datta were fitted for theirs: a warning)
  onnx-snn eval model.onnx --data fashion-mnist              # the DNN, to compare
"""

EPILOG_DEPLOY = """\
The deploy graph runs the spiking model's T steps unrolled, with the neurons written out as
plain ONNX ops and without what inference does not need: the time loop, the last step's
membrane update, and (unless --spike-counts) the per-layer spike counters. Its spikes are
the spiking model's, bit for bit, and so are its outputs (up to float rounding on some
architectures), 2.0-2.2x the loop graph's speed in onnxruntime (README). It runs in any
ONNX runtime (no custom functions) and in `onnx-snn eval`; it cannot be fine-tuned or
analyzed, nor run at another T: keep the spiking model for those.

--unit-thresholds writes a faster form (0.44-0.45x the DNN's images/s in onnxruntime at
T=2 on the README's networks, one thread, batch 256, against 0.34-0.35x for the plain deploy
graph): each layer rescaled to thresholds of 1, the spike amplitudes folded into the weights,
and each neuron written as ops that onnxruntime keeps in its blocked convolution layout. Its
spikes are the model's in real arithmetic; float rounding of the rescaled weights can flip a
neuron within about 2e-7 of its threshold.

Both forms run a batch --batch-chunk samples at a time (default 16; an ONNX Scan over slices
of the batch): each neuron's elementwise ops then work on tensors that fit in the caches
(0.37-0.39x the DNN for the unit form run whole). The outputs are the whole batch's; a graph
whose outputs would differ (one that mixes samples, e.g. a sum over the batch) is checked in
onnxruntime when written and stays whole, with the reason in its history (`onnx-snn info --json`).

examples:
  onnx-snn deploy model.snn.onnx -o model.deploy.onnx
  onnx-snn deploy model.snn.onnx -o model.deploy.onnx --unit-thresholds   # faster
  onnx-snn deploy model.snn.onnx -o model.deploy.onnx --spike-counts   # keep spike totals
  onnx-snn eval model.deploy.onnx --data fashion-mnist
"""


#: the torch runtime's surrogates (onnx_snn.runtimes.torch.neuron.SURROGATES, the default
#: first), spelled here so that `--help` needs no torch
FINETUNE_SURROGATES = ("sigmoid", "rectangle")
#: the fine-tuning losses (onnx_snn.runtimes.torch.finetune.LOSSES, the default first)
FINETUNE_LOSSES = ("mean", "per-step")
FINETUNE_SCHEDULES = ("cosine", "step")   # finetune's SCHEDULES, read without torch
#: convert --reconstruct without a number (runtimes.torch.reconstruct.DEFAULT_EPOCHS)
RECONSTRUCT_EPOCHS = auto_reconstruct.MAX_EPOCHS
QUIET_HELP = ("no progress bars or notes (but those that say the model's inputs or outputs "
              "changed); convert and eval leave out their per-layer tables and print the "
              "result line only")


def _whole_number(text: str, minimum: int, least: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {least}, not {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def nonempty(text: str) -> str:
    """A file, folder or dataset name that is not empty: ``--data ''`` (an unset shell
    variable) fell back to the model's recorded dataset, or measured nothing, silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a dataset name, a file or a folder "
                                         "(an unset shell variable?)")
    return text


def nonnegative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def _bounded_int(maximum: int, why: str, minimum: int = 1):
    def parse(text: str) -> int:
        value = positive_int(text) if minimum == 1 else nonnegative_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum} ({why}), not {value}")
        return value
    parse.__name__ = "bounded_int"
    return parse


timesteps_int = _bounded_int(MAX_TIMESTEPS, "MAX_TIMESTEPS: time and memory grow linearly with "
                                            "T; the method targets 1-4")
def seed_int(text: str) -> int:
    """A random seed: a whole number from 0 to 2**31 - 1."""
    try:
        return check_seed(int(text))
    except (ValueError, UsageError):
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**31 - 1, "
                                         f"not {text!r}") from None


batch_int = _bounded_int(MAX_BATCH_SIZE, "MAX_BATCH_SIZE")
sample_int = _bounded_int(MAX_SAMPLE_SIZE, "MAX_SAMPLE_SIZE: values kept per layer, memory")
chunk_int = _bounded_int(MAX_BATCH_CHUNK, "MAX_BATCH_CHUNK: chunks are for pieces that fit the "
                                          "caches; 0 runs the batch whole", minimum=0)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def unit_float(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device_name(text: str) -> str:
    if not DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda, cuda:N "
                                         "or mps")
    return text


def percent(text: str) -> float:
    value = positive_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"a percentile is at most 100, not {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser, record: bool = False) -> None:
    p.add_argument("--data-dir", metavar="DIR", type=nonempty,
                   help="folder with datasets (else $ONNX_SNN_DATA, then system locations)")
    p.add_argument("--download", action="store_true",
                   help="download the named dataset (CIFAR, MNIST, Fashion-MNIST) through "
                        "torchvision when it is not found (needs internet)")
    p.add_argument("--mean", type=finite_float, nargs="+", metavar="M",
                   help="named datasets and image folders: per-channel mean to subtract from "
                        "[0,1] images (default: "
                        "the model's recorded preprocessing; with none, raw pixels and a warning)"
                        + ("; recorded in the spiking model" if record else "")
                        + ". Not with .npy/.npz data, which is taken as already preprocessed")
    p.add_argument("--std", type=positive_float, nargs="+", metavar="S",
                   help="named datasets and image folders: per-channel std to divide by "
                        "(default: the model's "
                        "recorded preprocessing)")


def _exit_codes_help() -> str:
    """The exit codes, from the error classes themselves."""
    from . import errors
    def first_sentence(cls) -> str:
        text = " ".join(cls.__doc__.split("\n\n")[0].split())
        for stop in (": ", "; ", ". "):
            text = text.split(stop)[0]
        return text.rstrip(".")

    rows = ["    1  out of memory (lower -T, --batch-size or the sample sizes)"]
    rows += [f"  {code:>3}  {first_sentence(getattr(errors, name))}"
             for name, code in sorted(EXIT_CODES.items(), key=lambda kv: kv[1])]
    return "exit codes (errors are one line: onnx-snn: error: ...):\n" + "\n".join(rows) + \
        "\n  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): temporary files removed"


class _GivenOnce(argparse._StoreAction):
    """An option that takes a value, refused when given twice: argparse keeps the last one
    silently, so `-T 2 ... -T 4` converted at T = 4, and `--outputs a --outputs b` kept b
    alone. (Flags that only switch something on may repeat; `--augment --augment` is one.)"""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault(_GIVEN, {})
        if id(self) in given and option_string is not None:
            first = given[id(self)]
            parser.error(f"{'/'.join(self.option_strings)} given twice ({_shown(first)} and "
                         f"{_shown(values)}); give it once"
                         + (", with every value after it" if self.nargs in ("+", "*") else ""))
        given[id(self)] = values
        super().__call__(parser, namespace, values, option_string)


_GIVEN = "_onnx_snn_given"     # the namespace's record of the options given (removed after)


def _shown(values) -> str:
    return " ".join(map(str, values)) if isinstance(values, list) else str(values)


class _Parser(argparse.ArgumentParser):
    """argparse, but an option that takes a value may be given once (:class:`_GivenOnce`);
    the subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _GivenOnce)
        self.register("action", "store", _GivenOnce)

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        ns.__dict__.pop(_GIVEN, None)
        return ns, rest


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="onnx-snn",
        description="Turn a trained clipped-ReLU DNN (ONNX, any framework) into an "
                    "ultra-low-latency spiking neural network (1-4 time steps), after Datta & "
                    "Beerel, DATE 2022.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `onnx-snn COMMAND --help` for each command's options.\n\n" + _exit_codes_help())
    parser.add_argument("--version", action="version", version=f"onnx-snn {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help=QUIET_HELP)

    c = sub.add_parser("convert", parents=[quiet], help="convert a DNN into a spiking ONNX model",
                       description="Calibrate a DNN with onnxruntime and rewrite it into a "
                                   "stateful spiking ONNX model.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_CONVERT)
    c.add_argument("model", help=f"the DNN, an .onnx file (any exporter, opset {MIN_OPSET}-{MAX_OPSET})")
    c.add_argument("-o", "--output", help="where to write the spiking model "
                                          "(default: MODEL with suffix .snn.onnx)")
    c.add_argument("--calib", metavar="DATA", type=nonempty,
                   help="calibration data: fashion-mnist, mnist, cifar10, cifar100 (training split), "
                        "a .npy/.npz file of preprocessed inputs, or a folder of images (one "
                        "subfolder per class, or the images alone; its train/ split when it has "
                        "one) (default: the model's dataset)")
    c.add_argument("-T", "--timesteps", type=timesteps_int, default=DEFAULT_TIMESTEPS,
                   help=f"time steps, 1-{MAX_TIMESTEPS} (default: {DEFAULT_TIMESTEPS})")
    c.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"how thresholds are chosen (default: {DEFAULT_METHOD}; see below)")
    c.add_argument("--objective", choices=OBJECTIVES, default=SEARCH.objective,
                   help=f"what datta minimizes between DNN and SNN activations (default: "
                        f"{SEARCH.objective})")
    c.add_argument("--sequential", action="store_true",
                   help="with --method datta: refine it as the refined method does (the same "
                        "as --method refined)")
    c.add_argument("--per-channel", action=argparse.BooleanOptionalAction,
                   default=SEARCH.per_channel,
                   help="refined: thresholds, amplitudes and initial membranes per channel "
                        f"(default: {'on' if SEARCH.per_channel else 'off'}; --no-per-channel: "
                        "one value per layer)")
    c.add_argument("--bias-correction", action=argparse.BooleanOptionalAction,
                   default=SEARCH.bias_correction,
                   help="refined: add, per channel, the mean input current the spiking layer "
                        "lacks (Li et al. 2021; default: "
                        f"{'on' if SEARCH.bias_correction else 'off'})")
    c.add_argument("--weight-calibration", action=argparse.BooleanOptionalAction,
                   default=SEARCH.weight_calibration,
                   help="refined: refit every layer that reads spikes so that its output on "
                        "the spiking input best matches the DNN's (ridge regression on the "
                        "calibration set toward the layer's own weights, its ridge chosen per "
                        "layer from 0.001-1 and the refit kept where it predicts held-out "
                        "images better; at T=1 fitted to min(h, mu), which one spike covers; "
                        f"default: {'on' if SEARCH.weight_calibration else 'off'})")
    c.add_argument("--outputs", nargs="+", metavar="NAME", dest="keep_outputs",
                   help="keep only these outputs of the DNN (and the layers that compute them); "
                        "for exports that also expose intermediate tensors, e.g. tf2onnx's "
                        "from_function, whose extra outputs can keep an activation from being "
                        "recognized, or to cut off a head of custom ops; the inputs only the "
                        "dropped outputs read are dropped too (a name it does not have lists "
                        "the ones it has)")
    c.add_argument("--pool-first", action="store_true",
                   help="move each max pool that reads an activation ahead of it (the same DNN: "
                        "a clipped ReLU commutes with a maximum), so the spiking layer fires on "
                        "the pooled map, once per window: 4x fewer neurons behind a 2x2 pool, a "
                        "1.2x faster loop graph; top-1 within the seeds' spread of the default's "
                        "at T=2 and 4, 0.5-0.7 points lower at T=1 on deep networks (README)")
    c.add_argument("--search-stride", type=nonnegative_int, default=SEARCH.search_stride,
                   metavar="K",
                   help="refined: score every K-th alpha percentile per channel, then the ones "
                        "around each channel's best (default 0, automatic: 1, every "
                        "percentile, up to T=4, and 4 above, where the simulated search "
                        "dominates: VGG-16 at T=16 refined in 39 s instead of 170 s, top-1 "
                        "within 0.1 point); 4 at T=2 refines VGG-16 and ResNet-20 1.9-2.0x "
                        "faster, top-1 within the seeds' spread (docs/MEASUREMENTS.md)")
    c.add_argument("--signed-spikes", action="store_true",
                   help="signed neurons: a neuron that has fired may take a spike back with a "
                        "negative one when its membrane drops below zero (Wang et al. 2022), so "
                        "a neuron driven up on one step and down on the next ends where its "
                        "summed input puts it; spikes are -1/0/+1 times the amplitude (each "
                        "one an accumulate, counted in the spike rates and energy). Format "
                        "version 3. Best on networks trained for the T+1 levels (train_dnn.py "
                        "--levels T); measured in README")
    c.add_argument("--reconstruct", type=non_negative_int, nargs="?", const=RECONSTRUCT_EPOCHS,
                   default=None, metavar="EPOCHS",
                   help="after the conversion, train the spiking network on the calibration "
                        "samples, without labels, to follow the DNN: each layer's output its "
                        "clipped activation, the scores its scores (KL at temperature 4), "
                        f"for EPOCHS epochs (the flag alone: {RECONSTRUCT_EPOCHS}; 0: off; put "
                        "the flag after the model path, or give EPOCHS). Needs PyTorch. "
                        "Without the flag, the refined method with PyTorch installed is "
                        "reconstructed within a budget of compute, on the calibration samples "
                        "and more of the same data (a named dataset, an array file; up to "
                        "4096 samples in all, or all the calibration samples where they are "
                        "more), 3 or more epochs each (none for a large network; the last line "
                        "says why; $ONNX_SNN_RECONSTRUCT=0 turns this default off), and kept "
                        "only if it follows the DNN at least as well as the conversion on up to "
                        "1024 samples of the data held out (where the data has no more, a "
                        "quarter of the calibration samples, at most 256, held out of the "
                        "calibration and the training). At T=2 "
                        "VGG-16 +2.0 points, ResNet-20 +2.5, for about 40-45 s more on 2 cores "
                        "(README); not the same to the bit on another thread count")
    c.add_argument("--reconstruct-budget", type=positive_float, default=1.0, metavar="X",
                   help="scale the default reconstruction's budget of compute by X (default 1; "
                        f"at most {auto_reconstruct.MAX_BUDGET_SCALE:g}): 2 trains about twice the "
                        "epochs (ResNet-20 at T=2: 5 epochs of 4096 images, top-1 89.46 / 88.79 "
                        "at --seed 0 / 1 against 89.33 / 88.57, 85 s end to end on 2 cores; "
                        "README), or reconstructs a network twice as costly that the default "
                        "skips")
    c.add_argument("--calib-samples", type=non_negative_int, default=DEFAULT_CALIB_SAMPLES, metavar="N",
                   help=f"calibration samples drawn from the data (default: {DEFAULT_CALIB_SAMPLES}; "
                        "0 = all). Where the data holds fewer than 64 more and the default "
                        "reconstructs, a quarter of them (at most 256) are held out to check "
                        "it, and the conversion is made again from all of them if it is not kept")
    c.add_argument("--batch-size", type=batch_int,
                   help=f"calibration batch (default: {DEFAULT_BATCH_SIZE}; fewer images when "
                        "one batch's layer outputs would pass 512 MiB, e.g. 224x224 inputs). "
                        "Memory and speed only: the samples and the refits' held-out images go "
                        "by each image's place in the calibration set, so every batch size "
                        "gives the same conversion (up to float rounding)")
    c.add_argument("--sample-size", type=sample_int, default=DEFAULT_SAMPLE_SIZE, metavar="N",
                   help=f"values kept per layer for the search (default: {DEFAULT_SAMPLE_SIZE}; "
                        f"at most {MAX_SAMPLE_SIZE})")
    c.add_argument("--percentile-step", type=percent, default=SEARCH.percentile_step,
                   help=f"datta: alpha candidates at every STEP-th percentile (default: "
                        f"{SEARCH.percentile_step:g})")
    c.add_argument("--beta-step", type=positive_float, default=SEARCH.beta_step,
                   help=f"datta: beta grid step (default: {SEARCH.beta_step:g})")
    c.add_argument("--beta-max", type=positive_float, default=SEARCH.beta_max,
                   help=f"datta: largest beta (default: {SEARCH.beta_max:g})")
    c.add_argument("--percentile", type=percent, default=SEARCH.percentile,
                   help=f"percentile method: which percentile (default: {SEARCH.percentile:g})")
    c.add_argument("--relu-percentile", type=percent, default=SEARCH.relu_percentile,
                   help=f"plain ReLU layers: mu = this percentile of activations (default: "
                        f"{SEARCH.relu_percentile:g})")
    c.add_argument("--report", metavar="JSON", help="write per-layer parameters and statistics")
    c.add_argument("--step-graph", metavar="ONNX",
                   help="also write the one-time-step graph (states as inputs/outputs)")
    c.add_argument("--deploy", metavar="ONNX",
                   help="also write the inference-only deploy graph (see `onnx-snn deploy`)")
    c.add_argument("--unit-thresholds", action="store_true",
                   help="with --deploy: write the deploy graph's faster form (see `onnx-snn "
                        "deploy --help`)")
    c.add_argument("--batch-chunk", type=chunk_int, default=None, metavar="N",
                   help=f"with --deploy: samples per run of the deploy graph's body (default "
                        f"{DEFAULT_BATCH_CHUNK}, at most {MAX_BATCH_CHUNK}; 0: the batch whole; "
                        "see `onnx-snn deploy --help`)")
    c.add_argument("--binary-spikes", action="store_true",
                   help="fold each layer's spike amplitude into the next layer's weights where "
                        "exact (0/1 spikes, -1/0/+1 with --signed-spikes; accumulate-only "
                        "synapses); sites feeding a residual "
                        "Add keep an explicit multiply and are listed")
    c.add_argument("--seed", type=seed_int, default=0, help="random seed for sampling (default: 0)")
    _add_data_args(c, record=True)

    e = sub.add_parser("eval", parents=[quiet], help="top-1 (and spike rates) of a DNN or spiking model",
                       description="Evaluate a DNN or a spiking model in onnxruntime.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_EVAL)
    e.add_argument("model", help="an .onnx DNN or .snn.onnx spiking model")
    e.add_argument("--data", metavar="DATA", type=nonempty,
                   help="fashion-mnist, mnist, cifar10, cifar100 (test split; add :train for the "
                        "training split), a .npz with x and y, or a folder with one subfolder of "
                        "images per class (its test/ or val/ split when it has one) (default: the "
                        "model's dataset)")
    e.add_argument("-T", "--timesteps", type=timesteps_int,
                   help=f"override the model's time steps (1-{MAX_TIMESTEPS}); a refined or datta "
                        "model (or a fine-tuned one) was fitted for its own T and is not "
                        "rate-exact at another, even a larger one: a warning says so")
    e.add_argument("--batch-size", type=batch_int,
                   help="samples run at once (default: 256; for a spiking model, fewer when a "
                        "batch would hold more than 2 GiB in onnxruntime: about 48 bytes per "
                        "neuron and sample, e.g. 17 for a 224x224 ResNet-18)")
    e.add_argument("--limit", type=positive_int, metavar="N",
                   help="only N samples: a dataset's or an array's first N, a folder's N drawn "
                        "from all its classes (the same N every run)")
    e.add_argument("--json", metavar="FILE",
                   help="write the result (top-1, spike rates per layer) as JSON; "
                        "`onnx-snn analyze` can reuse it")
    e.add_argument("--output", metavar="NAME",
                   help="the model output whose scores are compared with the labels (default: "
                        "the first; a note lists the others)")
    _add_data_args(e)

    i = sub.add_parser("info", parents=[quiet], help="show what a spiking model holds",
                       description="Print a spiking model's time steps, method, neurons, and the "
                                   "preprocessing and dataset it records.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  onnx-snn info model.snn.onnx          # T, method, a row per neuron site\n"
                              "  onnx-snn info model.snn.onnx --json   # the metadata (sites, history) as JSON")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print the metadata as JSON")

    d = sub.add_parser("deploy", parents=[quiet],
                       help="write a spiking model's inference-only graph (unrolled, faster)",
                       description="Unroll a spiking model over its T time steps into a plain "
                                   "ONNX graph for inference.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_DEPLOY)
    d.add_argument("model", help="a spiking model (.snn.onnx, loop or step graph)")
    d.add_argument("-o", "--output", help="where to write it (default: MODEL with .snn.onnx "
                                          "replaced by .deploy.onnx)")
    d.add_argument("-T", "--timesteps", type=_bounded_int(DEPLOY_MAX_TIMESTEPS, "DEPLOY_MAX_TIMESTEPS"),
                   help=f"the fixed number of time steps (default: the model's; 1-{DEPLOY_MAX_TIMESTEPS}: "
                        "the graph grows with T)")
    d.add_argument("--spike-counts", action="store_true",
                   help="keep each layer's spike total as an output (for `eval`'s spike rates; "
                        "about 7 %% slower)")
    d.add_argument("--unit-thresholds", action="store_true",
                   help="the faster form: rescale each layer so that its thresholds are 1, "
                        "fold the spike amplitudes into the weights, and write the neurons as "
                        "Add and HardSigmoid ops, which onnxruntime keeps in its blocked "
                        "convolution layout (1.1-1.3x faster, README); the same spikes in real "
                        "arithmetic, but float rounding of the rescaled weights can flip a "
                        "neuron that sits on its threshold, so outputs may differ slightly")
    d.add_argument("--batch-chunk", type=chunk_int, default=DEFAULT_BATCH_CHUNK,
                   metavar="N",
                   help=f"run a batch N samples at a time inside the graph (an ONNX Scan; the "
                        f"same outputs; default {DEFAULT_BATCH_CHUNK}, at most "
                        f"{MAX_BATCH_CHUNK}; 0: the batch whole, as one graph without a Loop)")

    f = sub.add_parser("finetune", parents=[quiet],
                       help="fine-tune a spiking model with surrogate gradients (needs torch)",
                       description="Surrogate-gradient fine-tuning in PyTorch (backprop through "
                                   "the T steps): Adam (amsgrad), lr 1e-3 warmed up over 5% of "
                                   "training, then a cosine to 0 (--schedule step: divided by 5 "
                                   "at 60/80/90%, the paper's schedule); that lr, a "
                                   "sigmoid surrogate and no augmentation did better than the "
                                   "paper's 1e-4, rectangle and random crops in a few epochs. "
                                   "The loss is the labels' cross-entropy, or with --teacher "
                                   "distillation from a DNN. Writes the "
                                   "same spiking format back; the best epoch on the test set is "
                                   "kept: OUTPUT gets the starting model only when it does not "
                                   "exist yet, and an existing OUTPUT (a spiking model of the "
                                   "same DNN, else refused) is replaced only by an "
                                   "epoch that beats the starting top-1 and the "
                                   "existing OUTPUT's own (measured on the same test data).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  onnx-snn finetune model.snn.onnx --data fashion-mnist --epochs 3 -o tuned.snn.onnx --plot curves.png\n"
                              "  torchrun --nproc_per_node 2 -m onnx_snn finetune model.snn.onnx -o tuned.snn.onnx\n"
                              "  onnx-snn finetune model.snn.onnx -o tuned.snn.onnx --resume   # after an interruption\n"
                              "  onnx-snn finetune model.snn.onnx -o tuned.snn.onnx --teacher auto --distill 0.5\n")
    f.add_argument("model", help="a spiking model (.snn.onnx) written by `onnx-snn convert`")
    f.add_argument("-o", "--output", required=True, help="where to write the fine-tuned model")
    f.add_argument("--data", metavar="DATA", type=nonempty, help="fashion-mnist, mnist, cifar10, cifar100 (trains on "
                                                  "the training split, tests on the test split), "
                                                  "a .npy/.npz file of inputs and labels, or a "
                                                  "folder of class subfolders of images (train/ and "
                                                  "test/ or val/ splits when it has them) (default: the "
                                                  "model's dataset)")
    f.add_argument("--test-data", metavar="DATA", type=nonempty, help="where the test accuracy that picks the "
                   "best epoch is measured (default: the named dataset's test split; for a file "
                   "--data, that file itself, with a warning)")
    f.add_argument("--epochs", type=positive_int, default=3, help="epochs (default: 3)")
    f.add_argument("--lr", type=positive_float, default=1e-3,
                   help="learning rate (default: 1e-3; the paper's 1e-4 gained 0.7-1.8 points less "
                        "in one epoch at T=2 on the three benchmark networks: docs/MEASUREMENTS.md, fine-tuning)")
    f.add_argument("--schedule", choices=FINETUNE_SCHEDULES, default=FINETUNE_SCHEDULES[0],
                   help="the learning rate's schedule: cosine (default; a linear warm-up over "
                        "the first --warmup of the iterations, then a cosine to 0; 0.4 points "
                        "above step on average in one epoch on the deep benchmark networks: "
                        "docs/MEASUREMENTS.md) or step (divided by 5 at 60, 80 and 90 %% of "
                        "them, the paper's)")
    f.add_argument("--warmup", type=float, default=None, metavar="F",
                   help="with --schedule cosine: the warm-up's share of the iterations, 0 to "
                        "below 1 (default: 0.05)")
    f.add_argument("--batch-size", type=batch_int, default=64, help="batch size (default: 64)")
    f.add_argument("-T", "--timesteps", type=timesteps_int,
                   help=f"time steps, 1-{MAX_TIMESTEPS} (default: the model's)")
    f.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                   help="L2 weight decay (default: 0)")
    f.add_argument("--augment", action="store_true",
                   help="random crop/flip of image batches (off by default: a few epochs from a "
                        "converted network did better without; docs/MEASUREMENTS.md, fine-tuning)")
    f.add_argument("--no-augment", action="store_true", help=argparse.SUPPRESS)   # the default now
    f.add_argument("--surrogate", choices=FINETUNE_SURROGATES, default=FINETUNE_SURROGATES[0],
                   help="the spike's surrogate gradient: sigmoid (default; k=4, peak 1 at the "
                        "threshold) or the paper's rectangle (1 for 0 < u/threshold < 2)")
    f.add_argument("--teacher", metavar="DNN.onnx|auto", type=nonempty,
                   help="distill from this DNN: the spiking model learns its outputs (KL to its "
                        "softmax); auto: the DNN the model was converted from, when the file is "
                        "still where the conversion read it, with the same sha256 (default: no "
                        "teacher; in one epoch at T=2 distillation did not beat the labels: docs/MEASUREMENTS.md)")
    f.add_argument("--distill", type=unit_float, metavar="W",
                   help="with --teacher, the loss is W x KL(teacher || model) + (1 - W) x "
                        "cross-entropy (default: 1)")
    f.add_argument("--temperature", type=positive_float,
                   help="softmax temperature of the distillation (default: 1)")
    f.add_argument("--no-dropout", action="store_true",
                   help="leave out the source DNN's dropout (default: each recorded dropout "
                        "layer drops with its rate, one mask per batch for all T steps)")
    f.add_argument("--train-initial", action="store_true",
                   help="also train the neurons' initial membranes (default: they keep the "
                        "conversion's)")
    f.add_argument("--loss", choices=FINETUNE_LOSSES, default=FINETUNE_LOSSES[0],
                   help="mean (default): the loss of the output averaged over the T steps, what "
                        "the model outputs; per-step: the mean of each step's loss (TET, Deng "
                        "et al. 2022), which asks every step to classify on its own")
    f.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    f.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    f.add_argument("--checkpoint", metavar="PATH", help="checkpoint file (default: OUTPUT.ckpt.pt)")
    f.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")
    f.add_argument("--limit-train", type=positive_int, metavar="N", help="only N training samples")
    f.add_argument("--limit-test", type=positive_int, metavar="N", help="only N test samples")
    f.add_argument("--json", metavar="FILE", help="write the per-epoch record as JSON")
    f.add_argument("--plot", metavar="FILE",
                   help="the run's curves as a figure: top-1 per epoch (test, train; epoch 0 is "
                        "the model as given) and the training loss; .png, .svg or .pdf by its "
                        "suffix, png without one (needs matplotlib)")
    _add_data_args(f)

    a = sub.add_parser("analyze", parents=[quiet],
                       help="FLOPs and compute energy per layer, DNN against SNN",
                       description="Count per-layer operations (MACs for the DNN and the "
                                   "direct-encoded first layer, ACs weighted by the recorded "
                                   "spike rates for spiking layers) and estimate compute energy "
                                   "(Horowitz 2014, 45 nm).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  onnx-snn analyze model.snn.onnx --data fashion-mnist --dnn model.onnx --json energy.json --plot energy.png\n"
                              "  onnx-snn eval model.snn.onnx --data fashion-mnist --json eval.json\n"
                              "  onnx-snn analyze model.snn.onnx --rates eval.json      # reuse recorded rates\n"
                              "  onnx-snn analyze model.onnx                            # a DNN alone\n"
                              "\npresets (pJ per MAC / per AC): 45nm-fp32 4.6/0.9 (the paper's), "
                              "45nm-int32 3.2/0.1")
    a.add_argument("model", help="a DNN (.onnx) or a spiking model (.snn.onnx)")
    a.add_argument("--data", metavar="DATA", type=nonempty, help="record spike rates on this dataset first "
                                                  "(default for spiking models: the model's dataset)")
    a.add_argument("--rates", metavar="JSON", type=nonempty, help="spike rates from `onnx-snn eval --json` (or finetune --json)")
    a.add_argument("--dnn", metavar="ONNX", type=nonempty, help="the original DNN, for the DNN totals")
    a.add_argument("-T", "--timesteps", type=timesteps_int,
                   help=f"time steps, 1-{MAX_TIMESTEPS} (default: the model's)")
    a.add_argument("--limit", type=positive_int, metavar="N", help="record rates on N samples only")
    a.add_argument("--preset", choices=("45nm-fp32", "45nm-int32"), default="45nm-fp32",
                   help="energy per operation (default: 45nm-fp32, the paper's)")
    a.add_argument("--mac-pj", type=positive_float, help="override the energy of one MAC (pJ)")
    a.add_argument("--ac-pj", type=positive_float, help="override the energy of one AC (pJ)")
    a.add_argument("--json", metavar="FILE", help="write the analysis as JSON")
    a.add_argument("--plot", metavar="FILE", help="per-layer spike rates and energy as a figure, "
                   ".png, .svg or .pdf by its suffix, png without one (needs matplotlib)")
    _add_data_args(a)

    from .demo import add_demo_parser
    add_demo_parser(sub, quiet)
    return parser


def _inputs(model=None, data=None, data_dir=None, extra=()) -> list:
    """Every file a command reads (outputs may be none of them): the model and its external
    data, the files a spiking model's history names (its source DNN, the data it was
    calibrated and fine-tuned on), an array file or a named dataset's files, and ``extra``
    files (rates, --dnn)."""
    from .datasets import dataset_files
    from .model_io import model_files
    from .recorded_files import recorded_files
    files = []
    if model:
        files += model_files(model) + [Path(p) for p in recorded_files(model)]
    if data:
        files += dataset_files(data, data_dir)
    for f in extra:
        if f:
            files += model_files(f) if str(f).endswith(".onnx") else [Path(f)]
    return files


def _check_outputs(inputs, *outputs) -> dict:
    """Every output path valid, none an input, no two the same: checked before any work.
    ``outputs``: (path or None, option) pairs. Returns {given path: path to write}."""
    from .model_io import check_outputs
    return check_outputs(outputs, inputs)


def _with_external_data(model: str, outputs: list) -> list:
    """``outputs`` ((path or None, option) pairs of the models a command writes) and, when
    ``model`` keeps its weights in external data (so the written models do too), each one's
    ``<path>.data`` beside it: no output, input or other output may be one of them."""
    from pathlib import Path
    from .model_io import check_data_file_owner, external_data_path, model_files
    if len(model_files(model)) <= 1:
        return list(outputs)
    for p, _ in outputs:     # an existing one must be that output's own (another model's
        if p is not None:    # weights would be corrupted)
            check_data_file_owner(external_data_path(p), Path(p))
    return list(outputs) + [(external_data_path(p), f"{opt}'s external data")
                            for p, opt in outputs if p is not None]


def _check_mean_std(args, data) -> None:
    """--mean/--std belong to images in [0, 1]: named datasets and folders of image files;
    array files are taken as preprocessed."""
    from .convert import check_mean_std
    from .datasets import named_dataset, split_spec
    from .errors import UsageError
    from .image_folder import is_image_folder
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    images = not data or named_dataset(data) is not None or is_image_folder(split_spec(data)[0])
    if (mean is not None or std is not None) and images:
        check_mean_std(mean, std, None)     # both, and sane: before any work
    if (mean or std) and not images:
        raise UsageError(f"{data}: --mean/--std apply to images in [0, 1]: named datasets "
                         "(fashion-mnist, mnist, cifar10, cifar100) and folders of image files; "
                         ".npy/.npz data is taken as already preprocessed, so normalize the "
                         "arrays yourself and drop --mean/--std")


def _other_rank() -> bool:
    """A process of a torchrun launch other than rank 0: it says nothing but its errors (each
    note and warning was printed once per process)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    except ValueError:
        return False


def _finetune_log(quiet: bool):
    """Fine-tuning's log, printed as the other commands print theirs: its warnings and notes
    on stderr (they went to stdout, among the results, unless -q), its progress lines (the
    starting top-1, each epoch) on stdout; -q keeps the warnings alone."""
    def log(message) -> None:
        text = str(message)
        if text.startswith("warning:"):
            if not _other_rank():
                print(text, file=sys.stderr)
        elif not quiet:
            print(text, file=sys.stderr if text.startswith("note:") else sys.stdout)
    return log


def _default_output(model: str, suffix: str = ".snn.onnx", strip=(".onnx",)) -> str:
    """``model`` with the first of ``strip`` that ends its name (in any case: ``.ONNX``)
    replaced by ``suffix``."""
    p = Path(model)
    ext = next((e for e in strip if p.name.lower().endswith(e)), "")
    return str(p.with_name(p.name[:len(p.name) - len(ext)] + suffix))


def _data_or_recorded(given, args, option: str = "--data", need: Optional[str] = None):
    """``given``, else the dataset the model records, said in a note (a model converted or
    fine-tuned on a stand-in dataset records that one). ``need`` (calibration, evaluation,
    training): neither is a DataError saying what to pass."""
    if given:
        _note_other_data(given, args, option)
        return given
    from .errors import DataError
    recorded = _dataset_from_metadata(args.model)
    if recorded and not getattr(args, "quiet", False):
        print(f"note: {recorded}, the dataset {args.model} records ({option} for another)",
              file=sys.stderr)
    if not recorded and need:
        from .model_io import load_model      # a damaged model is the first thing to say
        load_model(args.model)                # (exit 3 for an empty graph, not 5: no data)
        files = "FILE.npy|FILE.npz" if option == "--calib" else "FILE.npz"
        named = list(dict.fromkeys(_recorded_data(args.model)[1]))
        raise DataError(f"no {need} data: pass {option} fashion-mnist|mnist|cifar10|cifar100|"
                        f"{files}|IMAGE_FOLDER (the model records no dataset"
                        + (f"; its history names {', '.join(named[:3])}, the data it was "
                           "converted or fine-tuned on" if named else "") + ")")
    return recorded


def _light_model(model_path):
    """The model file without its external weights, or None where it cannot be read (the
    load that follows says why); never opened unless a regular file (a pipe would block)."""
    import onnx
    from .errors import file_problem
    try:
        m = None if file_problem(model_path) else onnx.load(model_path, load_external_data=False)
    except Exception:
        return None
    return m if m is not None and m.HasField("graph") else None   # (an empty file parses)


def _spiking_first(model_path) -> None:
    """A model that is no spiking one (a DNN given to finetune), refused before any question
    about its data, by its metadata alone (an unreadable file is left to the load that
    follows, which says why)."""
    from .spiking.format import is_spiking, read_spiking
    m = _light_model(model_path)
    if m is not None and not is_spiking(m):
        read_spiking(m, str(model_path))      # (raises NotSpikingModelError, worded there)


def _note_other_data(given, args, option: str = "--data") -> None:
    """A note (stderr; -q hides it) when ``given`` is other data than the model records: a
    named dataset other than every one it records (its ``onnx_snn.dataset``, the named
    datasets its history was converted or fine-tuned on), or a folder of images other than
    every data folder its history names (split folders and ``:split`` aside). Array files
    are not compared (calibration and test files differ by design), nor a named dataset with
    a folder (a folder may hold its images)."""
    if getattr(args, "quiet", False):
        return
    listing = _other_data(given, *_recorded_data(args.model), args.model)
    if not listing:
        return
    then = ("its spiking model's thresholds are fitted to this data's activations instead, "
            "which can lower its top-1 on its own data" if option == "--calib" else
            "the model was trained or converted on that, so its results on this data may be "
            "lower and do not compare with results there")
    print(f"note: {option} {given} is other data than {args.model} records ({listing}): "
          f"{then}", file=sys.stderr)


def _recorded_data(model_path):
    """(its onnx_snn.dataset or None, [the data names its history records]) of a model
    file, read from its metadata alone; (None, []) where it cannot be read (never raises:
    loading it later says why)."""
    from .datasets import DATA_RECORDS
    from .recorded_files import history_steps, recorded_dataset
    names = [step.get(k) for step in history_steps(model_path) for k in DATA_RECORDS]
    return recorded_dataset(model_path), [n for n in names if isinstance(n, str) and n]


def _other_data(given, dataset, names, model_path) -> Optional[str]:
    """What the model records (as the note lists it) when ``given`` is other data than that;
    None when it is the same, or cannot be compared."""
    from .datasets import named_dataset, recorded_data_paths, split_spec
    from .image_folder import is_image_folder
    key = named_dataset(given)
    if key is not None:
        known = sorted({named_dataset(n) for n in [dataset, *names] if n} - {None})
        return None if not known or key in known else \
            ("dataset " if len(known) == 1 else "datasets ") + ", ".join(known)
    path = split_spec(given)[0]
    if not is_image_folder(path):
        return None
    folders = {n: recorded_data_paths(n, model_path) for n in names}
    folders = {n: ps for n, ps in folders.items()
               if ps and not any(os.path.isfile(p) for p in ps)
               and not ps[0].lower().endswith((".npy", ".npz"))}
    if not folders or any(_data_root(p) == _data_root(path) for ps in folders.values() for p in ps):
        return None
    shown = list(folders)[:3]
    return ("data folder " if len(shown) == 1 else "data folders ") + ", ".join(shown)


def _data_root(path) -> str:
    """A data folder as compared: absolute, without a last train/test/val split folder."""
    p = os.path.normpath(os.path.abspath(os.fspath(path)))
    return os.path.dirname(p) if os.path.basename(p).lower() in ("train", "test", "val") else p


def _dataset_from_metadata(model_path: str) -> Optional[str]:
    """The dataset a model records; an unreadable model raises its load error here."""
    from .model_io import load_model
    m = _light_model(model_path)
    if m is None:
        load_model(model_path)   # raises the clear error (missing, empty, truncated, not ONNX)
        return None
    from .model_io import metadata_dict
    meta = metadata_dict(m)
    from .spiking.format import META_DATASET
    return meta.get(META_DATASET)


def _param(value, spec: str) -> str:
    """One neuron parameter: its value, or the range of its per-channel values."""
    if isinstance(value, (list, tuple)):
        return f"{min(value):{spec}}..{max(value):{spec}}" if value else "-"
    return f"{value:{spec}}"


def _fmt_table(headers: List[str], rows: List[List]) -> str:
    from .table import format_table
    return format_table(headers, rows)


def cmd_convert(args) -> int:
    from .convert import check_method_options, check_search_limits, convert
    from .notes import INTERFACE_NOTE, WARNING_NOTE, unmarked
    from .errors import UsageError
    from .model_io import check_output_path, write_all_atomic

    try:
        config = SearchConfig(objective=args.objective, percentile_step=args.percentile_step,
                              beta_step=args.beta_step, beta_max=args.beta_max,
                              percentile=args.percentile, relu_percentile=args.relu_percentile,
                              sequential=args.sequential or args.method == "refined",
                              per_channel=args.per_channel,
                              bias_correction=args.bias_correction,
                              weight_calibration=args.weight_calibration,
                              signed_spikes=args.signed_spikes,
                              search_stride=args.search_stride)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.sequential and args.method not in ("datta", "refined"):
        raise UsageError(f"--sequential refines the datta method; drop it or use --method datta "
                         f"(not {args.method})")
    check_method_options(config, args.method, cli=True)    # options of a search it skips
    check_search_limits(config, args.timesteps, args.method)
    if args.unit_thresholds and args.deploy is None:
        raise UsageError("--unit-thresholds shapes the deploy graph: pass --deploy FILE too")
    if args.batch_chunk is not None and args.deploy is None:
        raise UsageError("--batch-chunk shapes the deploy graph: pass --deploy FILE too")
    if args.deploy is not None and args.timesteps > DEPLOY_MAX_TIMESTEPS:
        raise UsageError(f"--deploy: a deploy graph holds one copy of the time step per step, at "
                         f"most {DEPLOY_MAX_TIMESTEPS} (DEPLOY_MAX_TIMESTEPS), not -T "
                         f"{args.timesteps}; drop --deploy (the spiking model runs any T)")
    out = args.output if args.output is not None else _default_output(args.model)
    calib = _data_or_recorded(args.calib, args, "--calib", need="calibration")
    _check_mean_std(args, calib)
    inputs = _inputs(args.model, calib, args.data_dir)
    outputs = _with_external_data(args.model, [(out, "-o"), (args.step_graph, "--step-graph"),
                                               (args.deploy, "--deploy")]) + [(args.report, "--report")]
    targets = _check_outputs(inputs, *outputs)   # fail before the work
    snn = convert(args.model, calib, timesteps=args.timesteps, method=args.method, config=config,
                  batch_size=args.batch_size, sample_size=args.sample_size,
                  calib_samples=args.calib_samples or None, mean=args.mean, std=args.std,
                  data_dir=args.data_dir, seed=args.seed, show_progress=not args.quiet,
                  download=args.download, pool_first=args.pool_first,
                  outputs=args.keep_outputs,
                  reconstruct=auto_reconstruct.AUTO if args.reconstruct is None else args.reconstruct,
                  reconstruct_budget=args.reconstruct_budget)
    # (the notes that are warnings were logged, -q or not; with -q, those of the inputs and
    # outputs are said too: onnx_snn/notes.py)
    for note in snn.report.get("notes", snn.normalized.notes):
        if not note.startswith(WARNING_NOTE) and (not args.quiet
                                                  or note.startswith(INTERFACE_NOTE)):
            print(f"note: {unmarked(note)}", file=sys.stderr)
    rows = [[r["name"], r["idiom"], "x".join(map(str, r["shape"])), f"{r['mu']:.4g}",
             _param(r["alpha"], ".4f"), _param(r["beta"], ".4f"), _param(r["threshold"], ".4g"),
             _param(r["amplitude"], ".4g"), _param(r["v_init"], ".4g"),
             f"{r['objective_value']:.4g}"]
            for r in snn.report["sites"]]
    if not args.quiet:
        print(_fmt_table(["site", "idiom", "shape", "mu", "alpha", "beta", "threshold",
                          "amplitude", "v_init", snn.report["objective"]], rows))
    # every output in memory first, then all written together (all or none)
    # (a model whose source kept its weights in external data, or of 2 GB or more, is two
    # files: the model and <name>.data)
    items = snn.files(targets[str(out)], binary_spikes=args.binary_spikes)
    if args.step_graph is not None:
        items += snn.files(targets[str(args.step_graph)], step=True,
                           binary_spikes=args.binary_spikes)
    if args.deploy is not None:
        items += snn.files(targets[str(args.deploy)], binary_spikes=args.binary_spikes,
                           deploy=True, unit_thresholds=args.unit_thresholds,
                           batch_chunk=args.batch_chunk)
    written = set(targets.values())
    items = [(p if p in written else check_output_path(p, *inputs, *written), data)
             for p, data in items]
    if args.report is not None:
        items.append((targets[str(args.report)], snn.report_bytes()))
    write_all_atomic(items)
    if args.binary_spikes and not args.quiet:
        for site, what in snn.report["binary_spikes"].items():
            print(f"binary spikes: {site} {what}", file=sys.stderr)
    cal, refined = snn.report["calibration"], snn.report.get("sequential", {}).get("seconds")
    print(f"wrote {out} ({snn.method}, T={args.timesteps}, {len(rows)} spiking layers; "
          f"calibrated on {cal['samples']} samples in {cal['seconds']:.1f} s"
          + (f", refined in {refined:.1f} s" if refined is not None else "")
          + (_reconstructed(snn.report["reconstruction"]) if "reconstruction" in snn.report
             else "") + ")")
    return 0


def _reconstructed(record: dict) -> str:
    """The reconstruction's part of convert's last line."""
    if "skipped" in record:
        return f", not reconstructed: {record['skipped']}"
    if not record.get("kept"):
        return f", reconstruction not kept: {record.get('why', '?')}"
    epochs, images = record["epochs"], record.get("images")
    held = record.get("held_out") or {}
    before, after = (held.get(k) or {} for k in ("before", "after"))
    checked = ""
    if "dnn_agreement" in before and "dnn_agreement" in after:
        checked = (f"; agrees with the DNN on {100 * after['dnn_agreement']:.1f} % of "
                   f"{held['images']} held-out samples, the conversion on "
                   f"{100 * before['dnn_agreement']:.1f} %")
    return (f", reconstructed in {record['seconds']:.1f} s ({epochs} epoch{'s' if epochs != 1 else ''}"
            + (f" of {images} images" if images else "") + checked + ")")


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .model_io import write_all_atomic

    data = _data_or_recorded(args.data, args, need="evaluation")
    _check_mean_std(args, data)
    targets = _check_outputs(_inputs(args.model, data, args.data_dir), (args.json, "--json"))
    r = evaluate(args.model, data, timesteps=args.timesteps, batch_size=args.batch_size,
                 limit=args.limit, mean=args.mean, std=args.std, data_dir=args.data_dir,
                 show_progress=not args.quiet, download=args.download, output=args.output)
    for note in ([] if args.quiet else r.notes):
        print(f"note: {note}", file=sys.stderr)
    if r.outputs > 1 and r.top1 is not None and not args.quiet and args.output is None:
        print(f"note: top-1 of the first output '{r.scored_output}' (the model has {r.outputs} "
              "outputs; --output NAME scores another)", file=sys.stderr)
    if r.sites and not args.quiet:
        rows = [[s.name, s.neurons, f"{s.spikes_per_sample:.1f}", f"{s.spikes_per_neuron:.4f}",
                 f"{s.rate:.4f}"] for s in r.sites.values()]
        rows += [[f"{p.name} (max pool output)", p.neurons, f"{p.spikes_per_sample:.1f}",
                  f"{p.spikes_per_neuron:.4f}", f"{p.rate:.4f}"] for p in r.pools.values()]
        print(_fmt_table(["site", "neurons", "spikes/sample", "spikes/neuron", "rate/step"], rows))
    what = f"SNN ({r.method}, T={r.timesteps})" if r.kind == "snn" else "DNN"
    if r.top1 is not None:
        print(f"{what} top-1: {r.top1:.2f}% ({r.correct}/{r.samples}) in {r.seconds:.1f} s"
              + (f"; mean spike rate {r.mean_rate:.4f} per neuron per step" if r.sites else ""))
    else:
        print(f"{what}: ran {r.samples} unlabeled samples in {r.seconds:.1f} s")
    if args.json is not None:
        write_all_atomic([(targets[str(args.json)], (r.to_json() + "\n").encode("utf-8"))])
    return 0


def _metadata_value(text: str):
    """A metadata value as JSON when it is a JSON list or object, else the text itself."""
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def cmd_info(args) -> int:
    from .convert import check_recorded_timesteps
    from .datasets import check_preprocess
    from .model_io import load_model
    from .spiking.format import (GRAPH_DEPLOY, META_BINARY, META_DATASET, is_spiking, metadata,
                                 read_info, require_spiking)

    model = load_model(args.model)
    # the metadata and the graph checked (exit 3 if damaged; a deploy graph: the metadata only,
    # it has no neuron calls)
    deployed = is_spiking(model) and read_info(model, args.model).graph == GRAPH_DEPLOY
    info = read_info(model, args.model) if deployed else require_spiking(model, args.model)
    preprocess = check_preprocess(info.preprocess, args.model)   # (as eval reads it)
    check_recorded_timesteps(info.timesteps, args.model)   # what eval and deploy would refuse
    binary = _metadata_value(metadata(model).get(META_BINARY, "{}"))   # checked by read_info
    if args.json:
        print(json.dumps({k: _metadata_value(v) for k, v in metadata(model).items()}, indent=2))
        return 0
    from .convert import fitted_timesteps
    fitted = fitted_timesteps(info)
    print(f"{args.model}: spiking ONNX format v{info.format_version}, T={info.timesteps}"
          + (f" (its parameters were fitted for T={fitted})" if fitted not in (None, info.timesteps)
             else "") + f", method={info.method}, graph={info.graph}")
    signed = any(s.signed for s in info.sites)     # a neuron column only where it says something
    rows = [[s.name, "x".join(map(str, s.shape)), s.neurons, f"{s.mu:.4g}",
             _param(s.threshold, ".4g"), _param(s.amplitude, ".4g"), _param(s.leak, ".4g"),
             _param(s.v_init, ".4g")] + ([s.neuron] if signed else []) for s in info.sites]
    print(_fmt_table(["site", "shape", "neurons", "mu", "threshold", "amplitude", "leak", "v_init"]
                     + (["neuron"] if signed else []), rows))
    if isinstance(binary, dict) and binary:
        folded = [k for k, v in binary.items() if v == "folded"]
        print(f"binary spikes (--binary-spikes): amplitudes folded into the next layer at "
              f"{', '.join(folded) or 'no site'}"
              + "".join(f"; {k} kept: {v.removeprefix('kept: ')}" for k, v in binary.items()
                      if v != "folded"))
    # what eval and finetune read from the file when not told otherwise
    if preprocess:
        print("preprocessing: mean " + ", ".join(f"{v:g}" for v in preprocess["mean"])
              + ", std " + ", ".join(f"{v:g}" for v in preprocess["std"]))
    else:
        print("preprocessing: none recorded (a named dataset is fed as raw [0, 1] pixels "
              "unless --mean/--std is given; arrays are taken as given)")
    dataset = metadata(model).get(META_DATASET)
    if dataset:
        print(f"dataset: {dataset} (what eval and finetune read when no --data is given)")
    for h in info.history:
        print("history: " + json.dumps(h))
    return 0


def finetune_outcome(r) -> str:
    """What happened to the output file, for finetune's result line."""
    if r.written:
        return f"wrote {r.output}"
    standing = getattr(r, "existing_top1", None)
    if standing is not None and r.best_top1 <= standing and \
            (r.initial_top1 is None or standing > r.initial_top1):
        return (f"no epoch beat the top-1 of the existing {r.output} ({standing:.2f}%), it was "
                "left as it was")
    if r.resumed_after is not None:
        ran = len(r.epochs) > r.resumed_after      # the history holds every epoch of the run
        done = "" if ran else f"the checkpoint had run all {r.resumed_after} epochs: "
        if r.best_epoch == 0:
            return f"{done}no epoch has beaten the starting top-1; {r.output} is as the first call left it"
        return (f"{done}{r.output} holds the run's best model (epoch {r.best_epoch}), "
                "written before this resumed call; nothing was written")
    return f"no epoch beat the starting top-1, {r.output} was left as it was"


def cmd_finetune(args) -> int:
    from .errors import MissingDependencyError, TrainingDivergedError, UsageError
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError("fine-tuning needs PyTorch: pip install 'onnx-snn[torch]'") from None
    from .model_io import model_files, write_all_atomic
    from .runtimes.torch.finetune import FinetuneConfig, finetune
    from .runtimes.torch.teacher import source_dnn_of

    if not args.teacher and (args.distill is not None or args.temperature is not None):
        raise UsageError("--distill and --temperature set the distillation: they need --teacher")
    if args.warmup is not None and args.schedule != "cosine":
        raise UsageError(f"--warmup sets the cosine schedule's warm-up, which --schedule "
                         f"{args.schedule} does not have; drop it or use --schedule cosine")
    plot_fmt = _plot_format_or_refuse(args.plot)

    _spiking_first(args.model)
    data = _data_or_recorded(args.data, args, need="training")
    _check_mean_std(args, data)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         timesteps=args.timesteps, weight_decay=args.weight_decay,
                         augment=args.augment and not args.no_augment, seed=args.seed,
                         device=args.device,
                         surrogate=args.surrogate,
                         teacher=args.teacher or None,
                         distill=1.0 if args.distill is None else args.distill,
                         temperature=1.0 if args.temperature is None else args.temperature,
                         limit_train=args.limit_train, limit_test=args.limit_test,
                         train_initial=args.train_initial, loss=args.loss,
                         dropout=not args.no_dropout,
                         schedule=args.schedule,
                         **({} if args.warmup is None else {"warmup": args.warmup}))
    quiet = getattr(args, "quiet", False)
    checkpoint = args.checkpoint if args.checkpoint is not None else str(args.output) + ".ckpt.pt"
    teacher = source_dnn_of(args.model) if args.teacher == "auto" else args.teacher
    targets = _check_outputs(_inputs(args.model, data, args.data_dir)   # never overwrite the teacher
                             + (_inputs(args.model, args.test_data, args.data_dir)
                                if args.test_data else [])
                             + (model_files(teacher) if teacher else []),
                             *_with_external_data(args.model, [(args.output, "-o")]),
                             (args.json, "--json"), (checkpoint, "--checkpoint"),
                             (args.plot, "--plot"))
    PENDING[:] = [f"{p} ({flag})" for p, flag in ((args.json, "--json"), (args.plot, "--plot"))
                  if p is not None]
    try:
        r = finetune(args.model, args.output, data, cfg, data_dir=args.data_dir,
                     resume=args.resume, download=args.download, checkpoint=checkpoint,
                     show_progress=not quiet, log=_finetune_log(quiet), mean=args.mean,
                     std=args.std, test_data=args.test_data)
    except TrainingDivergedError as e:      # the epochs before it explain it: --json has them
        record = getattr(e, "record", None)
        if record is None or (args.json is None and args.plot is None) or \
                int(os.environ.get("RANK", "0")) != 0:
            raise
        items, said = [], []
        if args.json is not None:
            items.append((targets[str(args.json)],
                          (json_text.dumps(record) + "\n").encode("utf-8")))
            said.append(f"the run's record up to it is in {args.json}")
        if args.plot is not None and record.get("epochs"):
            from .runtimes.torch.curves import curves_png, diverged_result
            items.append((targets[str(args.plot)],
                          curves_png(diverged_result(record), plot_fmt,
                                     title=os.path.basename(str(args.model)))))
            said.append(f"its curves up to it in {args.plot}")
        elif args.plot is not None:
            said.append(f"--plot {args.plot} not written: no epoch completed")
        write_all_atomic(items)
        PENDING.clear()
        raise TrainingDivergedError(f"{e}; " + "; ".join(said)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        before = f"{r.initial_top1:.2f}% -> " if r.initial_top1 is not None else ""
        wrote = finetune_outcome(r)
        print(f"fine-tuned T={r.timesteps}: top-1 {before}{r.best_top1:.2f}% (best epoch "
              f"{r.best_epoch}); {r.seconds_per_epoch:.1f} s per epoch; {wrote}")
        items = []
        if args.json is not None:
            items.append((targets[str(args.json)],
                          (json_text.dumps(r.to_dict()) + "\n").encode("utf-8")))
        if args.plot is not None:
            from .runtimes.torch.curves import curves_png
            items.append((targets[str(args.plot)],
                          curves_png(r, plot_fmt, title=os.path.basename(str(args.model)))))
        write_all_atomic(items)
        PENDING.clear()
        if args.plot is not None and not quiet:
            print(f"wrote {args.plot}")
    return 0


def _plot_format_or_refuse(path):
    """The format of ``--plot PATH`` (None without one), and matplotlib's presence, checked
    before any work."""
    if path is None:
        return None
    from .analyze.report import plot_format
    from .errors import MissingDependencyError
    fmt = plot_format(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install 'onnx-snn[plot]'") from None
    return fmt


def cmd_analyze(args) -> int:
    from .analyze import ENERGY_PRESETS, analyze, format_table
    from .analyze.energy import check_dnn
    from .analyze.report import plot_png
    from .datasets import check_preprocess
    from .errors import UsageError
    from .model_io import load_model, write_all_atomic
    from .spiking.format import is_spiking, require_spiking

    data = args.data
    if data is None and not args.rates:
        data = _data_or_recorded(None, args)
    elif data is not None:
        _note_other_data(data, args)
    _check_mean_std(args, data)
    targets = _check_outputs(_inputs(args.model, data, args.data_dir, extra=[args.rates, args.dnn]),
                             (args.json, "--json"), (args.plot, "--plot"))
    plot_fmt = _plot_format_or_refuse(args.plot)
    model = load_model(args.model)
    checked, T = None, None   # the rates as analyze() is given them (with their model and T)
    info = None
    if is_spiking(model):   # the whole model checked before any work (a deploy graph refused)
        info = require_spiking(model, args.model)
        check_preprocess(info.preprocess, args.model)
    if args.rates:
        given = [o for o, v in (("--data", args.data), ("--limit", args.limit),
                                ("--mean", args.mean), ("--std", args.std)) if v is not None]
        if given and info is not None:   # a DNN's --data fixes its free sizes: used
            raise UsageError(f"--rates gives the spike rates, and {'/'.join(given)} would "
                             "record new ones on data: pass one or the other")
        from .analyze.energy import check_rate_file, parse_rates, rate_neurons, read_rate_json
        obj = read_rate_json(args.rates)
        rates, T = parse_rates(obj, str(args.rates))
        check_rate_file(args.rates, T, rate_neurons(obj), info, args.timesteps, args.model,
                        obj.get("model_fingerprint"))
        # the file's JSON, which analyze() checks again and whose warnings (how the rates were
        # measured) it repeats; a file without T: a plain mapping, unchecked, noted
        checked = obj if T is not None else rates
    elif is_spiking(model):
        if data:
            from .evaluate import evaluate
            if args.dnn:      # a --dnn it would refuse, refused before the run on the data
                check_dnn(model, args.dnn, where=str(args.model))
            r = evaluate(model, data, timesteps=args.timesteps, limit=args.limit,
                         mean=args.mean, std=args.std, data_dir=args.data_dir,
                         show_progress=not getattr(args, "quiet", False), download=args.download,
                         where=str(args.model), top1=None)
            checked, T = r, r.timesteps   # recorded here on this model: checked as eval's
            print(f"recorded spike rates on {r.samples} samples of {data}"
                  + (f" (SNN top-1 {r.top1:.2f}%)" if r.top1 is not None else ""))
    shapes = None
    if data and not is_spiking(model):   # a DNN: its data fixes the input sizes it leaves free
        from .feeds import input_specs
        if any(d is None for _, dims in input_specs(model) for d in dims[1:]):
            shapes = _data_input_shapes(model, data, args)
        elif args.data and not args.quiet:
            print(f"note: {args.model}'s input sizes are fixed, and a DNN's operations do not "
                  f"depend on its data: --data {args.data} is not used (spike rates come from "
                  "a spiking model's run on it)", file=sys.stderr)
    spiking = is_spiking(model)
    if args.limit is not None and not (data and spiking and not args.rates) and not args.quiet:
        print(f"note: --limit {args.limit} is not used: no data is run here (a spiking model "
              "runs --data, or the dataset it records, to record spike rates; "
              + ("this one has no data to run" if spiking else "a DNN has none to record") + ")",
              file=sys.stderr)
    mac, ac = ENERGY_PRESETS[args.preset]
    result = analyze(model, checked, args.timesteps or T, args.mac_pj or mac, args.ac_pj or ac,
                     dnn_model=args.dnn, input_shapes=shapes, where=str(args.model),
                     rates_source=str(args.rates) if args.rates else None)
    print(format_table(result, notes=not args.quiet))
    items = []
    if args.json is not None:
        items.append((targets[str(args.json)], (result.to_json() + "\n").encode("utf-8")))
    if args.plot is not None:
        items.append((targets[str(args.plot)], plot_png(result, fmt=plot_fmt)))
    write_all_atomic(items)
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _data_input_shapes(model, data, args) -> dict:
    """{input: [1, ...]} from one sample of ``data`` (analyze of a DNN with free sizes)."""
    from .convert import resolve_data
    from .feeds import input_specs, validate_feeds
    from .evaluate import _dnn_preprocess
    specs = input_specs(model)
    ds = resolve_data(data, _dnn_preprocess(model, str(args.model)), args.mean, args.std,
                      data_dir=args.data_dir, split="test", download=args.download, specs=specs, take=(1, None)).take(1)
    feeds = validate_feeds(specs, ds.x, f"{ds.name} data")
    return {k: [1] + list(v.shape[1:]) for k, v in feeds.items()}


def cmd_deploy(args) -> int:
    from .spiking.deploy import deploy
    out = args.output if args.output is not None else \
        _default_output(args.model, ".deploy.onnx", strip=(".snn.onnx", ".onnx"))
    targets = _check_outputs(_inputs(args.model),                 # fail before the work
                             *_with_external_data(args.model, [(out, "-o")]))
    m = deploy(args.model, targets[str(out)], timesteps=args.timesteps,
               spike_counts=args.spike_counts, unit_thresholds=args.unit_thresholds,
               batch_chunk=args.batch_chunk)
    from .spiking.format import read_info
    info = read_info(m, str(out))
    from .graph import walk
    from .spiking import format as fmt
    step = json.loads(fmt.metadata(m).get(fmt.META_HISTORY, "[]"))[-1]
    chunked = (f", {step['batch_chunk']} samples per run" if step.get("batch_chunk") else
               f"; the batch runs whole: {step['batch_chunk_note']}" if step.get("batch_chunk_note") else "")
    print(f"wrote {out} (deploy graph: T={info.timesteps}, {len(info.sites)} spiking layers, "
          f"{len(walk.all_nodes(m.graph))} nodes{', spike counts' if args.spike_counts else ''}"
          f"{chunked})")
    return 0



COMMANDS = {"convert": cmd_convert, "eval": cmd_eval, "info": cmd_info, "finetune": cmd_finetune,
            "analyze": cmd_analyze, "deploy": cmd_deploy}


def _named_stdout(e: OSError):
    """An error writing standard output (``> /dev/full``: no space) raised naming it: the
    error line said 'a file'."""
    if e.filename is None:
        e.filename = "standard output"
    raise e


class _PipeSafeStdout:
    """stdout that goes quiet when its reader has gone (``onnx-snn info m | head -c1``): the
    command still finishes, and no BrokenPipeError is shown."""

    def __init__(self, stream):
        self._s = stream
        self._broken = False

    def write(self, text):
        if not self._broken:
            try:
                return self._s.write(text)
            except BrokenPipeError:
                self._went_away()
            except OSError as e:
                _named_stdout(e)
        return len(text)

    def flush(self):
        if not self._broken:
            try:
                self._s.flush()
            except BrokenPipeError:
                self._went_away()
            except OSError as e:
                _named_stdout(e)

    def _went_away(self):
        self._broken = True
        try:   # later flushes of the real stdout (at exit too) go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._s.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def isatty(self):
        return False if self._broken else self._s.isatty()

    def __getattr__(self, name):
        return getattr(self._s, name)


@contextlib.contextmanager
def _guarded_stdout():
    real = sys.stdout
    guard = _PipeSafeStdout(real) if real is not None else None
    if guard is not None:
        sys.stdout = guard
    try:
        yield
    finally:
        if guard is not None:
            guard.flush()
            if sys.stdout is guard:
                sys.stdout = real


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so that the clean-up SIGINT
    gets (temporary files removed) runs for it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Optional[List[str]] = None) -> int:
    from .model_io import IN_COMMAND, WRITTEN
    WRITTEN.clear()
    PENDING.clear()
    with _guarded_stdout(), _sigterm_raises():
        try:
            IN_COMMAND["active"] = True
            return _main(argv)
        except Terminated:
            print("onnx-snn: terminated" + _complete(WRITTEN, PENDING), file=sys.stderr)
            return Terminated.exit_code
        except KeyboardInterrupt:
            print("onnx-snn: interrupted" + _complete(WRITTEN, PENDING), file=sys.stderr)
            return 130
        finally:
            IN_COMMAND["active"] = False


#: outputs a command writes after others it has already put in place (fine-tuning's --json
#: and --plot, after its model): a signal between them leaves these out, and says so
PENDING: List[str] = []


def _complete(written: List[str], pending: Sequence[str] = ()) -> str:
    """What a signal that came after the outputs were put in place leaves: they are whole
    (written all or none, the signal held during the renames), and a script that reads the
    exit status alone would take them for missing; ``pending``: those not written yet."""
    done = list(dict.fromkeys(written))     # (fine-tuning rewrites its model at each best epoch)
    text = (f" after writing {', '.join(done)}, which {'is' if len(done) == 1 else 'are'} "
            "complete") if done else ""
    if done and pending:
        text += f"; not written: {', '.join(dict.fromkeys(pending))}"
    return text


def _main(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # a path written as --calib=~/x.npy (or quoted) reaches us with its "~": the shell
    # expands it only at the start of a word
    for key, value in vars(args).items():
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, os.path.expanduser(value))
    if not args.command:
        parser.error("a command is required: convert, eval, info, finetune, analyze or demo "
                     "(onnx-snn COMMAND --help)")
    other_rank = _other_rank()
    if other_rank:
        args.quiet = True
    if args.quiet:
        os.environ["ONNX_SNN_PROGRESS"] = "0"
    logging.basicConfig(level=logging.ERROR if other_rank else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    handler = COMMANDS.get(args.command)
    if handler is None:
        from .demo import cmd_demo
        handler = cmd_demo
    shown = warnings.showwarning
    # a Python warning reads like the logged ones (no file, line and category of the code)
    warnings.showwarning = (lambda *a, **k: None) if other_rank else \
        (lambda message, *a, **k: print(f"WARNING: {message}", file=sys.stderr))
    try:
        try:
            return handler(args)
        except BaseException:
            from .progress import Progress
            Progress.close_open()    # the error on a line of its own, not after a bar
            raise
    except OnnxSnnError as e:
        print(f"onnx-snn: error: {shortened(str(e))}", file=sys.stderr)
        return e.exit_code
    except MemoryError:
        print(OUT_OF_MEMORY, file=sys.stderr)
        return 1
    except Exception as e:      # onnxruntime failing inside a run: one line, not a traceback
        from .errors import (OutputPathError, UnsupportedModelError, first_line,
                             is_onnxruntime_error)
        if _out_of_memory(e):      # (PyTorch's: a RuntimeError, not a MemoryError)
            print(OUT_OF_MEMORY + f" ({first_line(e)[:200]})", file=sys.stderr)
            return 1
        if isinstance(e, OSError) and e.errno is not None:    # the system refused: said so
            print(f"onnx-snn: error: {e.filename or 'a file'}: {e.strerror or e} (the system "
                  "refused it: check the disk's space and the file's permissions)",
                  file=sys.stderr)
            return OutputPathError.exit_code if e.errno in _WRITE_ERRNOS else 70
        if not is_onnxruntime_error(e):
            return _internal_error(e)
        print(f"onnx-snn: error: {getattr(args, 'model', 'the model')}: onnxruntime failed "
              f"running the model: {first_line(e)[:400]}", file=sys.stderr)
        return UnsupportedModelError.exit_code
    finally:
        warnings.showwarning = shown


#: set to 1 to see an internal error's traceback on stderr instead of in a file
TRACEBACK_ENV = "ONNX_SNN_TRACEBACK"
OUT_OF_MEMORY = "onnx-snn: error: out of memory; lower -T, --batch-size or the sample sizes"
#: an OSError of these numbers is a write the system refused (exit 6, as an output path's)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES,
                 errno.EPERM}


def _out_of_memory(e: BaseException) -> bool:
    """PyTorch's out of memory (torch.OutOfMemoryError, a RuntimeError; a CPU allocation's
    "can't allocate memory")."""
    text = str(e).lower()
    return type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and ("out of memory" in text
                                         or "can't allocate memory" in text))


def _internal_error(e: BaseException) -> int:
    """An exception no check foresaw (a bug here): one line that says so, the traceback in a
    file of the system's temporary folder (or on stderr with $ONNX_SNN_TRACEBACK=1), and
    InternalError's exit code (70), not 1, which says out of memory."""
    import tempfile
    import traceback
    from .errors import InternalError, first_line
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    where = None
    if os.environ.get(TRACEBACK_ENV, "").strip() in ("1", "yes", "true", "on"):
        sys.stderr.write(text)
    else:
        try:
            with tempfile.NamedTemporaryFile("w", prefix="onnx-snn-error-", suffix=".txt",
                                             delete=False) as f:
                f.write(f"onnx-snn {__version__}: {' '.join(sys.argv)}\n{text}")
                where = f.name
        except OSError:
            sys.stderr.write(text)
    print(f"onnx-snn: error: internal error (a bug in onnx-snn, not in your input): "
          f"{type(e).__name__}: {first_line(e)[:300]}; "
          + (f"the traceback is in {where}; " if where else "")
          + "please report it with the command and the model", file=sys.stderr)
    return InternalError.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
