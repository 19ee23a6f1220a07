"""The spiking ONNX format as one API: every name, the site record, the metadata, validation,
and a parsed view of a spiking model that every reader goes through.

docs/FORMAT.md is the contract in prose. In short: every site is a call of the model-local
function ``ai.onnx_snn.LIFNeuron(x, v, threshold, amplitude, leak) -> (y, v_next)`` (see
:mod:`onnx_snn.spiking.neuron`); the single-call graph runs the time step in a ``Loop``.

No other module spells a name of the format: the rewrite builds graphs with the functions
here, and the readers (onnxruntime and torch runtimes, analyzer, binary-spike folding, the
sequential refinement) parse models with :func:`read_spiking`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import DeployGraphError, ModelLoadError, NotSpikingModelError, UsageError
from ..values import is_int, is_real
from ..graph import walk
from .neuron import (DOMAIN, NEURON_INPUTS, NEURON_OP, NEURON_OPS,  # noqa: F401 (re-exported)
                     NEURON_OUTPUTS, POOL_INPUTS, POOL_OPS, POOL_OUTPUTS, SIGNED_NEURON_INPUTS,
                     SIGNED_NEURON_OP, SIGNED_NEURON_OUTPUTS, lif_step, neuron_function,
                     pool_functions, signed_neuron_function)

#: 3: signed neurons (``SignedIFNeuron``, a site's ``"neuron": "signed"``, a second carried
#: state per such site); written only by a model that has one, every other model is written
#: as version 2. 2: rate-exact spiking max pooling (``SpikeMaxPool``/``SpikeGlobalMaxPool``
#: with carried states, ``onnx_snn.pools``); 1: max pooling of each step's spikes (an OR).
#: All are read.
FORMAT_VERSION = 2
SIGNED_FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
#: a site's neuron kinds (``SiteRecord.neuron``)
NEURON_IF = "if"
NEURON_SIGNED = "signed"
NEURON_KINDS = (NEURON_IF, NEURON_SIGNED)
#: a signed site's second carried state: its net spike count
COUNT_STATE = "c"

# ------------------------------------------------------------------ metadata keys
META_PREFIX = "onnx_snn."
META_FORMAT = "onnx_snn.format_version"
META_TIMESTEPS = "onnx_snn.timesteps"
META_METHOD = "onnx_snn.method"
META_SITES = "onnx_snn.sites"
META_PREPROCESS = "onnx_snn.preprocess"
META_SOURCE = "onnx_snn.source"
META_HISTORY = "onnx_snn.history"
META_DROPOUT = "onnx_snn.dropout"
META_GRAPH = "onnx_snn.graph"          # "loop" (single call), "step" or "deploy"
META_OUTPUTS = "onnx_snn.outputs"      # the DNN's output names (JSON list)
META_BINARY = "onnx_snn.binary_spikes"
META_POOLS = "onnx_snn.pools"          # the spiking max pools (JSON list), version 2
META_SPIKE_COUNTS = "onnx_snn.spike_counts"   # deploy graph: "1" when it outputs spike totals
#: keys of a DNN's own metadata that a conversion carries over
#: the dataset the model was trained on (the zoo's DNNs; a conversion or fine-tuning on a
#: named dataset records it where the DNN did not): the later commands' default data
META_DATASET = "onnx_snn.dataset"
META_CLASSES = "onnx_snn.classes"      # the DNN's class names (JSON list), carried
META_CARRIED = ("onnx_snn.arch", META_DATASET, "onnx_snn.test_accuracy", META_CLASSES)
#: carried under another name: the DNN's top-1 is not the spiking model's
META_RENAMED = {"onnx_snn.test_accuracy": "onnx_snn.dnn_test_accuracy"}

GRAPH_LOOP = "loop"
GRAPH_STEP = "step"
#: inference only: unrolled over a fixed T, neurons inlined (see :mod:`onnx_snn.spiking.deploy`)
GRAPH_DEPLOY = "deploy"
GRAPHS = (GRAPH_LOOP, GRAPH_STEP, GRAPH_DEPLOY)

# ------------------------------------------------------------------ names
TIMESTEPS_INPUT = "timesteps"
PARAMS = ("threshold", "amplitude", "leak", "v_init")
NEURON_PARAMS = ("threshold", "amplitude", "leak")     # the function's parameter inputs
SITE_PREFIX = "lif"
POOL_PREFIX = "pool"
POOL_STATES = ("c", "m")     # running sum of the input, pooled running sum
RESERVED_PREFIX = "snn."

LOOP_NODE = "snn.time_loop"
LOOP_BODY = "snn_timestep"
LOOP_COND_NODE = "loop.cond"
LOOP_ITER = "snn.iter"
LOOP_COND_IN = "snn.cond_in"
LOOP_COND_OUT = "snn.cond_out"
INPUT_SHAPE = "snn.input_shape"
BATCH = "snn.batch"
BATCH_AXIS = "snn.batch_axis"
TIME_AXIS = "snn.time_axis"
TIMESTEPS_FLOAT = "snn.timesteps_f"
ONE = "snn.one"
ZERO = "snn.zero"
LAST_STEP = "snn.last_step"


def param_name(site: str, param: str) -> str:
    return f"{site}.{param}"


def state_name(site: str) -> str:
    return f"{site}.v"


def next_state_name(site: str) -> str:
    return f"{site}.v_next"


def spikes_name(site: str) -> str:
    """The site's spike count: per step in the step graph, over all T in the loop graph."""
    return f"{site}.spikes"


def step_spikes_name(site: str) -> str:
    """This step's spike count inside the loop body."""
    return f"{site}.spikes.step"


def steps_spikes_name(site: str) -> str:
    """Every step's spike count, stacked by the loop: [T, N]."""
    return f"{site}.spikes.steps"


def step_output_name(output: str) -> str:
    """A DNN output's value in one step, inside the loop body."""
    return f"{output}.step"


def steps_output_name(output: str) -> str:
    """A DNN output's per-step values stacked by the loop: [T, ...]."""
    return f"{output}.steps"


def neuron_node_name(site: str) -> str:
    return f"{site}.neuron"


def pool_node_name(pool: str) -> str:
    return f"{pool}.pool"


def site_of_neuron_node(node_name: str) -> Optional[str]:
    """The site a neuron node is named after (None for a node not named by the format)."""
    suffix = neuron_node_name("")
    return node_name[:-len(suffix)] if node_name.endswith(suffix) and node_name != suffix else None


@dataclass(frozen=True)
class CounterNames:
    """Tensors and nodes of one site's spike counter: spikes = round(sum(y / amplitude)) (files
    before 2026-12-08 divide a site of one amplitude after the sum)."""

    site: str

    @property
    def axes(self) -> str:
        return f"{self.site}.count_axes"

    @property
    def y_sum(self) -> str:
        return f"{self.site}.y_sum"

    @property
    def y_count(self) -> str:
        return f"{self.site}.y_count"

    @property
    def y_abs(self) -> str:
        return f"{self.site}.y_abs"

    @property
    def count_node(self) -> str:
        return f"{self.site}.count"

    @property
    def per_amplitude_node(self) -> str:
        return f"{self.site}.per_amplitude"

    @property
    def round_node(self) -> str:
        return f"{self.site}.round"

    @property
    def abs_node(self) -> str:
        """A signed site's: spikes of either sign count."""
        return f"{self.site}.abs"

    @property
    def sign_node(self) -> str:
        """A spiking pool's: each nonzero output (one spike) counts 1."""
        return f"{self.site}.sign"

    @property
    def nodes(self) -> tuple:
        """Every counter node name (a site has three of them, a signed site four, a pool
        three: abs, sign, count)."""
        return (self.count_node, self.per_amplitude_node, self.round_node, self.abs_node,
                self.sign_node)


