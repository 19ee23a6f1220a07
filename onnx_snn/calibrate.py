"""Record each site's pre-activations with onnxruntime, in bounded memory.

The normalized DNN is run with every site's pre-activation exposed as an extra output. For
each site we keep exact running statistics (count, positives, min, max) and a stratified
uniform sample of at most ``sample_size`` values (one from each of ``sample_size`` equal
strata of the values in calibration order, whatever the batch size), so memory is bounded by ``sites * sample_size`` floats whatever the model and the
calibration-set size. The (alpha, beta) search then runs on the sorted sample.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import onnx

from .datasets import Dataset, is_inputs_labels
from .feeds import fixed_batch, input_specs, validate_feeds
from .errors import DataError, UnsupportedModelError, UsageError, first_line
from .flags import checks_flags
from .values import is_int
from .graph.canonical import AUTO_PAD_OPS
from .graph.ir import written_pads
from .graph.normalize import NormalizedModel
from .progress import Progress

log = logging.getLogger("onnx_snn")

DEFAULT_SAMPLE_SIZE = 1_000_000   # values kept per site for the search
DEFAULT_BATCH_SIZE = 64           # calibration batch
DEFAULT_CALIB_SAMPLES = 512       # samples drawn from the calibration data


@dataclass
class SiteStats:
    """What calibration recorded for one site's pre-activation ``h``."""

    name: str
    shape: tuple            # per-sample shape (without the batch axis)
    count: int              # values seen
    n_positive: int         # values > 0
    min: float
    max: float
    sample: np.ndarray      # sorted float32 sample of h (all values when count <= sample_size)

    @property
    def neurons(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def positive_fraction(self) -> float:
        return self.n_positive / self.count if self.count else 0.0


@dataclass
class Calibration:
    sites: Dict[str, SiteStats]
    n_samples: int
    sample_size: int
    seconds: float
    batch_size: int
    input_shapes: Dict[str, tuple] = field(default_factory=dict)   # per-sample, calibrated
    inputs: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)  # the data itself
    #: the model's batch axis is fixed (``batch_size`` is that size, never another)
    fixed_batch: bool = False
    #: :func:`model_key` of the model calibrated: :func:`~onnx_snn.convert.build` refuses the
    #: calibration for another one (its sites may have the same names)
    model_key: Optional[str] = None
    #: the data's name when calibrate() was given a dataset name, file or folder (build()
    #: records it in the history as ``calibration_data``, as convert() does)
    data_name: Optional[str] = None


def model_key(model: onnx.ModelProto) -> str:
    """A short fingerprint of a normalized model: its nodes, its weights' names and shapes,
    and a few bytes of each weight (start, middle, end), cheap for any size."""
    import hashlib
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(f"{n.op_type}|{','.join(n.input)}|{','.join(n.output)};".encode())
    for t in model.graph.initializer:
        h.update(f"{t.name}|{list(t.dims)}|{t.data_type};".encode())
        data = t.raw_data if t.HasField("raw_data") else b""
        if data:
            mid = len(data) // 2
            h.update(data[:64] + data[mid:mid + 64] + data[-64:])
        else:
            h.update(t.SerializeToString()[:4096])
    return h.hexdigest()[:16]


def quiet_onnxruntime() -> None:
    """Silence onnxruntime's process-wide default logger below errors: sessions this project
    creates, and those onnx-graphsurgeon creates for constant folding, print no warnings."""
    import onnxruntime as ort
    ort.set_default_logger_severity(3)