@dataclass(frozen=True)
class OffsetNames:
    """A site's current offset (bias correction): folded into the bias of the layer that
    computes the site's input (``bias``), or, where that layer has none it alone uses, added
    by its own node (``node``: ``current = input + offset``)."""

    site: str

    @property
    def bias(self) -> str:
        return f"{self.site}.bias"

    @property
    def offset(self) -> str:
        return f"{self.site}.offset"

    @property
    def node(self) -> str:
        return f"{self.site}.add_offset"

    @property
    def current(self) -> str:
        return f"{self.site}.current"


@dataclass(frozen=True)
class StateNames:
    """Names of one carried state (``key`` of ``owner``: a site's membrane is key ``v``) in
    the step graph (input/next) and in the loop's bookkeeping (initial value, last value)."""

    owner: str
    key: str = "v"

    @property
    def input(self) -> str:
        return f"{self.owner}.{self.key}"

    @property
    def next(self) -> str:
        return f"{self.owner}.{self.key}_next"

    @property
    def dims(self) -> str:
        return f"{self.owner}.shape" if self.key == "v" else f"{self.owner}.{self.key}_dims"

    @property
    def full_shape(self) -> str:
        return f"{self.owner}.{self.key}_shape"

    @property
    def initial(self) -> str:
        return f"{self.owner}.{self.key}0"

    @property
    def last(self) -> str:
        return f"{self.owner}.{self.key}_last"


@dataclass(frozen=True)
class OutputNames:
    """Nodes that turn a DNN output's per-step values into the loop graph's output."""

    output: str

    @property
    def sum(self) -> str:
        return f"{self.output}.sum"

    @property
    def mean(self) -> str:
        return f"{self.output}.mean"

    @property
    def last(self) -> str:
        return f"{self.output}.last"


def site_total_node(site: str) -> str:
    return f"{site}.total"


def is_reserved(name: str, owners) -> bool:
    """Names the spiking graph creates: ``timesteps``, ``snn.*`` and ``<site or pool>.*``
    (``owners``: the site and pool names, a set for one lookup per name: a list made the
    check quadratic in the depth)."""
    if name == TIMESTEPS_INPUT or name.startswith(RESERVED_PREFIX):
        return True
    owners = owners if isinstance(owners, (set, frozenset, dict)) else set(owners)
    head, dot, _ = name.partition(".")
    if dot and head in owners:
        return True
    # an owner's name with a dot in it (never one this package makes)
    return any(name.startswith(f"{s}.") for s in owners if "." in s)


_MAY_BE_RESERVED = re.compile(rf"^({re.escape(TIMESTEPS_INPUT)}$|{re.escape(RESERVED_PREFIX)}"
                              rf"|({SITE_PREFIX}|{POOL_PREFIX})\d+(\.|$))")


def may_be_reserved(name: str) -> bool:
    """Whether ``name`` could be one the spiking graph creates, whatever its sites will be
    named: ``timesteps``, ``snn.*``, ``lif<k>``, ``pool<k>`` and their ``.*`` (a superset of
    :func:`is_reserved`, for a model whose sites are not named yet)."""
    return _MAY_BE_RESERVED.match(name) is not None


# ------------------------------------------------------------------ the site record

Value = Union[float, List[float]]


def _mul(a: Value, b: float) -> Value:
    if isinstance(a, (list, tuple, np.ndarray)):
        return [float(x) * float(b) for x in np.asarray(a, np.float64).reshape(-1)]
    return float(a) * float(b)


@dataclass
class SiteRecord:
    """One site (a clipped ReLU of the DNN that became integrate-and-fire neurons), as
    recorded in ``onnx_snn.sites``. ``threshold = alpha * mu`` and ``amplitude = beta * mu``
    are derived; ``alpha``, ``beta`` and ``v_init`` are floats, or lists with one value per
    channel (the first axis of ``shape``)."""

    name: str
    input: str
    output: str
    shape: List[int]
    mu: float
    mu_source: str = "model"
    alpha: Value = 1.0
    beta: Value = 1.0
    leak: float = 1.0
    v_init: Value = 0.0
    offset: Value = 0.0
    objective: str = "mse"
    objective_value: float = 0.0
    idiom: str = ""
    source_nodes: List[str] = field(default_factory=list)
    sample_size: int = 0
    values_seen: int = 0
    neuron: str = NEURON_IF
    #: binary spikes (``binary.fold_amplitudes``): the amplitude ``beta * mu`` that was folded
    #: into the next layers' weights; the spikes' own amplitude is then 1
    folded_amplitude: Optional[Value] = None

    def __setattr__(self, name, value):
        # an all-zero offset is no offset: one spelling (0.0), however it is set, so that the
        # record survives to_dict/from_dict
        if name == "offset" and isinstance(value, (list, tuple)) and not np.any(value):
            value = 0.0
        super().__setattr__(name, value)

    @property
    def threshold(self) -> Value:
        return _mul(self.alpha, self.mu)

    @property
    def amplitude(self) -> Value:
        """``beta * mu``; 1 where binary spikes folded it into the next layers' weights."""
        return 1.0 if self.folded_amplitude is not None else _mul(self.beta, self.mu)

    @property
    def neurons(self) -> int:
        return int(math.prod(int(d) for d in self.shape))

    @property
    def signed(self) -> bool:
        return self.neuron == NEURON_SIGNED

    @property
    def neuron_op(self) -> str:
        return SIGNED_NEURON_OP if self.signed else NEURON_OP

    def states(self) -> List["StateSpec"]:
        """The carried states: the membrane (from ``v_init``) and, for a signed neuron, the
        net spike count (from zero)."""
        out = [StateSpec(StateNames(self.name), list(self.shape), param_name(self.name, "v_init"))]
        if self.signed:
            out.append(StateSpec(StateNames(self.name, COUNT_STATE), list(self.shape)))
        return out

    @property
    def per_channel(self) -> bool:
        return any(isinstance(v, (list, tuple)) for v in (self.alpha, self.beta, self.v_init))

    @property
    def has_offset(self) -> bool:
        return bool(np.any(np.asarray(self.offset, np.float64) != 0))

    def channel_values(self, value: Value) -> np.ndarray:
        """A float or per-channel list as a float32 tensor that broadcasts to the site."""
        if isinstance(value, (list, tuple)):
            return np.asarray(value, np.float32).reshape(self.param_shape())
        return np.array(value, dtype=np.float32)

    def param_shape(self) -> List[int]:
        """Shape of the per-channel parameter tensors: [C, 1, ...] (broadcasts to the site)."""
        return [int(self.shape[0])] + [1] * (len(self.shape) - 1) if self.shape else []

    def param_values(self) -> Dict[str, np.ndarray]:
        """The initializer values of ``threshold, amplitude, leak, v_init`` (float32)."""
        vals = {"threshold": self.threshold, "amplitude": self.amplitude, "leak": self.leak,
                "v_init": self.v_init}
        return {p: self.channel_values(vals[p]) for p in PARAMS}

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["threshold"] = self.threshold
        d["amplitude"] = self.amplitude
        # the JSON keeps its historical key order
        order = ["name", "input", "output", "shape", "mu", "mu_source", "alpha", "beta",
                 "threshold", "amplitude", "leak", "v_init", "objective", "objective_value",
                 "idiom", "source_nodes", "sample_size", "values_seen"]
        out = {k: d[k] for k in order}
        if self.has_offset:
            out["offset"] = self.offset
        if self.neuron != NEURON_IF:
            out["neuron"] = self.neuron
        if self.folded_amplitude is not None:
            out["folded_amplitude"] = self.folded_amplitude
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "SiteRecord":
        if not isinstance(d, dict):
            raise ModelLoadError(f"{where}: a site in {META_SITES} is not a JSON object")
        missing = [k for k in ("name", "input", "output", "shape", "mu") if k not in d]
        if missing:
            raise ModelLoadError(f"{where}: site {d.get('name', '?')!r} in {META_SITES} lacks "
                                 f"{', '.join(missing)}; the file is damaged, convert it again")
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        try:
            rec = cls(**kw)
            rec.shape = _dims(rec.shape)
            rec.mu = float(rec.mu)
            for k in ("alpha", "beta", "v_init", "offset", "folded_amplitude"):
                v = getattr(rec, k)
                if v is not None:
                    setattr(rec, k, [float(x) for x in v] if isinstance(v, list) else float(v))
            rec.leak = float(rec.leak)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{where}: site {d.get('name')!r} in {META_SITES} is damaged "
                                 f"({e}); convert the model again") from None
        if not (math.isfinite(rec.mu) and rec.mu > 0):
            raise ModelLoadError(f"{where}: site {rec.name!r} has mu {rec.mu}; it must be a "
                                 "positive number")
        for k in ("alpha", "beta", "v_init", "offset", "folded_amplitude", "leak",
                  "threshold", "amplitude"):
            v = getattr(rec, k) if k not in ("threshold", "amplitude") else d.get(k)
            values = v if isinstance(v, list) else [] if v is None else [v]
            try:
                bad = next((x for x in values if not math.isfinite(float(x))), None)
            except (TypeError, ValueError):
                bad = values
            if bad is not None:
                bad = str(bad) if len(str(bad)) <= 80 else f"{str(bad)[:60]}... ({len(str(bad))} characters)"
                raise ModelLoadError(f"{where}: site {rec.name!r} has {k} {bad} in {META_SITES}; "
                                     "it must be a finite number. The file is damaged or was "
                                     "edited: convert the model again")
        for k, lo, hi in (("alpha", 0.0, None), ("beta", 0.0, None),
                          ("folded_amplitude", 0.0, None), ("leak", None, 1.0)):
            v = getattr(rec, k)
            values = np.asarray([] if v is None else v, np.float64).reshape(-1)
            low = values[values < 0 if lo is None else values <= lo]
            high = values[values > hi] if hi is not None else values[:0]
            if low.size or high.size:
                bound = (f"above {hi:g}" if high.size else
                         "negative" if lo is None else f"<= {lo:g}")
                raise ModelLoadError(f"{where}: site {rec.name!r} has {k} "
                                     f"{float((high if high.size else low)[0]):g} in {META_SITES} "
                                     f"({bound}; {_DOMAIN[k]}). The file is damaged or was "
                                     "edited; convert the model again")
        for k in ("alpha", "beta", "v_init", "folded_amplitude"):
            v = getattr(rec, k)      # one value per channel: the first axis of the shape
            if isinstance(v, list) and (not rec.shape or len(v) != rec.shape[0]):
                raise ModelLoadError(f"{where}: site {rec.name!r} has {len(v)} values of {k} in "
                                     f"{META_SITES}, not one per channel of its shape "
                                     f"{list(rec.shape)}; the file is damaged or was edited, "
                                     "convert the model again")
        if rec.neuron not in NEURON_KINDS:
            raise ModelLoadError(f"{where}: site {rec.name!r} has neuron {rec.neuron!r}, not one "
                                 f"of {', '.join(map(repr, NEURON_KINDS))}; upgrade onnx-snn or "
                                 "convert the model again")
        return rec


#: why each recorded value of a site lies in its domain (:meth:`SiteRecord.from_dict`)
_DOMAIN = {"alpha": "the threshold alpha x mu is positive",
           "beta": "the spike amplitude beta x mu is positive",
           "folded_amplitude": "the amplitude folded into the next layers is positive",
           "leak": "leaks are in [0, 1]"}

#: the smallest positive threshold or amplitude a file may hold: float32's smallest normal
#: number. onnxruntime flushes smaller (subnormal) values to zero, the PyTorch runtime on the
#: CPU does not, so the two would run another network (an amplitude of 1e-40 gave every spike
#: of its layer the value 0 in onnxruntime)
MIN_PARAMETER = float(np.finfo(np.float32).tiny)

#: the largest dimension a recorded shape may have (onnxruntime's tensors index in int64, but
#: no site of a real network comes near)
MAX_DIM = 2 ** 31 - 1


def _dims(values, key: str = "shape") -> List[int]:
    """A per-sample shape recorded in the metadata, as ints: whole numbers from 1 to
    :data:`MAX_DIM` (JSON's 28 or 28.0); a fraction, a string, a bool, Infinity or a
    non-list raises ValueError (which the records' readers report as damage)."""
    if not isinstance(values, list):
        raise ValueError(f"{key} {str(values)[:40]} is not a list")
    out = []
    for d in values:
        whole = is_int(d) or (is_real(d) and math.isfinite(d) and float(d).is_integer())
        if not whole or not 1 <= d <= MAX_DIM:
            raise ValueError(f"{key} {str(values)[:60]} holds {str(d)[:20]!r}, not a whole "
                             f"number from 1 to {MAX_DIM}")
        out.append(int(d))
    return out


@dataclass
class PoolRecord:
    """One rate-exact spiking max pool (format version 2), as recorded in ``onnx_snn.pools``:
    the DNN's ``MaxPool``/``GlobalMaxPool`` node ``node`` became the function call ``name``
    with two carried states, the running sum of its input (``in_shape``) and the pooled
    running sum (``out_shape``)."""

    name: str
    node: str
    op: str
    input: str
    output: str
    in_shape: List[int]
    out_shape: List[int]
    #: whether the graph counts the pool's output spikes (``{name}.spikes``, beside the
    #: sites'): a pool of spikes, in files written since 2026-12-03; absent in older records
    counted: bool = False

    @property
    def neurons(self) -> int:
        """Pooled outputs per sample."""
        return int(math.prod(int(d) for d in self.out_shape))

    def states(self) -> List["StateSpec"]:
        c, m = POOL_STATES
        return [StateSpec(StateNames(self.name, c), list(self.in_shape)),
                StateSpec(StateNames(self.name, m), list(self.out_shape))]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "PoolRecord":
        if not isinstance(d, dict):
            raise ModelLoadError(f"{where}: a pool in {META_POOLS} is not a JSON object "
                                 f"({str(d)[:40]}); the file is damaged, convert it again")
        try:
            rec = cls(**{f.name: d[f.name] for f in fields(cls) if f.name != "counted"},
                      counted=bool(d.get("counted", False)))
            rec.in_shape = _dims(rec.in_shape, "in_shape")
            rec.out_shape = _dims(rec.out_shape, "out_shape")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{where}: a pool in {META_POOLS} is damaged ({e}); convert the "
                                 "model again") from None
        if rec.op not in POOL_OPS.values():
            raise ModelLoadError(f"{where}: pool {rec.name!r} has op {rec.op!r}; the file is damaged")
        return rec


# ------------------------------------------------------------------ metadata

@dataclass
class SpikingInfo:
    """What a spiking model's metadata says about it."""

    format_version: int
    timesteps: int
    method: str
    sites: List[SiteRecord]
    preprocess: Optional[dict]
    source: Optional[str]
    history: list
    dropout: list
    graph: str
    outputs: List[str]
    pools: List[PoolRecord] = field(default_factory=list)

    def site(self, name: str) -> SiteRecord:
        return next(s for s in self.sites if s.name == name)


def all_initializers(model: onnx.ModelProto) -> Dict[str, onnx.TensorProto]:
    """Every initializer by name, those of the loop body included (layer weights used only
    inside the time step live there, so that onnxruntime can prepack them)."""
    return {t.name: t for g in walk.subgraphs(model.graph) for t in g.initializer}


def metadata(model: onnx.ModelProto) -> Dict[str, str]:
    from ..model_io import metadata_dict
    return metadata_dict(model)


def calls_format(model: onnx.ModelProto) -> bool:
    """Whether ``model`` defines or calls the format's functions (domain ``ai.onnx_snn``)."""
    return any(f.domain == DOMAIN for f in model.functions) or any(
        o.domain == DOMAIN for o in model.opset_import) or any(
        n.domain == DOMAIN for g in walk.subgraphs(model.graph) for n in g.node)