@functools.lru_cache(maxsize=None)
def interruptible_session():
    """``onnxruntime.InferenceSession`` whose ``run`` a signal stops: called from the main
    thread it runs in a worker thread while the main thread waits, so that SIGINT's and
    SIGTERM's handlers run at once (not when onnxruntime returns: one run of a loop graph at
    T = 4096 took minutes, and ``eval`` went on for a minute after a SIGTERM), and then sets
    the run's ``RunOptions.terminate``, which onnxruntime checks between kernels; the signal's
    exception is raised when the worker has stopped. Only within a command of the command
    line (``model_io.IN_COMMAND``), whose entry point then ends the process itself: a stopped
    session destroyed at the interpreter's shutdown aborts it (exit 134), and a thread a run
    costs about 0.1 ms. Elsewhere (the Python API, other threads), the plain ``run``."""
    import threading

    import onnxruntime as ort

    from .model_io import IN_COMMAND

    class InterruptibleSession(ort.InferenceSession):
        def run(self, output_names, input_feed, run_options=None):
            if not IN_COMMAND["active"] or \
                    threading.current_thread() is not threading.main_thread():
                return super().run(output_names, input_feed, run_options)
            opts = run_options if run_options is not None else ort.RunOptions()
            done: dict = {}
            parent = super()

            def work():
                try:
                    done["out"] = parent.run(output_names, input_feed, opts)
                except BaseException as e:      # (raised in the caller's thread below)
                    done["error"] = e
            worker = threading.Thread(target=work, name="onnxruntime-run", daemon=True)
            worker.start()
            try:
                while worker.is_alive():
                    worker.join(0.2)
            except BaseException:
                opts.terminate = True
                worker.join()
                raise
            if "error" in done:
                raise done["error"]
            return done["out"]
    return InterruptibleSession


def _same_padded(n: onnx.NodeProto) -> bool:
    """A Conv or pool of ``auto_pad`` SAME_UPPER/SAME_LOWER, not in ceil mode."""
    if n.op_type not in AUTO_PAD_OPS:
        return False
    pad = next((a.s.decode() for a in n.attribute if a.name == "auto_pad"), "NOTSET")
    return pad.startswith("SAME") and not next(
        (a.i for a in n.attribute if a.name == "ceil_mode"), 0)


#: onnxruntime's messages when it refuses, at run time, an ``auto_pad`` SAME_* form that
#: ONNX allows (``graph.canonical._refused_auto_pad``): a dilated Conv, a pool whose stride is
#: longer than its window on some sizes
AUTO_PAD_REFUSALS = ("Dilation not supported for AutoPadType", "padding values must be non-negative")


def _explicit_same_pads(data: bytes) -> bytes:
    """The serialized session skeleton ``data`` (weights outside it) with its Convs and pools
    of ``auto_pad`` SAME_UPPER/SAME_LOWER given the same padding written out in ``pads``,
    where their input's size is known (ONNX's rule, ``graph.ir.auto_pads``). onnxruntime
    computes some of these wrongly or not at all: a dilated Conv ("Dilation not supported for
    AutoPadType"), a pool whose windows need no padding but whose formula goes negative
    ("padding values must be non-negative"), so such a DNN could not even be evaluated (the
    converter writes all such pads out: ``canonical.auto_pads_to_explicit_pads``)."""
    sk = onnx.ModelProto.FromString(data)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk).graph
    except Exception:     # noqa: BLE001 -- no shapes: onnxruntime says what it says
        return data
    dims = {vi.name: [d.dim_value if d.HasField("dim_value") else None
                      for d in vi.type.tensor_type.shape.dim]
            for vi in list(inferred.input) + list(inferred.value_info)
            if vi.type.tensor_type.HasField("shape")}
    dims.update({t.name: list(t.dims) for t in sk.graph.initializer})
    changed = False
    for n in sk.graph.node:
        if not _same_padded(n):
            continue
        w = dims.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        pads = written_pads(n.op_type, {a.name: onnx.helper.get_attribute_value(a)
                                        for a in n.attribute}, dims.get(n.input[0]), w)
        if pads is None:
            continue
        keep = [a for a in n.attribute if a.name not in ("auto_pad", "pads")]
        del n.attribute[:]
        n.attribute.extend(keep + [onnx.helper.make_attribute("pads", pads)])
        changed = True
    return sk.SerializeToString() if changed else data