def is_spiking(model: onnx.ModelProto) -> bool:
    """A spiking model: the format's metadata, or its neuron functions (a file that calls them
    but lost its metadata is a damaged spiking model, refused by :func:`read_info`, not a DNN
    to run)."""
    return META_FORMAT in metadata(model) or calls_format(model)


def _json(meta: Dict[str, str], key: str, default, kind, where: str):
    text = meta.get(key)
    if text is None or text == "":
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{where}: the metadata {key} is not valid JSON ({e.msg} at "
                             f"character {e.pos}); the file is damaged, convert it again") from None
    except RecursionError:      # '[' * 100000: no file onnx-snn writes nests so
        raise ModelLoadError(f"{where}: the metadata {key} nests its JSON too deeply to read; "
                             "the file is damaged, convert it again") from None
    if kind is not None and not isinstance(value, kind):
        raise ModelLoadError(f"{where}: the metadata {key} should be a JSON "
                             f"{'list' if kind is list else 'object'}; the file is damaged")
    return value


def _int(meta: Dict[str, str], key: str, default: Optional[int], where: str) -> int:
    text = meta.get(key)
    if text is None:
        if default is None:
            raise ModelLoadError(f"{where}: the metadata {key} is missing; the file is damaged "
                                 "(its metadata was stripped or edited), convert it again")
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise ModelLoadError(f"{where}: the metadata {key} is {text!r}, not a whole number; "
                             "the file is damaged, convert it again") from None


def spiking_fingerprint(info) -> str:
    """A short hash of what makes a spiking model's spikes: each site's name, shape, neuron
    kind, threshold, initial membrane and leak. The same for a model's loop, step and deploy
    graphs and its binary-spike variant (amplitudes do not change the spikes); another for a
    model converted otherwise or fine-tuned. Spike rates carry it (``eval --json``), so
    ``analyze --rates`` can tell rates of another model."""
    import hashlib
    parts = [[s.name, list(s.shape), s.neuron, s.threshold, s.v_init, s.leak] for s in info.sites]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def read_info(model: onnx.ModelProto, where: str = "model") -> SpikingInfo:
    """The metadata, checked: a damaged or unknown one raises :class:`ModelLoadError`, a
    model without any that calls none of the format's functions (a plain DNN)
    :class:`NotSpikingModelError`."""
    meta = metadata(model)
    if not is_spiking(model):
        raise NotSpikingModelError(f"{where}: not a spiking model (no {META_FORMAT} metadata); "
                                   "convert it first with `onnx-snn convert`")
    version = _int(meta, META_FORMAT, None, where)
    if version not in SUPPORTED_VERSIONS:
        raise ModelLoadError(f"{where}: spiking format version {version} is not supported by "
                             f"this onnx-snn (it reads {', '.join(map(str, SUPPORTED_VERSIONS))}); "
                             "upgrade onnx-snn or convert the model again")
    timesteps = _int(meta, META_TIMESTEPS, None, where)   # every version records it
    if timesteps < 1:
        raise ModelLoadError(f"{where}: the metadata {META_TIMESTEPS} is {timesteps}; it must be "
                             "at least 1 (the file is damaged)")
    listed = _json(meta, META_SITES, [], list, where)
    pools_listed = _json(meta, META_POOLS, [], list, where)
    nodes = sum(len(g.node) for g in walk.subgraphs(model.graph))
    if len(listed) + len(pools_listed) > nodes:
        # every site and pool is at least one node of the graph: checked before each entry
        # is read (a million damaged entries took minutes)
        raise ModelLoadError(f"{where}: the metadata lists {len(listed)} sites and "
                             f"{len(pools_listed)} pools, more than the graph's {nodes} nodes; "
                             "the file is damaged or was edited, convert it again")
    sites = [SiteRecord.from_dict(s, where) for s in listed]
    pool_records = [PoolRecord.from_dict(p, where) for p in pools_listed]
    seen = set()
    for r in sites + pool_records:    # (one listed twice: deploy counted 6 layers of 5)
        if r.name in seen:
            raise ModelLoadError(f"{where}: the metadata lists '{r.name}' twice in {META_SITES} "
                                 f"and {META_POOLS}; the file is damaged or was edited, convert "
                                 "it again")
        seen.add(r.name)
    signed = [s.name for s in sites if s.signed]
    if signed and version < SIGNED_FORMAT_VERSION:
        raise ModelLoadError(f"{where}: site(s) {', '.join(signed)} have signed neurons, which "
                             f"format version {version} does not have; the file is damaged")
    preprocess = _json(meta, META_PREPROCESS, None, dict, where)
    graph = meta.get(META_GRAPH, GRAPH_LOOP)
    if graph not in GRAPHS:
        raise ModelLoadError(f"{where}: the metadata {META_GRAPH} is {graph!r}, not one of "
                             f"{', '.join(map(repr, GRAPHS))}")
    if graph == GRAPH_DEPLOY and calls_format(model):
        # (a deploy graph inlines its neurons: it calls none of the format's functions)
        raise ModelLoadError(f"{where}: the metadata {META_GRAPH} says 'deploy', but the graph "
                             f"calls the format's neuron functions ({DOMAIN}), as a loop or "
                             "step graph does; the file was edited: restore its "
                             f"{META_GRAPH} or convert the model again")
    outputs = _json(meta, META_OUTPUTS, [], list, where)
    graph_outputs = {o.name for o in model.graph.output}
    bad = [o for o in outputs if not isinstance(o, str) or o not in graph_outputs]
    if bad:
        raise ModelLoadError(f"{where}: the metadata {META_OUTPUTS} names {bad[0]!r}, which is "
                             "not an output of the graph; the file is damaged or was edited, "
                             "convert it again")
    owners = {r.name for r in sites + pool_records}
    taken = [o for o in outputs if is_reserved(o, owners)]
    if taken:     # (read as the scores: "the SNN does no work", a label out of range)
        raise ModelLoadError(f"{where}: the metadata {META_OUTPUTS} names '{taken[0]}', a spike "
                             "count or state the format adds, not an output of the DNN; the "
                             "file was edited: restore it or convert the model again")
    history = _json(meta, META_HISTORY, [], list, where)
    if graph == GRAPH_DEPLOY:
        made = [h for h in history if isinstance(h, dict) and h.get("step") == "deploy"]
        unrolled = made[-1].get("timesteps") if made else None
        if is_int(unrolled) and unrolled != timesteps:
            raise ModelLoadError(f"{where}: the metadata {META_TIMESTEPS} is {timesteps}, but "
                                 f"this deploy graph was unrolled for T={unrolled} (its history); "
                                 "a deploy graph runs the T it was written for: the file was "
                                 "edited, write it again with `onnx-snn deploy -T`")
    binary = _json(meta, META_BINARY, {}, dict, where)
    if not all(isinstance(v, str) for v in binary.values()):
        raise ModelLoadError(f"{where}: the metadata {META_BINARY} should map sites to 'folded' "
                             "or why a site kept its amplitude; the file is damaged")
    dropout = _json(meta, META_DROPOUT, [], list, where)
    for d in dropout:      # what fine-tuning drops: a tensor's name and a ratio in [0, 1)
        if not (isinstance(d, dict) and isinstance(d.get("tensor"), str)
                and dropout_ratio_ok(d.get("ratio"))):
            raise ModelLoadError(f"{where}: the metadata {META_DROPOUT} holds {str(d)[:80]!r}; "
                                 "each entry is a tensor and a dropout ratio in [0, 1): the "
                                 "file is damaged or was edited")
    method = meta.get(META_METHOD, "")
    from ..scales import METHODS
    if method and method not in METHODS:    # (it says whether the parameters fit one T)
        raise ModelLoadError(f"{where}: the metadata {META_METHOD} is {method[:40]!r}, not one of "
                             f"the conversion methods ({', '.join(METHODS)}): the file is "
                             "damaged or was edited")
    return SpikingInfo(
        format_version=version, timesteps=timesteps, method=method,
        sites=sites, preprocess=preprocess, source=meta.get(META_SOURCE),
        history=history,
        dropout=dropout,
        graph=graph, outputs=outputs,
        pools=pool_records)


def dropout_ratio_ok(ratio) -> bool:
    """Whether ``ratio`` is a dropout ratio a file records (``onnx_snn.dropout``): a number in
    [0, 1) (fine-tuning scales by 1 / (1 - ratio))."""
    return is_real(ratio) and 0 <= float(ratio) < 1


def set_metadata(model: onnx.ModelProto, values: Dict[str, str]) -> None:
    current = metadata(model)
    current.update(values)
    del model.metadata_props[:]
    for k in sorted(current):
        model.metadata_props.add(key=k, value=current[k])


def sync_site_records(model: onnx.ModelProto) -> None:
    """Rewrite each site's record in ``model``'s metadata (``onnx_snn.sites``: threshold and
    alpha, amplitude and beta, leak, v_init) from the parameters its graph holds, in place:
    for a writer that changed the parameters in the graph (fine-tuning, the unit-threshold
    form), so that the two agree as the reader requires (:data:`PARAMETER_RTOL`). A site whose
    amplitude is folded into the next layers keeps its record's amplitude (the graph's is 1)."""
    inits = all_initializers(model)
    sites = json.loads(metadata(model)[META_SITES])

    def value(site: str, p: str):
        v = numpy_helper.to_array(inits[param_name(site, p)]).astype(np.float64).reshape(-1)
        return float(v[0]) if v.size == 1 else [float(x) for x in v]

    def ratio(v, mu: float):
        return [x / mu for x in v] if isinstance(v, list) else v / mu

    for s in sites:
        th = value(s["name"], "threshold")
        s.update(threshold=th, alpha=ratio(th, s["mu"]), leak=value(s["name"], "leak"),
                 v_init=value(s["name"], "v_init"))
        if "folded_amplitude" not in s:
            amp = value(s["name"], "amplitude")
            s.update(amplitude=amp, beta=ratio(amp, s["mu"]))
    set_metadata(model, {META_SITES: json.dumps(sites)})


# ------------------------------------------------------------------ the parsed view

@dataclass
class StateSpec:
    """One carried state: its names in the step, its per-sample shape and initial value
    (the initializer ``init`` when set, else zeros)."""

    names: StateNames
    shape: List[int]
    init: Optional[str] = None


@dataclass
class SpikingView:
    """A spiking model parsed once: where each part of the format is.

    ``hoisted``: the time-invariant DNN work (outside the loop; bookkeeping excluded);
    ``body``: one time step's DNN work with its neuron calls (spike counters and the loop's
    condition excluded); ``counters``: the spike-counting nodes; ``step_outputs``: for every
    DNN output, the tensor holding its value in one step (itself when time-invariant);
    ``step_spikes``: for every site, and every spiking pool that has a counter (files
    written since 2026-12-03), this step's spike count; ``counted`` lists them in that
    order (sites first).
    """

    model: onnx.ModelProto
    info: SpikingInfo
    hoisted: List[onnx.NodeProto]
    body: List[onnx.NodeProto]
    counters: List[onnx.NodeProto]
    neurons: Dict[str, onnx.NodeProto]
    pools: Dict[str, onnx.NodeProto]
    states: List[StateSpec]
    step_outputs: Dict[str, str]
    step_spikes: Dict[str, str]
    initializers: Dict[str, onnx.TensorProto]
    loop: Optional[onnx.NodeProto] = None

    @property
    def graph_kind(self) -> str:
        return self.info.graph

    @property
    def outputs(self) -> List[str]:
        return list(self.step_outputs)

    @property
    def timed_outputs(self) -> List[str]:
        """DNN outputs that change from step to step (the loop stacks them)."""
        return [o for o, t in self.step_outputs.items() if t != o]

    @property
    def state_inputs(self) -> List[str]:
        return [s.names.input for s in self.states]

    @property
    def data_inputs(self) -> List[str]:
        """The DNN's inputs (not ``timesteps``, not states, not initializers)."""
        skip = {TIMESTEPS_INPUT} | set(self.state_inputs) | set(self.initializers)
        return [i.name for i in self.model.graph.input if i.name not in skip]

    @property
    def counted(self) -> List[str]:
        """The sites, then the spiking pools whose output spikes the graph counts."""
        return list(self.step_spikes)

    @property
    def counted_pools(self) -> List[str]:
        """The spiking pools whose output spikes the graph counts (``{pool}.spikes``)."""
        sites = {s.name for s in self.info.sites}
        return [k for k in self.step_spikes if k not in sites]

    def per_step_names(self) -> List[str]:
        """Loop graph: the stacked per-step outputs and spike counts it can expose."""
        return [steps_output_name(o) for o in self.timed_outputs] + \
            [steps_spikes_name(s) for s in self.counted]

    def param(self, site: str, p: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[param_name(site, p)])


def initial_state(view: SpikingView, state: StateSpec, n: int) -> np.ndarray:
    """A state's initial value (its initializer, else zeros) for a batch of ``n``."""
    v0 = numpy_helper.to_array(view.initializers[state.init]) if state.init else np.float32(0)
    return np.ascontiguousarray(np.broadcast_to(np.asarray(v0, np.float32), [n] + list(state.shape)))


def format_version(sites: Sequence[SiteRecord]) -> int:
    """The version a model with these sites is written as (the oldest that holds them)."""
    return SIGNED_FORMAT_VERSION if any(s.signed for s in sites) else FORMAT_VERSION


def is_neuron_node(n: onnx.NodeProto) -> bool:
    return n.op_type in NEURON_OPS and n.domain == DOMAIN


def _neuron_nodes(nodes) -> List[onnx.NodeProto]:
    return [n for n in nodes if is_neuron_node(n)]


def time_loop(graph: onnx.GraphProto) -> Optional[onnx.NodeProto]:
    """The loop node whose body holds the neurons, if any."""
    for n in graph.node:
        if n.op_type == "Loop":
            body = next((a.g for a in n.attribute if a.name == "body"), None)
            if body is not None and _neuron_nodes(body.node):
                return n
    return None


def _check_default_timesteps(g: onnx.GraphProto, recorded: int, where: str) -> None:
    """The loop graph's ``timesteps`` initializer (the T that plain onnxruntime runs when none
    is fed) is one whole number, the T the metadata records: edited to 0 it ran no step
    (outputs of 0 samples), to 7 seven, while every onnx-snn command read the metadata's T and
    said nothing. A ModelLoadError naming both."""
    t = next((t for t in g.initializer if t.name == TIMESTEPS_INPUT), None)
    if t is None:
        return
    try:
        v = numpy_helper.to_array(t)
    except Exception:
        v = None
    ok = v is not None and v.size == 1 and np.issubdtype(v.dtype, np.integer)
    if not ok or int(v.reshape(())) != recorded:
        shown = ("unreadable" if v is None else v.reshape(()).item() if v.size == 1
                 else v.reshape(-1)[:4].tolist())
        raise ModelLoadError(f"{where}: the graph's default T (its '{TIMESTEPS_INPUT}' "
                             f"initializer, what onnxruntime runs when no T is fed) is {shown}, "
                             f"but the file records T={recorded} ({META_TIMESTEPS}); the file is "
                             "damaged or was edited, convert it again")