def make_session(model: onnx.ModelProto, threads: Optional[int] = None, providers=None,
                 where: str = "model", outputs: Sequence[str] = (), spin: bool = True,
                 arena: bool = True):
    """An onnxruntime session; a model onnxruntime rejects raises UnsupportedModelError.

    ``outputs``: tensors to expose besides the graph's outputs (each once, after them),
    without copying the model. ``spin=False``: onnxruntime's threads sleep between runs
    instead of spinning (for a session whose runs alternate with other compute in the same
    process, like a teacher beside PyTorch's training step: spinning made each pair of a
    7 ms run and a 7 ms torch product take 32 ms, not spinning 17 ms). ``arena=False``:
    onnxruntime frees each run's tensors instead of keeping the largest run's in its arena
    (for a session beside other large work: the reconstruction's DNN of 3 x 56 x 56 images
    kept 0.5 GB there through PyTorch's training).

    The weights are not serialized: onnxruntime gets the model's skeleton, whose large
    initializers refer to external data, and their data as arrays
    (``SessionOptions.add_external_initializers``, see :mod:`onnx_snn.graph.skeleton`),
    which it takes in before any graph optimization: the same session as from the whole
    serialized model, without two copies of the weights.

    onnxruntime's warnings are silenced: the session's own (``log_severity_level``) and those
    its graph loading and optimizers log through the process-wide default logger (a spiking
    model's overridable ``timesteps`` input is also an initializer, which onnxruntime warns
    about on every session; exporters' Unsqueeze nodes it cannot fold, ...)."""
    import onnxruntime as ort

    from .graph import skeleton

    quiet_onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = 4     # errors too: each failure is reported as one line
    if threads is not None:
        if not is_int(threads) or threads < 0:
            raise UsageError(f"threads must be a whole number of threads >= 0 (0 or None: "
                             f"onnxruntime's default), not {threads!r}")
        so.intra_op_num_threads = int(threads)
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not arena:
        so.enable_cpu_mem_arena = False
    data = None                 # the serialized skeleton, once session_parts has made it
    try:
        data, names, arrays = skeleton.session_parts(model, outputs)
        if any(_same_padded(n) for n in model.graph.node):     # (the skeleton: no weights)
            data = _explicit_same_pads(data)
        if names:
            so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
        sess = interruptible_session()(data, so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        if "NOT_IMPLEMENTED" in str(e):       # no float64 / float16 kernel for an op
            from .graph.precision import in_float32
            lowered = in_float32(model)
            if lowered is not None:
                log.warning("%s: onnxruntime has no kernel for one of its ops in the model's "
                            "float type (%s); it runs computed in float32, as the conversion "
                            "computes it", where, first_line(e)[:200])
                return make_session(lowered, threads, providers, where, outputs, spin, arena)
        shapes = any(k in str(e) for k in ("ShapeInferenceError", "TypeInferenceError",
                                           "Incompatible dimensions", "MergeShapeInfo"))
        bare = _without_annotations(data) if shapes and data is not None else None
        if bare is None:
            raise _session_failure(model, e, where) from None
        try:    # the producer's shape annotations may be what onnxruntime refused
            sess = interruptible_session()(bare, so, providers=providers or ["CPUExecutionProvider"])
        except Exception:
            raise _session_failure(model, e, where) from None
        log.warning("%s: the model's shape annotations (value_info, the outputs' shapes) do "
                    "not fit its graph, so onnxruntime refused it; it runs without them (they "
                    "are hints: the conversion recomputes them too)", where)
    if names:
        # onnxruntime copied the arrays while loading (they may go now); a session re-created
        # from the same options (its fallback after a provider failure) would read them again
        sess.disable_fallback()
    return sess


class StratifiedStream:
    """A stratified uniform sample of ``min(k, total)`` positions of a stream of ``total``
    values: one position drawn uniformly from each of ``k`` equal strata (every position
    when ``k >= total``), in stream order. :meth:`take` gives the positions among the next
    ``n`` values; the positions depend on ``total``, ``k`` and ``rng`` alone, not on how the
    stream is cut, so a conversion samples the same values at any ``--batch-size``. Only
    the strata that reach into the values taken so far are drawn (memory: one batch's)."""

    def __init__(self, rng: np.random.Generator, total: int, k: int):
        self.rng, self.total, self.k = rng, int(total), min(int(k), int(total))
        self.seen = 0
        self.drawn = 0                                   # strata whose position is drawn
        self.pending = np.zeros(0, np.int64)            # drawn positions not yet reached

    def _start(self, j: np.ndarray) -> np.ndarray:
        """floor(j * total / k), without the int64 product (it passes 2^63 for a large
        sample of a large set: 10^7 values of 290 000 ImageNet images' 224 x 224 x 64 site)."""
        q, r = divmod(self.total, self.k)
        return j * q + (j * r) // self.k

    def take(self, n: int) -> np.ndarray:
        """The sampled positions among the next ``n`` values, relative to their start."""
        lo, hi = self.seen, self.seen + int(n)
        self.seen = hi
        if self.k >= self.total:
            return np.arange(n, dtype=np.int64)
        # the strata that start before ``hi``: j * total // k < hi  <=>  j < ceil(hi k / total)
        upto = min(self.k, -(-hi * self.k // self.total))
        if upto > self.drawn:
            j = np.arange(self.drawn, upto, dtype=np.int64)
            start, width = self._start(j), self._start(j + 1) - self._start(j)
            off = np.minimum((self.rng.random(len(j)) * width).astype(np.int64), width - 1)
            self.pending = np.concatenate([self.pending, start + off])
            self.drawn = upto
        cut = int(np.searchsorted(self.pending, hi))
        got, self.pending = self.pending[:cut], self.pending[cut:]
        return got - lo


class _Sampler:
    """Stratified uniform sample of a stream of values with a known total count
    (:class:`StratifiedStream`, with a generator of its own, so that the sites' draws do not
    interleave by batch)."""

    def __init__(self, sample_size: int, total: int, rng: np.random.Generator):
        self.stream = StratifiedStream(np.random.default_rng(int(rng.integers(1 << 62))),
                                       total, sample_size)
        self.parts = []

    def add(self, values: np.ndarray) -> None:
        idx = self.stream.take(values.size)
        if idx.size:
            self.parts.append(values.reshape(-1)[idx])

    def result(self) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        out.sort()
        return out


def check_varied(feeds: Dict[str, np.ndarray], say: bool = False) -> None:
    """Calibration data that cannot show the DNN's activations: a DataError where every
    input holds one value throughout (all zeros, say: each layer's mu and thresholds would
    come from a single activation per neuron, and the conversion would not fit real inputs;
    one constant input beside others, a mask say, is fine), and a warning (``say``) where the
    samples are all the same."""
    arrays = [np.asarray(v) for v in feeds.values()]
    if not arrays or any(a.size == 0 for a in arrays):
        return
    # (varied data differs between its first two samples, mostly: no pass over it all)
    if any(len(a) > 1 and not np.array_equal(a[0], a[1]) for a in arrays):
        return
    if not all(np.all(a == a[:1]) for a in arrays):
        return
    n = len(arrays[0])
    if all(np.min(a[0]) == np.max(a[0]) for a in arrays):   # (every sample is the first)
        values = ", ".join(f"'{k}' is {np.asarray(v).flat[0].item():g}" for k, v in feeds.items())
        raise DataError(f"calibration data: every value of every input is the same ({values} "
                        f"throughout its {n} sample{'s' if n > 1 else ''}): the conversion "
                        "chooses each layer's thresholds from the activations the data gives, "
                        "and constant data gives none to choose from; calibrate on real samples "
                        "(a named dataset, a folder of images, or an array of preprocessed "
                        "inputs)")
    if say and n > 1:
        log.warning("calibration data: all %d samples are the same: the thresholds are chosen "
                    "from one input's activations and may not fit others; calibrate on varied "
                    "samples", n)


def calibration_feeds(nm: NormalizedModel, x, batch_size: int, say: bool = False):
    """(feeds, number of samples, batch size) for running the calibration data through the
    DNN: the data checked against the model's inputs, and a fixed batch honoured (the samples
    past the last whole batch are left out; ``say``: with a warning)."""
    specs = input_specs(nm.model)
    feeds = validate_feeds(specs, x, "calibration data")
    n_total = next(iter(feeds.values())).shape[0]
    fixed = fixed_batch(specs)
    if fixed:
        batch_size = fixed
        if n_total < fixed:
            raise DataError(f"calibration data: the model has a fixed batch of {fixed}; give at "
                            f"least {fixed} samples (got {n_total})")
        if n_total % fixed:
            kept = n_total - n_total % fixed
            if say:
                log.warning("calibration data: the model has a fixed batch of %d: calibrating on "
                            "the first %d of the %d samples (re-export it with a dynamic batch "
                            "axis to use them all)", fixed, kept, n_total)
            feeds = {k: v[:kept] for k, v in feeds.items()}
            n_total = kept
    check_varied(feeds, say)          # (the samples calibrated on)
    return feeds, n_total, batch_size


def static_shapes(nm: NormalizedModel, names: Sequence[str],
                  input_shapes: Dict[str, tuple]) -> Dict[str, tuple]:
    """Per-sample shapes of those of ``names`` that the normalized DNN's shape inference knows
    statically, when its static input shapes are ``input_shapes`` (else none)."""
    g = nm.model.graph
    known = {}
    pinned = all(tuple(int(d) if d else -1 for d in dims[1:]) == tuple(input_shapes.get(n, ()))
                 for n, dims in input_specs(nm.model) if n in input_shapes)
    if pinned:  # the model's own static shapes are the calibrated ones
        wanted = set(names)
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            dims = vi.type.tensor_type.shape.dim
            if vi.name in wanted and len(dims) > 1 and all(d.HasField("dim_value") and d.dim_value > 0
                                                           for d in list(dims)[1:]):
                known[vi.name] = tuple(int(d.dim_value) for d in list(dims)[1:])
    return known


def tensor_shapes(nm: NormalizedModel, names: Sequence[str],
                  input_shapes: Dict[str, tuple]) -> Dict[str, tuple]:
    """Per-sample shapes of tensors of the normalized DNN: from its shape inference where that
    is static and agrees with the calibrated input, else measured by one onnxruntime run on a
    zero sample of the calibrated input shapes."""
    if not names:
        return {}
    known = static_shapes(nm, names, input_shapes)
    names = [n for n in names if n not in known]
    if not names:
        return known
    feeds = {}
    for name, dims in input_specs(nm.model):
        shape = (dims[0] or 1,) + tuple(input_shapes.get(name, dims[1:]))
        feeds[name] = np.zeros(shape, np.float32)
    outs = make_session(nm.model, 1, outputs=names, where=_where(nm)).run(list(names), feeds)
    return {**known, **{n: tuple(o.shape[1:]) for n, o in zip(names, outs)}}


def _where(nm: NormalizedModel) -> str:
    """The model's name in messages: its file, when it came from one."""
    return nm.source_path or "the model"


def _without_annotations(data: bytes) -> Optional[bytes]:
    """The serialized model ``data`` without its shape annotations: no ``value_info``, and
    the graph outputs' shapes cleared (their types kept); None when it has none. jax2onnx,
    for one, annotates NCHW tensors with NHWC shapes, which onnxruntime refuses, though the
    graph computes consistent shapes without them."""
    from .graph import walk
    m = onnx.ModelProto.FromString(data)
    graphs = walk.subgraphs(m.graph)              # the graph and every Loop/If/Scan body
    shaped = [o for o in m.graph.output
              if o.type.HasField("tensor_type") and o.type.tensor_type.HasField("shape")]
    if not any(g.value_info for g in graphs) and not shaped:
        return None
    for g in graphs:
        del g.value_info[:]
    for o in shaped:
        o.type.tensor_type.ClearField("shape")
    return m.SerializeToString()


def _session_failure(model: onnx.ModelProto, e: Exception, where: str) -> Exception:
    """Why onnxruntime refused ``model``: shapes that do not fit together (a weight of the
    wrong size for its input: strict shape inference names the node) make it a damaged model
    (ModelLoadError, exit 3); anything else an unsupported one (exit 4). Strict inference
    runs only here, on a refused model: a model onnxruntime runs is never held to it."""
    from .errors import ModelLoadError
    from .graph import skeleton
    try:
        sk = skeleton.split(model, subgraphs=True)
        onnx.shape_inference.infer_shapes(sk.model, strict_mode=True)
    except onnx.shape_inference.InferenceError as err:
        return ModelLoadError(f"{where}: the model's shapes do not fit together "
                              f"({first_line(err)[:300]}): a weight of the wrong size for "
                              "its input, or a tensor of the wrong type; fix that layer or "
                              "re-export the model")
    except Exception:      # no verdict: say what onnxruntime said
        pass
    return UnsupportedModelError(f"{where}: onnxruntime cannot run this model: "
                                 f"{first_line(e)[:300]}")


#: the largest activation the conversion takes: its searches and regressions sum squares
#: of activations in float32 (max 3.4e38), which overflow from about 1e19; no trained
#: network on sensibly scaled data comes near
MAX_ACTIVATION = 1e15


#: one calibration batch's site outputs (float32, every site exposed) hold at most this many
#: bytes: a model with large activations (224 x 224 ImageNet layers) is calibrated a few
#: images at a time (the statistics and the sampled values are the same)
CALIB_BATCH_BYTES = 512 * 2 ** 20


def batch_within(batch_size: int, sample_bytes: int, limit: int, fixed: bool = False) -> int:
    """``batch_size``, or fewer samples (at least one) so that a batch of ``sample_bytes``
    per sample stays within ``limit`` bytes. A model's fixed batch (``fixed``) is kept, and
    an unknown size (``sample_bytes`` 0) bounds nothing."""
    if fixed or sample_bytes <= 0:
        return batch_size
    return max(1, min(int(batch_size), limit // sample_bytes))


def _site_bytes(nm: NormalizedModel, chosen, feeds: Dict[str, np.ndarray]) -> int:
    """Bytes per sample of the chosen sites' outputs (float32), from the model's static
    shapes; 0 when none is known."""
    shapes = static_shapes(nm, [s.input for s in chosen],
                           {k: tuple(v.shape[1:]) for k, v in feeds.items()})
    return 4 * sum(int(np.prod(shapes[s.input])) for s in chosen if s.input in shapes)


#: the largest random seed: numpy's legacy seed takes 32 bits, and fine-tuning adds the
#: epoch and the rank to it
MAX_SEED = 2 ** 31 - 1


def check_seed(value, name: str = "seed") -> int:
    """A whole number in 0..MAX_SEED (numpy's generators refuse a negative seed with a bare
    ValueError, deep in the sampling)."""
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        raise UsageError(f"{name} must be a whole number from 0 to 2**31 - 1, not {value!r}")
    return int(value)


@checks_flags
def calibrate(nm: NormalizedModel, x, batch_size: int = DEFAULT_BATCH_SIZE,
              sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0, show_progress: bool = True,
              threads: Optional[int] = None, sites: Optional[Sequence[str]] = None) -> Calibration:
    """Run the calibration set through onnxruntime and record every site's pre-activations.
    ``x``: arrays (or anything numpy converts, a dict per input), or as for
    :func:`~onnx_snn.convert.convert`, a dataset name, file or folder (DEFAULT_CALIB_SAMPLES of
    its training split, drawn with ``seed``, fed with the model's recorded preprocessing)."""
    from .convert import (MAX_BATCH_SIZE, MAX_SAMPLE_SIZE, check_count, remember_dataset,
                          resolve_data)
    if not isinstance(nm, NormalizedModel):
        raise UsageError(f"calibrate(nm, x) takes prepare()'s result, not {type(nm).__name__} "
                         "(nm = onnx_snn.prepare(model))")
    seed = check_seed(seed)
    sample_size = check_count(sample_size, "sample_size", MAX_SAMPLE_SIZE)
    batch_size = check_count(batch_size, "batch_size", MAX_BATCH_SIZE)
    if sites is not None:
        if isinstance(sites, str) or not all(isinstance(n, str) for n in sites):
            raise UsageError(f"sites must be a list of site names, not {sites!r}")
        unknown = sorted(set(sites) - {s.name for s in nm.sites})
        if unknown or not sites:
            raise UsageError(f"sites: {', '.join(unknown) or 'none given'}; the model's sites are "
                             f"{', '.join(s.name for s in nm.sites)}")
    data_name = None
    if isinstance(x, (str, os.PathLike, Dataset)):
        from .graph.inputs import own_scaling
        ds = resolve_data(x, nm.preprocess, split="train", specs=input_specs(nm.model),
                          take=(DEFAULT_CALIB_SAMPLES, seed), labels=False,
                          show_progress=show_progress,
                          **own_scaling(nm.model)).take(DEFAULT_CALIB_SAMPLES, seed=seed)
        if ds.preprocess is not None:      # a named dataset: record how it was fed
            nm.preprocess = ds.preprocess
        nm.source_metadata.update(remember_dataset(nm.source_metadata, x))   # (eval's default)
        data_name = ds.name
        x = ds.x
    elif is_inputs_labels(x):             # arrays and labels: all of the arrays, as arrays
        x = x[0]
    if data_name is None and not isinstance(x, dict):
        # arrays are checked and warned about as convert's are (NaN refused; integer pixels
        # and unnormalized images with a model that records a normalization warned about)
        x = resolve_data(list(x) if isinstance(x, tuple) else x, nm.preprocess,
                         specs=input_specs(nm.model)).x       # (a tuple of samples: stacked)
    return record_sites(nm, x, batch_size, sample_size, seed, show_progress, threads, sites,
                        data_name)


def _on_zeros(sess, name: str, feed: Dict[str, np.ndarray]) -> float:
    """The largest magnitude of tensor ``name`` on one sample of zeros (0 when the model
    cannot run on it)."""
    try:
        out = sess.run([name], {k: np.zeros_like(v[:1]) for k, v in feed.items()})[0]
    except Exception:
        return 0.0
    return float(np.max(np.abs(out))) if out.size else 0.0


def record_sites(nm: NormalizedModel, x, batch_size: int = DEFAULT_BATCH_SIZE,
                 sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
                 show_progress: bool = True, threads: Optional[int] = None,
                 sites: Optional[Sequence[str]] = None,
                 data_name: Optional[str] = None) -> Calibration:
    """:func:`calibrate`'s onnxruntime pass and statistics, on inputs already resolved and
    checked (convert checks its data once, and its warnings are said once)."""
    t0 = time.perf_counter()
    feeds_all, n_total, batch_size = calibration_feeds(nm, x, batch_size, say=True)
    chosen = [s for s in nm.sites if sites is None or s.name in sites]
    fixed = bool(fixed_batch(input_specs(nm.model)))
    batch_size = batch_within(batch_size, _site_bytes(nm, chosen, feeds_all), CALIB_BATCH_BYTES,
                              fixed)
    sess = make_session(nm.model, threads, outputs=[s.input for s in chosen], where=_where(nm))
    out_names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    samplers: Dict[str, _Sampler] = {}
    stats = {s.name: dict(count=0, pos=0, lo=np.inf, hi=-np.inf, shape=None) for s in chosen}
    bar = Progress(n_total, desc="calibrating", unit="sample", enabled=None if show_progress else False)
    for start in range(0, n_total, batch_size):
        feed = {k: v[start:start + batch_size] for k, v in feeds_all.items()}
        nb = next(iter(feed.values())).shape[0]
        outs = dict(zip(out_names, sess.run(out_names, feed)))
        for s in chosen:
            h = outs[s.input]
            st = stats[s.name]
            if st["shape"] is None:
                if h.ndim == 0 or h.shape[0] != nb:
                    raise UnsupportedModelError(
                        f"{_where(nm)}: site {s.name} ({', '.join(s.source_nodes) or s.input}): "
                        f"its input '{s.input}' has shape {list(h.shape)} for a batch of {nb}, "
                        "so a layer before it moves the batch axis (a Transpose) or merges it "
                        "with others (a Flatten or Reshape); every activation needs the batch "
                        "as its first axis (export with Flatten(axis=1) or a Reshape to "
                        "[N, -1], and keep the batch first)")
                st["shape"] = tuple(h.shape[1:])
                samplers[s.name] = _Sampler(sample_size, n_total * int(np.prod(h.shape[1:])), rng)
            flat = h.reshape(-1)
            # min and max propagate NaN and show an infinity: all values are finite exactly
            # when both are (one pass less than np.isfinite over the batch)
            lo, hi = float(flat.min()), float(flat.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise DataError(f"site {s.name} ('{s.input}'): the model produced NaN/Inf on the "
                                f"calibration batch starting at sample {start}; check the data "
                                "and its preprocessing")
            if max(-lo, hi) > MAX_ACTIVATION:
                zero = _on_zeros(sess, s.input, feed)
                if zero > MAX_ACTIVATION:     # the weights, not the data
                    raise UnsupportedModelError(
                        f"{_where(nm)}: site {s.name} ('{s.input}'): the model's activations "
                        f"reach {max(-lo, hi):.3g}, and {zero:.3g} on an input of zeros: its "
                        "weights drive them beyond what the conversion's float32 sums of "
                        f"squares hold (MAX_ACTIVATION = {MAX_ACTIVATION:g}); a trained model's "
                        "do not (are these weights synthetic or untrained?)")
                data = f" of {data_name}" if data_name else ""
                raise DataError(f"site {s.name} ('{s.input}'): the model's activations reach "
                                f"{max(-lo, hi):.3g} on the calibration batch{data} starting at "
                                f"sample {start}, beyond what the conversion's float32 sums of squares "
                                f"hold (MAX_ACTIVATION = {MAX_ACTIVATION:g}); check the data's "
                                "scale and its preprocessing")
            st["count"] += flat.size
            st["pos"] += int(np.count_nonzero(flat > 0))
            st["lo"] = min(st["lo"], lo)
            st["hi"] = max(st["hi"], hi)
            samplers[s.name].add(flat)
        bar.update(nb)
    bar.close()
    result = {}
    for s in chosen:
        st = stats[s.name]
        result[s.name] = SiteStats(name=s.name, shape=st["shape"], count=st["count"],
                                   n_positive=st["pos"], min=st["lo"], max=st["hi"],
                                   sample=samplers[s.name].result())
    return Calibration(sites=result, n_samples=n_total, sample_size=sample_size,
                       seconds=time.perf_counter() - t0, batch_size=batch_size,
                       input_shapes={k: tuple(v.shape[1:]) for k, v in feeds_all.items()},
                       inputs=feeds_all, fixed_batch=fixed, model_key=model_key(nm.model),
                       data_name=data_name)