def read_spiking(model: onnx.ModelProto, where: str = "model") -> SpikingView:
    """Parse and validate a spiking model; raise :class:`NotSpikingModelError` for a plain
    DNN and :class:`ModelLoadError` for a damaged file."""
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"read_spiking takes an onnx.ModelProto, not {type(model).__name__} "
                         "(for a file: read_spiking(onnx_snn.model_io.load_model(path)))")
    if not is_spiking(model):
        raise NotSpikingModelError(f"{where}: not a spiking model (no {META_FORMAT} metadata); "
                                   "convert it first with `onnx-snn convert`")
    info = read_info(model, where)
    if info.graph == GRAPH_DEPLOY:
        raise DeployGraphError(
            f"{where}: a deploy graph (T={info.timesteps} fixed, neurons inlined, for inference "
            "only): onnxruntime runs it (`onnx-snn eval`), but fine-tuning, analysis and the "
            "other spiking tools need the spiking model it was made from")
    if (info.sites or info.pools) and not calls_format(model):
        raise ModelLoadError(f"{where}: the metadata {META_GRAPH} says '{info.graph}', but the "
                             f"graph calls none of the format's neuron functions ({DOMAIN}), "
                             "as a deploy graph (neurons inlined) does; the file was edited: "
                             f"restore its {META_GRAPH} or convert the model again")
    inits = all_initializers(model)
    _check_params(info, inits, where)
    g = model.graph
    states = [st for s in info.sites for st in s.states()] + \
        [st for p in info.pools for st in p.states()]
    _check_state_dims(states, inits, where)
    counted = [s.name for s in info.sites] + [p.name for p in info.pools]
    names = info.outputs or [o.name for o in g.output
                             if o.name not in {spikes_name(s) for s in counted}
                             and o.name not in {st.names.next for st in states}]
    counter_names = {c for s in counted for c in CounterNames(s).nodes}
    loop = time_loop(g) if info.graph == GRAPH_LOOP else None
    if info.graph == GRAPH_LOOP:
        if loop is None:
            raise ModelLoadError(f"{where}: a single-call spiking model without its time loop "
                                 f"(no Loop node with {DOMAIN} neuron calls); the file is "
                                 "damaged or was edited, convert it again")
        _check_default_timesteps(g, info.timesteps, where)
        body_graph = next(a.g for a in loop.attribute if a.name == "body")
        body_all = [n for n in body_graph.node if n.name != LOOP_COND_NODE]
        made = {o for n in body_all for o in n.output}
        step_outputs = {o: step_output_name(o) if step_output_name(o) in made else o for o in names}
        step_spikes = {s.name: step_spikes_name(s.name) for s in info.sites}
        step_spikes.update({p.name: step_spikes_name(p.name) for p in info.pools
                            if step_spikes_name(p.name) in made})
        before = list(g.node)[:list(g.node).index(loop)]
        hoisted = walk.prune(before, walk.outer_refs(body_graph) +
                             [o for o, t in step_outputs.items() if t == o])
    else:
        nodes = list(g.node)
        flags = walk.depends(nodes, [s.names.input for s in states])
        body_all = [n for n, f in zip(nodes, flags) if f]
        step_outputs = {o: o for o in names}
        made = {o for n in body_all for o in n.output}
        step_spikes = {s.name: spikes_name(s.name) for s in info.sites}
        step_spikes.update({p.name: spikes_name(p.name) for p in info.pools
                            if spikes_name(p.name) in made})
        body_refs = [x for n in body_all for x in walk.node_inputs(n)]
        hoisted = walk.prune([n for n, f in zip(nodes, flags) if not f], body_refs + names)
    counters = [n for n in body_all if n.name in counter_names]
    body = [n for n in body_all if n.name not in counter_names]
    by_output = {s.output: s.name for s in info.sites}
    by_output.update({step_output_name(s.output): s.name for s in info.sites})
    site_names = {s.name for s in info.sites}
    neurons = {}
    for n in _neuron_nodes(body):
        site = site_of_neuron_node(n.name)
        site = site if site in site_names else by_output.get(n.output[0])
        if site is None:
            raise ModelLoadError(f"{where}: neuron node '{n.name}' writes '{n.output[0]}', which "
                                 f"no site of {META_SITES} names; the file is damaged")
        rec = info.site(site)
        want = rec.neuron_op
        if n.op_type != want:
            raise ModelLoadError(f"{where}: site {site} is a {rec.neuron} neuron in "
                                 f"{META_SITES}, but its node '{n.name}' calls {n.op_type}, not "
                                 f"{want}; the file is damaged or was edited")
        _check_call(n, *_signature(n.op_type), f"neuron node '{n.name}' ({n.op_type})", where)
        neurons[site] = n
    pool_nodes = {pool_node_name(p.name): p.name for p in info.pools}
    pools = {pool_nodes[n.name]: n for n in body if n.name in pool_nodes and n.domain == DOMAIN}
    for n in pools.values():
        _check_call(n, *_signature(n.op_type), f"spiking pool node '{n.name}'", where)
    stray = [n for n in body if n.domain == DOMAIN and not is_neuron_node(n)
             and n.name not in pool_nodes]
    if stray:       # (its states would have no record: deploy and finetune failed on them)
        raise ModelLoadError(f"{where}: the time step calls {stray[0].op_type} (node "
                             f"'{stray[0].name}'), a spiking pool that no entry of {META_POOLS} "
                             "names; the file is damaged or was edited, convert it again")
    lost = [p.name for p in info.pools if p.name not in pools]
    if lost:
        raise ModelLoadError(f"{where}: the metadata lists spiking pool(s) {', '.join(lost)} but "
                             "the time step has no call for them; the file is damaged")
    _check_functions(model, list(neurons.values()) + list(pools.values()), where)
    missing = [s.name for s in info.sites if s.name not in neurons]
    if missing:
        raise ModelLoadError(f"{where}: the metadata lists site(s) {', '.join(missing)} but the "
                             f"graph has no {DOMAIN} neuron call for them ({NEURON_OP} or "
                             f"{SIGNED_NEURON_OP}; was the neuron function inlined?); use the file "
                             "onnx-snn wrote")
    _check_wiring(info, neurons, pools, counters, step_spikes, where)
    if loop is not None:
        _check_loop(g, loop, states, names, where)
    return SpikingView(model=model, info=info, hoisted=hoisted, body=body, counters=counters,
                       neurons=neurons, pools=pools, states=states, step_outputs=step_outputs,
                       step_spikes=step_spikes, initializers=inits, loop=loop)


# ------------------------------------------------------------------ the graph's wiring
#
# Every runtime reads one file two ways: onnxruntime runs the graph as it is wired, while
# the PyTorch runtime, the deploy graph and the analyzer take each site's neurons, states,
# parameters and counts by the format's names. A call wired to another site's state or
# parameters, a Loop that runs another number of steps, a membrane started from another
# tensor, or a counter that is not the format's made eval, deploy, finetune and analyze
# disagree on one file (an outside tester's edits: 45.5 % in eval, 89 % in deploy, a
# fine-tuned file of 65.5 % reported as 91.5 %), each exiting 0. The checks below refuse
# such a file as damaged (exit 3), naming the node and what it should read.

def _wired(n: onnx.NodeProto, got: Sequence[str], want: Sequence[str], what: str,
           where: str, start: int = 0) -> None:
    """``got`` (``n``'s inputs or outputs from slot ``start``) is ``want`` (None: any)."""
    for g, w, slot in zip(got, want, range(start, start + len(want))):
        if w is not None and g != w:
            raise ModelLoadError(f"{where}: node '{n.name}' ({n.op_type}) has {what} {slot} "
                                 f"'{g}', not '{w}' as the format names it; the file is "
                                 "damaged or was edited, convert the model again")


def _check_wiring(info: SpikingInfo, neurons: Dict[str, onnx.NodeProto],
                  pools: Dict[str, onnx.NodeProto], counters: Sequence[onnx.NodeProto],
                  step_spikes: Dict[str, str], where: str) -> None:
    """Each neuron and pool call reads and writes its own record's states, its own
    parameters and its own tensors, no call's current is a state or parameter, and each
    counter is the format's (:func:`_check_counter`)."""
    carried = set()
    for rec in list(info.sites) + list(info.pools):
        carried.update(st.names.input for st in rec.states())
        if isinstance(rec, SiteRecord):
            carried.update(param_name(rec.name, p) for p in PARAMS)
    for s in info.sites:
        n = neurons[s.name]
        sts = [st.names for st in s.states()]
        params = [param_name(s.name, p) for p in NEURON_PARAMS]
        _wired(n, n.input[1:], [x.input for x in sts] + params, "input", where, 1)
        _wired(n, n.output[1:], [x.next for x in sts], "output", where, 1)
        if n.output[0] not in (s.output, step_output_name(s.output)):
            _wired(n, n.output[:1], [s.output], "output", where)
    for p in info.pools:
        n = pools[p.name]
        sts = [st.names for st in p.states()]
        _wired(n, n.input[1:], [x.input for x in sts], "input", where, 1)
        _wired(n, n.output[1:], [x.next for x in sts], "output", where, 1)
        if n.output[0] not in (p.output, step_output_name(p.output)):
            _wired(n, n.output[:1], [p.output], "output", where)
    for n in list(neurons.values()) + list(pools.values()):
        if n.input[0] in carried:
            raise ModelLoadError(f"{where}: node '{n.name}' ({n.op_type}) takes '{n.input[0]}', "
                                 "a state or parameter, as its input current; the file is "
                                 "damaged or was edited, convert the model again")
    by_name = {c.name: c for c in counters}
    for s in info.sites:
        _check_counter(s, neurons[s.name].output[0], by_name, step_spikes.get(s.name), where)
    for p in info.pools:
        if p.counted:
            _check_counter(p, pools[p.name].output[0], by_name, step_spikes.get(p.name), where)


def _check_counter(rec, y: str, nodes: Dict[str, onnx.NodeProto], spikes: Optional[str],
                   where: str) -> None:
    """``rec``'s spike counter, where the file has one, counts ``y``: a site's divides each
    spike by the site's amplitude and sums (or, in files of before 2026-12-08, sums and
    divides), a signed site's of |y|, then rounds; a pool's sums sign(|y|). Its op types,
    what each node reads and what it writes (``spikes``: the step's count) are the format's."""
    c = CounterNames(rec.name)
    if not any(x in nodes for x in c.nodes):
        return              # (a counter left out: the readers say it is missing)
    pool = isinstance(rec, PoolRecord)
    signed = not pool and rec.signed
    want = {c.count_node: "ReduceSum"}
    if pool or signed:
        want[c.abs_node] = "Abs"
    if pool:
        want[c.sign_node] = "Sign"
    else:
        want.update({c.per_amplitude_node: "Div", c.round_node: "Round"})
    for name, op in want.items():
        n = nodes.get(name)
        if n is None or n.op_type != op or not n.input or not n.output:
            got = "missing" if n is None else f"a {n.op_type}"
            raise ModelLoadError(f"{where}: the spike counter of {rec.name} is not the format's: "
                                 f"its node '{name}' is {got}, not a {op}; the file is damaged "
                                 "or was edited, convert the model again")
    src = y
    if pool or signed:
        _wired(nodes[c.abs_node], nodes[c.abs_node].input, [y], "input", where)
        src = nodes[c.abs_node].output[0]
    count = nodes[c.count_node]
    if pool:
        sign = nodes[c.sign_node]
        _wired(sign, sign.input, [src], "input", where)
        _wired(count, count.input, [sign.output[0], c.axes], "input", where)
        last = count
    else:
        div, rnd = nodes[c.per_amplitude_node], nodes[c.round_node]
        amp = param_name(rec.name, "amplitude")
        if div.input[:1] == [src]:        # each spike over the amplitude, then the sum
            _wired(div, div.input, [src, amp], "input", where)
            _wired(count, count.input, [div.output[0], c.axes], "input", where)
            _wired(rnd, rnd.input, [count.output[0]], "input", where)
        else:                              # the sum, over the amplitude (files of before)
            _wired(count, count.input, [src, c.axes], "input", where)
            _wired(div, div.input, [count.output[0], amp], "input", where)
            _wired(rnd, rnd.input, [div.output[0]], "input", where)
        last = rnd
    if spikes is not None:
        _wired(last, last.output, [spikes], "output", where)


def _check_state_dims(states: Sequence["StateSpec"], inits: Dict[str, onnx.TensorProto],
                      where: str) -> None:
    """Each state's per-sample shape in the graph (``<owner>.shape`` or ``<owner>.<key>_dims``,
    which the loop graph expands its initial value to) is the one its record gives: a pool
    record of another ``out_shape`` counted 1568 neurons where the graph pooled 3136."""
    for st in states:
        t = inits.get(st.names.dims)
        if t is None:
            continue
        try:
            held = [int(d) for d in numpy_helper.to_array(t).reshape(-1)]
        except Exception:   # noqa: BLE001 -- unreadable: onnxruntime's own check says so
            continue
        if held != [int(d) for d in st.shape]:
            raise ModelLoadError(f"{where}: the state {st.names.input}'s shape {held} in the "
                                 f"graph is not its record's, {list(st.shape)}, in the "
                                 "metadata; the file is damaged or was edited, convert it again")


def _check_loop(g: onnx.GraphProto, loop: onnx.NodeProto, states: Sequence["StateSpec"],
                outputs: Sequence[str], where: str) -> None:
    """The time loop runs ``timesteps`` steps (its trip count is that input, which the
    metadata's T is checked against), and carries each state from its own initial value
    (its ``v_init``, or zeros, expanded to the batch) to its next value, slot by slot."""
    if not loop.input or loop.input[0] != TIMESTEPS_INPUT:
        raise ModelLoadError(f"{where}: the time loop '{loop.name}' runs "
                             f"'{loop.input[0] if loop.input else ''}' steps, not the "
                             f"'{TIMESTEPS_INPUT}' input (the T the metadata records); the file "
                             "was edited, convert the model again")
    body = next(a.g for a in loop.attribute if a.name == "body")
    slot = {x.name: i for i, x in enumerate(body.input)}
    producers = {o: n for n in g.node for o in n.output}
    for st in states:
        i = slot.get(st.names.input)
        if i is None or i < 2 or i >= len(loop.input) or i - 1 >= len(body.output) \
                or loop.input[i] != st.names.initial or body.output[i - 1].name != st.names.next:
            raise ModelLoadError(f"{where}: the time loop does not carry the state "
                                 f"{st.names.input} from {st.names.initial} to {st.names.next} "
                                 "in one slot; the file was edited, convert the model again")
        start = producers.get(st.names.initial)  # (the graph's own; a body's never)
        init = st.init or ZERO
        if start is None or start.op_type != "Expand" or start.input[:1] != [init]:
            got = "nothing" if start is None else f"'{start.input[0] if start.input else ''}'"
            raise ModelLoadError(f"{where}: the state {st.names.input} starts from {got}, not "
                                 f"from '{init}' expanded to the batch; the file was edited, "
                                 "convert the model again")
    # each output the loop averages is its steps' sum over T (a Div by a constant 1 kept the
    # top class and scaled every score)
    cast = producers.get(TIMESTEPS_FLOAT)
    stepped = set(loop.output)
    for o in outputs:                  # (the DNN's: not the spike counts)
        if steps_output_name(o) not in stepped:
            continue                  # (not computed in the step)
        n, on = producers.get(o), OutputNames(o)
        if n is not None and n.op_type == "Gather" and n.name == on.last:
            continue                  # (not a quantity: the last step's value)
        total = producers.get(on.sum)
        if n is None or n.op_type != "Div" or list(n.input) != [on.sum, TIMESTEPS_FLOAT] \
                or total is None or total.op_type != "ReduceSum" \
                or total.input[:1] != [steps_output_name(o)] \
                or cast is None or list(cast.input) != [TIMESTEPS_INPUT]:
            raise ModelLoadError(f"{where}: the output {o} is not its steps' sum over the "
                                 f"'{TIMESTEPS_INPUT}' input; the file was edited, convert the "
                                 "model again")


def _check_functions(model: onnx.ModelProto, calls: Sequence[onnx.NodeProto], where: str) -> None:
    """Every format function the graph calls is defined in the model, with a body and its
    signature (onnxruntime would otherwise fail at session creation, far from the cause)."""
    defined = {(f.domain, f.name): f for f in model.functions}
    for op in sorted({n.op_type for n in calls}):
        f = defined.get((DOMAIN, op))
        inputs, outputs = _signature(op)
        if f is None or not f.node or len(f.input) != len(inputs) or len(f.output) != len(outputs):
            what = "is not defined" if f is None else "has no body" if not f.node else \
                f"has {len(f.input)} inputs and {len(f.output)} outputs"
            raise ModelLoadError(f"{where}: the model-local function {DOMAIN}.{op}, which the "
                                 f"graph calls, {what}; the file is damaged or was edited, "
                                 "convert it again")
        if _body(f) != _body(_canonical_function(op, _onnx_opset(f.opset_import))):
            # every runtime but onnxruntime runs the format's rule, not the file's body
            raise ModelLoadError(f"{where}: the body of the model-local function {DOMAIN}.{op} "
                                 "is not the spiking format's (docs/FORMAT.md): the file was "
                                 "edited; convert the model again")


def _onnx_opset(imports) -> int:
    return next((o.version for o in imports if o.domain in ("", "ai.onnx")), 0)


def _canonical_function(op: str, opset: int) -> onnx.FunctionProto:
    """The format's definition of function ``op`` at ``opset``, as the converter writes it."""
    if op == NEURON_OP:
        return neuron_function(opset)
    if op == SIGNED_NEURON_OP:
        return signed_neuron_function(opset)
    return next(f for f in pool_functions(opset) if f.name == op)


def _body(f: onnx.FunctionProto) -> list:
    """A function's nodes as comparable values (op, inputs, outputs, attributes)."""
    return [(n.domain, n.op_type, list(n.input), list(n.output),
             sorted(a.SerializeToString() for a in n.attribute)) for n in f.node] + \
        [list(f.input), list(f.output), sorted(f.attribute)]


def _signature(op: str):
    """(inputs, outputs) of a format function, by its name."""
    if op == SIGNED_NEURON_OP:
        return SIGNED_NEURON_INPUTS, SIGNED_NEURON_OUTPUTS
    if op in NEURON_OPS:
        return NEURON_INPUTS, NEURON_OUTPUTS
    return POOL_INPUTS, POOL_OUTPUTS


def _check_call(n: onnx.NodeProto, inputs: Sequence[str], outputs: Sequence[str], what: str,
                where: str) -> None:
    """A format function call with every input and output of its signature, none empty."""
    if (len(n.input), len(n.output)) != (len(inputs), len(outputs)) \
            or not all(n.input) or not all(n.output):
        raise ModelLoadError(f"{where}: {what} has {len(n.input)} inputs and {len(n.output)} "
                             f"outputs, not {len(inputs)} and {len(outputs)}; the file is "
                             "damaged or was edited")


#: how far a site's parameter in the graph may be from the value its metadata records
#: (float64 in JSON, float32 in the graph, and through alpha = threshold / mu and back)
PARAMETER_RTOL = 1e-5


def _check_params(info: SpikingInfo, inits: Dict[str, onnx.TensorProto], where: str) -> None:
    """Every site's parameters present and finite, thresholds and amplitudes
    positive (a spike counter divides by the amplitude) and normal float32 numbers, leaks in
    [0, 1], and each the value the site's record in the metadata gives it."""
    for s in info.sites:      # (each state's shape in the graph: _check_state_dims)
        for p in PARAMS:
            name = param_name(s.name, p)
            if name not in inits:
                raise ModelLoadError(f"{where}: the parameter '{name}' of site {s.name} is "
                                     "missing; the file is damaged, convert it again")
            try:
                v = numpy_helper.to_array(inits[name])
            except Exception as e:  # truncated raw data and the like
                raise ModelLoadError(f"{where}: the parameter '{name}' cannot be read ({e})") from None
            if v.dtype != np.float32:      # (every spiking graph computes in float32)
                raise ModelLoadError(f"{where}: the parameter '{name}' is {v.dtype}, not float32 "
                                     "as the format's parameters are; the file is damaged or "
                                     "was edited, convert it again")
            if not np.all(np.isfinite(v)):
                raise ModelLoadError(f"{where}: the parameter '{name}' is not finite; the file "
                                     "is damaged (or fine-tuning diverged): use another file")
            full = (1,) + tuple(s.shape)    # a batch axis, then the site's per-sample shape
            if v.ndim > len(full) or any(a not in (1, b) for a, b in zip(v.shape[::-1], full[::-1])):
                raise ModelLoadError(f"{where}: the parameter '{name}' has shape {list(v.shape)}, "
                                     f"which does not broadcast to site {s.name}'s shape "
                                     f"{list(s.shape)}; the file is damaged or was edited, "
                                     "convert it again")
            if p == "threshold" and not np.all(v > 0):
                raise ModelLoadError(f"{where}: site {s.name} has a threshold <= 0 "
                                     f"({float(v.min()):g}); a neuron would fire on every step. "
                                     "The file is damaged or was edited; convert it again")
            if p == "leak" and not np.all(v >= 0):
                raise ModelLoadError(f"{where}: site {s.name} has a negative leak "
                                     f"({float(v.min()):g}); a membrane would change sign on "
                                     "every step (leaks are in [0, 1]). The file is damaged or "
                                     "was edited; convert it again")
            if p == "leak" and not np.all(v <= 1):
                raise ModelLoadError(f"{where}: site {s.name} has a leak above 1 "
                                     f"({float(v.max()):g}); a membrane would grow on every "
                                     "step (the PyTorch runtime caps leaks at 1, so the two "
                                     "runtimes would disagree). The file is damaged or was "
                                     "edited; convert it again")
            if p == "amplitude" and not np.all(v > 0):
                raise ModelLoadError(f"{where}: site {s.name} has a spike amplitude <= 0 "
                                     f"({float(v.min()):g}); spikes carry the layer's positive "
                                     "output scale. The file is damaged or was edited; convert "
                                     "it again")
            if p in ("threshold", "amplitude") and not np.all(v >= MIN_PARAMETER):
                raise ModelLoadError(f"{where}: site {s.name} has a {p} of {float(v.min()):g}, "
                                     f"below float32's smallest normal number ({MIN_PARAMETER:.3g}): "
                                     "onnxruntime flushes it to 0 and PyTorch does not, so the "
                                     "two runtimes would disagree. The file is damaged or was "
                                     "edited; convert it again")
            if p == "amplitude" and s.folded_amplitude is not None:
                continue      # (folded into the next layers: fine-tuning before 2026-12-03
                #              trained the graph's 1 and wrote its value beside the record)
            want = s.param_values()[p]
            if not np.allclose(v, want, rtol=PARAMETER_RTOL, atol=0.0):
                i = np.unravel_index(np.argmax(np.abs(np.broadcast_to(v, np.broadcast_shapes(
                    v.shape, want.shape)) - want)), np.broadcast_shapes(v.shape, want.shape))
                held = float(np.broadcast_to(v, np.broadcast_shapes(v.shape, want.shape))[i])
                recorded = float(np.broadcast_to(want, np.broadcast_shapes(v.shape, want.shape))[i])
                raise ModelLoadError(f"{where}: the parameter '{name}' holds {held:.7g} where "
                                     f"{META_SITES} records {recorded:.7g} for site {s.name}; "
                                     "the graph and its metadata must hold the same values "
                                     "(every onnx-snn command writes both). The file was "
                                     "edited: convert the model again, or edit both")


def require_spiking(model: onnx.ModelProto, where: str = "model") -> SpikingInfo:
    """The checked metadata of a spiking model (see :func:`read_spiking`)."""
    return read_spiking(model, where).info
