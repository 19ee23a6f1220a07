"""The conversion API: DNN ONNX in, calibrated spiking ONNX out.

``convert`` does it in one call; ``prepare`` + ``calibrate`` + ``build`` expose the three
stages so that one calibration can serve several methods and time-step counts.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import threading
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import __version__, auto_reconstruct, json_text
from .notes import WARNING_NOTE, interface
from .auto_reconstruct import AUTO
from .calibrate import (check_seed, DEFAULT_BATCH_SIZE, DEFAULT_CALIB_SAMPLES, DEFAULT_SAMPLE_SIZE,
                        Calibration, calibrate, model_key, record_sites, tensor_shapes)
from .datasets import (INPUT_KEYS, LABEL_KEYS, Dataset, array_like, check_unambiguous_keys,
                       as_float32, input_key, apply_preprocess, check_finite,
                       is_inputs_labels, named_dataset, split_arrays,
                       check_inputs, check_labels, check_preprocess, check_raw_pixels,
                       label_key, load_dataset, PREPROCESS_LIMIT, RAW_PIXELS, recorded_data_name, sample_count,
                       to_input_layout)
from .errors import (DataError, InternalError, MissingDependencyError, ModelLoadError,
                     UnsupportedModelError, UsageError, listed)
from .flags import checks_flags
from .values import is_int
from .feeds import fixed_batch, input_specs, validate_feeds
from .graph.inputs import PIXELS_255, own_scaling
from .graph.normalize import NormalizedModel, normalize
from .model_io import PathLike, load, write_text_atomic
from .scales import (DEFAULT_METHOD, DEFAULT_TIMESTEPS, METHODS, OBJECTIVES, REFINED,
                     T_DEPENDENT_METHODS, SearchConfig,
                     choose_params, estimate_mu)
from .sequential import check_refine_memory
from .spiking import format as fmt
from .spiking import rewrite

log = logging.getLogger("onnx_snn")

# ------------------------------------------------------------------ limits
# What one command may ask for. Each bounds the time or memory of a step that grows with the
# value (checked before any work; a UsageError, exit code 2, names the limit and why). The
# defaults they bound: DEFAULT_TIMESTEPS and SearchConfig (scales.py), DEFAULT_BATCH_SIZE and
# DEFAULT_SAMPLE_SIZE (calibrate.py).

#: time steps: the Loop, the evaluation and fine-tuning's backprop grow linearly with T (the
#: method targets T = 1-4; rate-coded conversions rarely go past a few thousand)
MAX_TIMESTEPS = 4096
#: samples per onnxruntime / torch batch
MAX_BATCH_SIZE = 65536
#: values kept per site for the search (--sample-size) and the refinement's pairs
#: (SearchConfig.sequential_sample): float32 each, sorted, then searched in float64
MAX_SAMPLE_SIZE = 10_000_000
#: beta grid points (beta_max / beta_step; default 2000)
MAX_BETA_GRID = 100_000
#: finest alpha grid: candidates at every STEP-th percentile (default 1: 101 candidates)
MIN_PERCENTILE_STEP = 0.01
#: cells of the (alpha x beta [x (T+1) for l1]) table the datta search builds per site, several
#: float64 arrays of this size (default: 101 x 2000 = 202 000)
MAX_SEARCH_CELLS = 2 ** 24
#: a model's clip bound more than this many times the largest calibration value at its site
#: is not a trained threshold (Clip(0, FLT_MAX) and Clip(0, 1e6) are how some exporters write
#: a ReLU): the site is converted as a plain ReLU, with a warning
UNUSED_CLIP_FACTOR = 100.0


def check_timesteps(value, name: str = "timesteps") -> int:
    """``value`` as an int in 1..MAX_TIMESTEPS; anything else (2.7, True, "2") is refused."""
    if not is_int(value):
        raise UsageError(f"{name} must be a whole number of time steps (an int), not "
                         f"{value!r} ({type(value).__name__})")
    value = int(value)
    if not 1 <= value <= MAX_TIMESTEPS:
        raise UsageError(f"{name} must be between 1 and {MAX_TIMESTEPS} (MAX_TIMESTEPS: time and "
                         f"memory grow linearly with T; the method targets 1-4), not {value}")
    return value


def check_recorded_timesteps(recorded: int, where: str) -> None:
    """A spiking file's recorded T, run when no T is given: above MAX_TIMESTEPS the file is
    damaged (no conversion writes it), a :class:`ModelLoadError` naming it."""
    if recorded > MAX_TIMESTEPS:
        raise ModelLoadError(f"{where}: the model records T={recorded}, above the limit of "
                             f"{MAX_TIMESTEPS} time steps (MAX_TIMESTEPS); the file is damaged, "
                             "or pass -T")


def fitted_timesteps(info: "fmt.SpikingInfo") -> Optional[int]:
    """The T a spiking model's parameters were fitted for: that of its last fine-tuning, else
    of its conversion when the method searches them for T (``refined``, ``datta``), as the
    history records them (a deploy graph written for another T keeps them); the file's T
    when the history does not say. None when they hold at any T (``max``, ``deng``,
    ``percentile`` as converted)."""
    step = _fitting_step(info)
    if step is not None and step[0] in TRAINING_STEPS:
        return step[1]
    if info.method not in T_DEPENDENT_METHODS:
        return None
    return step[1] if step is not None else info.timesteps


#: the history's steps that train the parameters at the file's T (``convert --reconstruct``
#: records one of its own after the conversion's)
TRAINING_STEPS = ("finetune", "reconstruct")


def _fitting_step(info: "fmt.SpikingInfo"):
    """("convert", "finetune" or "reconstruct", T) of the history's last step that fitted the
    parameters (a fine-tuning that wrote its starting model, ``epochs_done`` 0, fitted
    nothing; a reconstruction whose values were not kept neither)."""
    for h in reversed(info.history):
        if isinstance(h, dict) and h.get("step") == "finetune" and h.get("epochs_done") == 0:
            continue
        if isinstance(h, dict) and h.get("step") == "reconstruct" and h.get("kept") is False:
            continue
        if isinstance(h, dict) and h.get("step") in ("convert",) + TRAINING_STEPS and \
                is_int(h.get("timesteps")) and h["timesteps"] >= 1:
            return h["step"], int(h["timesteps"])
    return None


def warn_other_timesteps(info: "fmt.SpikingInfo", timesteps, where: str,
                         what: str = "run") -> Optional[str]:
    """A warning when a model whose parameters were fitted for one T (:func:`fitted_timesteps`)
    is run at another: its thresholds and amplitudes are not rate-exact there, and its
    accuracy can fall as T grows (a refined depthwise net: 59 % at its T = 2, 17 % at 16).
    Returns what it warned (None: nothing), for a result's warnings."""
    fitted = fitted_timesteps(info)
    other = sorted({int(t) for t in timesteps if t is not None and int(t) != fitted})
    if fitted is None or not other:
        return None
    step = _fitting_step(info)
    tuned = step is not None and step[0] == "finetune"
    again = "" if step is None or step[0] != "reconstruct" else " --reconstruct"
    how = {"finetune": "fine-tuned", "reconstruct": f"converted ({info.method}) and reconstructed"
           }.get(step[0] if step else None, f"converted ({info.method})")
    at = ", ".join(map(str, other))
    if what == "fine-tuning starts":     # fine-tuning at the new T is itself the fix
        start = ("its own fine-tuning's" if tuned else
                 f"a conversion for T={other[-1]} (convert the DNN again with -T {other[-1]}{again})")
        text = (f"{where}: its parameters were {how} for T={fitted}; fine-tuning starts at "
                f"T={at} from parameters that are not rate-exact there, so its first epochs "
                f"start lower than from {start}")
        log.warning(text)
        return text
    fix = (f"fine-tune it at T={other[-1]} (-T {other[-1]})" if tuned else
           f"convert the DNN again with -T {other[-1]}{again}")
    text = (f"{where}: its parameters were {how} for T={fitted}; {what} at T={at}, they are "
            f"not rate-exact, and accuracy can fall, even as T grows. For T={other[-1]}, {fix}")
    log.warning(text)
    return text


def warn_other_timesteps_once(info: "fmt.SpikingInfo", timesteps: int, where: str,
                              warned: set) -> None:
    """:func:`warn_other_timesteps` for a runtime run at ``timesteps``, once per T (``warned``:
    the T it has run at, kept by the runtime)."""
    if timesteps not in warned:
        warned.add(timesteps)
        warn_other_timesteps(info, [timesteps], where)


def check_count(value, name: str, maximum: Optional[int] = None, allow_none: bool = False,
                why: str = "") -> Optional[int]:
    """A positive int (at most ``maximum``), or None when allowed."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < 1:
        raise UsageError(f"{name} must be a positive whole number, not {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be at most {maximum}{why}, not {value}")
    return int(value)


def remember_dataset(metadata: Dict[str, str], data, trained: bool = False) -> Dict[str, str]:
    """The metadata to add so that a model remembers the named dataset ``data``
    (fashion-mnist, cifar10, ...) it was converted or fine-tuned on, where ``metadata``
    records none: the commands after this one (eval, finetune, analyze) then default to it,
    as they do for the zoo's models (a user's own DNN records none, and eval of its
    conversion asked for --data again). ``trained``: the model was trained on ``data``
    (fine-tuned), which then replaces another named dataset it records (eval without --data
    read the dataset of the DNN it was converted from). Empty when there is nothing to add."""
    name = named_dataset(data)
    recorded = metadata.get(fmt.META_DATASET)
    if not name or (recorded and not trained) or named_dataset(recorded or "") == name:
        return {}
    return {fmt.META_DATASET: name}


def search_cells(cfg: SearchConfig, timesteps: int, method: str) -> int:
    """Cells of the largest table the (alpha, beta) search of one site builds."""
    betas = int(round(cfg.beta_max / cfg.beta_step))
    alphas = int(100.0 / cfg.percentile_step) + 1
    if method not in ("datta", REFINED) and not cfg.sequential:
        return 0
    cells = alphas * betas * ((timesteps + 1) if cfg.objective == "l1" else 1)
    if method == REFINED or cfg.sequential:
        cells = max(cells, (alphas * len(cfg.v_init_fractions) + 1) * betas)
    return cells


#: SearchConfig fields that only the refinement reads (``refined``, or ``datta`` with
#: ``sequential``), with the convert flag that sets each one (None: the API's alone)
REFINEMENT_FIELDS = {"per_channel": "--no-per-channel", "weight_calibration": "--no-weight-calibration",
                     "bias_correction": "--no-bias-correction", "search_stride": "--search-stride",
                     "v_init_fractions": None, "sequential_sample": None, "weight_ridge": None,
                     "weight_holdout": None, "one_step_ceiling": None, "weight_target_floor": None,
                     "weight_ridge_grid": None, "weight_ridge_to_original": None}
#: SearchConfig fields of one method's search, and the methods that run it
SEARCH_FIELDS = ((("percentile_step", "beta_step", "beta_max"), ("datta", REFINED)),
                 (("percentile",), ("percentile",)))


def check_method_options(cfg: SearchConfig, method: str, cli: bool = False) -> None:
    """A UsageError for every option of ``cfg`` set (unlike the default) for a search that
    ``method`` does not run: it would change nothing, silently (an outside sweep found
    byte-identical conversions). ``objective`` is every method's reported ``objective_value``,
    so it is taken; ``search_stride`` 1 is what 0 (automatic) gives up to T = 4. ``cli``:
    name them as ``onnx-snn convert``'s flags, else as keyword arguments."""
    default = SearchConfig()

    def changed(name: str) -> bool:
        value = getattr(cfg, name)
        if name == "search_stride":
            return value not in (0, 1)
        return value != getattr(default, name)

    def spelled(name: str) -> str:
        value = getattr(cfg, name)
        if not cli:
            return f"{name}={value!r}"
        flag = REFINEMENT_FIELDS.get(name) or "--" + name.replace("_", "-")
        if isinstance(value, bool):
            return flag
        return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"

    def methods(names) -> str:
        return ("--method " if cli else "method ") + " or ".join(
            m if cli else repr(m) for m in names)

    refining = method == REFINED or cfg.sequential
    groups = [] if refining else [(list(REFINEMENT_FIELDS), (REFINED,), "refinement")]
    groups += [(list(f), ms, "search") for f, ms in SEARCH_FIELDS if method not in ms]
    for names, ms, what in groups:
        unused = [spelled(n) for n in names if changed(n)]
        if unused:
            raise UsageError(f"{', '.join(unused)} set{'s' if len(unused) == 1 else ''} the "
                             f"{what} of {methods(ms)}, which {methods([method])} does not run; "
                             f"drop {'it' if len(unused) == 1 else 'them'} or use "
                             f"{methods(ms[:1])}")


def check_search_limits(cfg: SearchConfig, timesteps: int, method: str) -> None:
    """The search grids of ``cfg`` within MAX_BETA_GRID, MIN_PERCENTILE_STEP, MAX_SEARCH_CELLS
    and MAX_SAMPLE_SIZE (UsageError naming the limit otherwise)."""
    betas = int(round(cfg.beta_max / cfg.beta_step))
    if betas > MAX_BETA_GRID:
        raise UsageError(f"the beta grid would have {betas:,} points (beta max {cfg.beta_max:g} / "
                         f"beta step {cfg.beta_step:g}); the limit is {MAX_BETA_GRID:,} "
                         "(MAX_BETA_GRID: every point is tried for every alpha): raise --beta-step "
                         "or lower --beta-max")
    if cfg.percentile_step < MIN_PERCENTILE_STEP:
        raise UsageError(f"the percentile step {cfg.percentile_step:g} is below the limit "
                         f"{MIN_PERCENTILE_STEP:g} (MIN_PERCENTILE_STEP: {int(100 / MIN_PERCENTILE_STEP):,} "
                         "alpha candidates at most, each tried with every beta)")
    cells = search_cells(cfg, timesteps, method)
    if cells > MAX_SEARCH_CELLS:
        l1 = cfg.objective == "l1"
        raise UsageError(
            f"the {method} search would build a table of {cells:,} (alpha, beta"
            f"{', step' if l1 else ''}) cells per layer; the limit is {MAX_SEARCH_CELLS:,} "
            "(MAX_SEARCH_CELLS, memory): raise --percentile-step or --beta-step, lower --beta-max"
            + (", or use a smaller -T or another --objective (l1 grows with T)" if l1 else ""))
    check_count(cfg.sequential_sample, "the refinement's sample (sequential_sample)",
                MAX_SAMPLE_SIZE, why=" (MAX_SAMPLE_SIZE, memory)")


def _refuse_spiking(model: onnx.ModelProto, where: str) -> None:
    """A spiking model (or one holding the format's neuron calls) is not a DNN to convert."""
    if fmt.is_spiking(model):        # its metadata, or the format's functions (calls_format)
        meta = fmt.metadata(model)
        why = (f"it has {fmt.META_FORMAT} metadata" if fmt.META_FORMAT in meta else
               f"it calls {fmt.DOMAIN} functions")
        deployed = meta.get(fmt.META_GRAPH) == fmt.GRAPH_DEPLOY
        raise UnsupportedModelError(
            f"{where}: already a spiking model ({why}); convert the original DNN instead, or "
            + ("use `onnx-snn eval` or `info` on this deploy graph" if deployed else
               "use `onnx-snn eval`, `finetune` or `info` on this file"))

@dataclass
class SpikingModel:
    """A converted network: the single-call ONNX model plus what produced it.

    ``normalized`` is the DNN the spiking model was built from: after the ``refined``
    method's weight calibration its layers hold the refitted weights (fitted to spiking
    inputs), so it is not the source DNN; take that from :func:`prepare` (or the file)."""

    model: onnx.ModelProto
    normalized: NormalizedModel
    records: Dict[str, fmt.SiteRecord]
    timesteps: int
    method: str
    report: dict = field(default_factory=dict)
    input_shapes: dict = field(default_factory=dict)
    pools: Dict[str, fmt.PoolRecord] = field(default_factory=dict)
    #: the files the calibration data came from: :meth:`save` never writes over them
    data_files: List[str] = field(default_factory=list)

    def step_model(self) -> onnx.ModelProto:
        """The one-time-step graph (states in, next states out)."""
        meta = fmt.metadata(self.model)
        return rewrite.step_model(self.normalized, self.records, meta, self.input_shapes,
                                  self.pools)

    @checks_flags
    def binary_model(self, step: bool = False) -> onnx.ModelProto:
        """The model with every foldable spike amplitude moved into the next layer's weights
        (0/1 spikes); ``self.report['binary_spikes']`` says which sites kept theirs and why."""
        from .spiking.binary import fold_amplitudes
        model, result = fold_amplitudes(self.step_model() if step else self.model)
        self.report["binary_spikes"] = result
        return model

    @checks_flags
    def form(self, step: bool = False, binary_spikes: bool = False,
             deploy: bool = False, unit_thresholds: bool = False,
             batch_chunk: Optional[int] = None) -> onnx.ModelProto:
        """The model written out: the single-call model, the step graph or the deploy graph
        (inference only, see :mod:`onnx_snn.spiking.deploy`; ``unit_thresholds``: its faster
        form; ``batch_chunk``: its samples per run, default ``DEFAULT_BATCH_CHUNK``), each in
        the binary-spike form when asked."""
        if deploy:
            from .spiking.batch_chunks import DEFAULT_BATCH_CHUNK, check_batch_chunk
            from .spiking.deploy import deploy_model
            chunk = DEFAULT_BATCH_CHUNK if batch_chunk is None else check_batch_chunk(batch_chunk)
            return deploy_model(fmt.read_spiking(self.form(False, binary_spikes)),
                                unit_thresholds=unit_thresholds, batch_chunk=chunk)
        if binary_spikes:
            return self.binary_model(step)
        return self.step_model() if step else self.model

    @checks_flags
    def to_bytes(self, step: bool = False, binary_spikes: bool = False) -> bytes:
        """The serialized model (or step graph, or binary-spike form) in one message, weights
        included (what :meth:`save` writes unless the weights go to external data, see
        :meth:`files`)."""
        return self.form(step, binary_spikes).SerializeToString()

    def report_bytes(self) -> bytes:
        return (json_text.dumps(self.report) + "\n").encode("utf-8")

    def external_data(self) -> bool:
        """Whether :meth:`save` writes the weights to an external-data file: when the source
        model kept them in one (loaded from a file with external data), or when the model is
        2 GB or more (one protobuf message cannot hold it)."""
        from .graph import skeleton
        return self.normalized.external_data or \
            skeleton.byte_size(self.model) >= skeleton.MAX_PROTOBUF

    @checks_flags
    def files(self, path: PathLike, step: bool = False, binary_spikes: bool = False,
              external: Optional[bool] = None, avoid=(), deploy: bool = False,
              unit_thresholds: bool = False, batch_chunk: Optional[int] = None) -> list:
        """The (path, data) items :meth:`save` writes (for ``model_io.write_all_atomic``, with
        other outputs): the model file, and with external data (``external``, by default
        :meth:`external_data`) ``<name>.data`` beside it, streamed tensor by tensor, its path
        checked against ``avoid`` (see ``model_io.model_items``)."""
        from .model_io import model_items
        return model_items(self.form(step, binary_spikes, deploy, unit_thresholds, batch_chunk), path,
                           self.external_data() if external is None else external, avoid)

    @checks_flags
    def save(self, path: PathLike, *inputs: PathLike, step: bool = False,
             binary_spikes: bool = False, external: Optional[bool] = None) -> Path:
        """Write the model atomically; refuses to overwrite the source model (or ``inputs``),
        a folder, a device or pipe, or to write into a missing folder. With external data
        (see :meth:`external_data`) the weights go to ``<name>.data`` beside the model, both
        files written together (all or none)."""
        from .model_io import check_output_path, model_files, write_all_atomic
        nm = self.normalized
        src = [] if not nm.source_path else \
            model_files(nm.source_path) if nm.external_data else [nm.source_path]
        inputs = (*inputs, *self.data_files)
        target = check_output_path(path, *src, *inputs)
        write_all_atomic(self.files(target, step, binary_spikes, external, avoid=[*src, *inputs]))
        return target

    def save_report(self, path: PathLike, *inputs: PathLike) -> Path:
        """The conversion's report as JSON at ``path`` (never over the DNN or ``inputs``)."""
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"save_report takes a file path, not {type(path).__name__}")
        if Path(path).suffix.lower() == ".onnx":     # a model's name: over the model just saved
            raise UsageError(f"{path}: the report is JSON; give it a .json name (a .onnx name "
                             "is a model's, and the report would replace it)")
        src = [self.normalized.source_path] if self.normalized.source_path else []
        return write_text_atomic(self.report_bytes().decode("utf-8"), path, *src, *inputs,
                                 *self.data_files)

    @property
    def info(self) -> fmt.SpikingInfo:
        return fmt.read_info(self.model)


def free_input_dims(model: onnx.ModelProto) -> Dict[str, List[int]]:
    """{input: the positions of its free non-batch dimensions}, for the inputs that have any."""
    return {name: [i for i, d in enumerate(dims) if i > 0 and d is None]
            for name, dims in input_specs(model) if any(d is None for d in dims[1:])}


def pin_inputs(model: onnx.ModelProto, input_shapes: Dict[str, tuple]) -> List[str]:
    """Give ``model``'s free non-batch input dimensions (in place) the sizes of
    ``input_shapes`` ({input: per-sample shape}, the calibration data's); the batch stays free.
    Returns a note per input pinned."""
    notes = []
    free = free_input_dims(model)
    for vi in model.graph.input:
        shape = input_shapes.get(vi.name)
        if vi.name not in free or shape is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(shape) + 1:
            continue      # the feed check names the mismatch later
        before = ["N"] + [d.dim_param or "?" if not d.HasField("dim_value") else d.dim_value
                          for d in list(dims)[1:]]
        for i in free[vi.name]:
            dims[i].Clear()
            dims[i].dim_value = int(shape[i - 1])
        notes.append(interface(
            f"input '{vi.name}' {before} was pinned to the calibration data's "
            f"{['N'] + [int(a) for a in shape]} before the conversion: the model cannot be "
            "converted with those dimensions free, and its spiking model takes the calibration "
            "data's shape only"))
    return notes


def _check_input_shapes(model: onnx.ModelProto, input_shapes: Dict[str, tuple]) -> None:
    """UsageError unless ``input_shapes`` names the model's inputs with per-sample shapes of
    positive whole numbers that fit the dimensions the model fixes."""
    if not isinstance(input_shapes, Mapping):
        raise UsageError(f"input_shapes is a dict {{input name: per-sample shape}}, not "
                         f"{type(input_shapes).__name__} {input_shapes!r}")
    specs = dict(input_specs(model))
    names = list(specs)
    for name, shape in input_shapes.items():
        if name not in names:
            raise UsageError(f"input_shapes names '{name}', which is not an input of the model "
                             f"(its inputs: {names})")
        try:
            ok = all(int(d) == d and int(d) > 0 for d in shape)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"input_shapes['{name}'] must be the per-sample shape (without the "
                             f"batch) as positive whole numbers, not {shape!r}")
        dims = list(specs[name])[1:]
        if len(dims) != len(shape) or any(d is not None and d != int(s)
                                          for d, s in zip(dims, shape)):
            fixed = ["?" if d is None else d for d in dims]
            raise UsageError(f"input_shapes['{name}'] = {list(shape)} does not fit the model's "
                             f"input '{name}' of per-sample shape {fixed} (? = free); give "
                             "sizes for its free dimensions only, or none")


#: above this T, ``refined`` warns that it will be slow (and what converts fast)
SLOW_REFINE_TIMESTEPS = 8


def _output_names(outputs) -> Optional[List[str]]:
    """``outputs`` (a name or a sequence of names; None: all) as a list, checked."""
    if outputs is None:
        return None
    names = [outputs] if isinstance(outputs, str) else outputs
    try:
        names = list(names)
    except TypeError:
        raise UsageError(f"outputs must be an output name or a list of them, not "
                         f"{type(outputs).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise UsageError(f"outputs must be output names (strings), not {bad[0]!r}")
    return names


@checks_flags
def prepare(model: Union[PathLike, onnx.ModelProto], pool_first: bool = False,
            input_shapes: Optional[Dict[str, tuple]] = None,
            outputs: Optional[Sequence[str]] = None) -> NormalizedModel:
    """Load and normalize a DNN (raises clear errors for unsupported graphs, and for a model
    that is already spiking). ``pool_first``: move each max pool that reads an activation
    ahead of it (the same DNN; the spiking layer then fires on the pooled map; see
    docs/FORMAT.md). ``input_shapes`` ({input: per-sample shape}): the inputs' free non-batch
    dimensions get those sizes first (:func:`pin_inputs`; a model given as a ModelProto is
    pinned while it is read and then put back as it was). ``outputs``: the graph outputs to
    keep, with the nodes that compute them (None: all; the model itself is not changed)."""
    from .calibrate import quiet_onnxruntime
    outputs = _output_names(outputs)
    quiet_onnxruntime()   # normalization's constant folding runs onnxruntime sessions too
    if isinstance(model, onnx.ModelProto):
        _refuse_spiking(model, model.graph.name or "model")
        if input_shapes:
            _check_input_shapes(model, input_shapes)
        if not (input_shapes and free_input_dims(model)):
            return normalize(model, pool_first=pool_first, outputs=outputs)
        # pinned in place for the normalization (which copies what it keeps) and put back:
        # a copy of the whole ModelProto would hold its weights twice
        saved = [onnx.ValueInfoProto() for _ in model.graph.input]
        for keep, vi in zip(saved, model.graph.input):
            keep.CopyFrom(vi)
        try:
            pins = pin_inputs(model, input_shapes)
            nm = normalize(model, pool_first=pool_first, outputs=outputs)
        finally:
            for keep, vi in zip(saved, model.graph.input):
                vi.CopyFrom(keep)
        nm.notes[:0] = pins
        return nm
    if not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}"
                         + (" (a SpikingModel is converted already: use evaluate, deploy or "
                            "finetune)" if type(model).__name__ == "SpikingModel" else ""))
    path = str(model)
    loaded = load(path, check=False, sha256=True)   # the file read once, hashed meanwhile
    _refuse_spiking(loaded.model, path)
    if input_shapes:
        _check_input_shapes(loaded.model, input_shapes)
    pins = pin_inputs(loaded.model, input_shapes) if input_shapes else []
    nm = normalize(loaded.model, where=path, pool_first=pool_first, outputs=outputs)
    nm.notes[:0] = pins
    nm.source_path = path
    nm.source_sha256 = loaded.sha256
    nm.external_data = loaded.external_data
    return nm


def _as_list(v) -> list:
    return [float(a) for a in np.asarray(v, np.float64).reshape(-1)]


def same_values(a, b) -> bool:
    """Whether two mean (or std) values are the same numbers (a scalar and a list of it too)."""
    try:
        return bool(np.allclose(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)))
    except (ValueError, TypeError):
        return False


def values_text(v) -> str:
    """A mean or std (a number or a list of them) as ``[a, b, c]``, 4 significant digits."""
    try:
        return "[" + ", ".join(f"{a:.4g}" for a in _as_list(v)) + "]"
    except (TypeError, ValueError):
        return repr(v)


def warn_preprocess_override(where: str, mean, std, recorded: Optional[dict], then: str) -> bool:
    """--mean/--std (``mean``, ``std``) that differ from the preprocessing ``where`` records
    (``recorded``): one warning, worded alike by every command that takes them (convert,
    eval, analyze, finetune; a warning, not a note, so -q does not hide it: the model then
    sees other inputs than it was trained or converted on), ending with ``then``, what
    the command does about it. Returns whether they differ (False without both, or without
    a record)."""
    if mean is None or std is None or not isinstance(recorded, dict):
        return False
    if same_values(recorded.get("mean"), mean) and same_values(recorded.get("std"), std):
        return False
    log.warning("%s: --mean/--std override the preprocessing it records (mean %s, std %s) "
                "with mean %s, std %s; %s", where, values_text(recorded.get("mean")),
                values_text(recorded.get("std")), values_text(mean), values_text(std), then)
    return True


def _looks_unnormalized(x: np.ndarray, preprocess: Optional[dict]) -> bool:
    """Float inputs with no negative value, for a model that records a normalization with a
    positive mean (normalized images have negative values wherever a pixel is darker than
    the mean: raw [0, 1] or [0, 255] pixels fed to such a model lost 36 points of top-1
    without a word, while integer pixels were warned about)."""
    if not preprocess or x.dtype.kind != "f" or x.size == 0:
        return False
    try:
        mean = np.asarray(preprocess.get("mean", []), np.float64)
    except (TypeError, ValueError):
        return False
    return mean.size > 0 and bool(np.all(mean > 0)) and float(np.min(x)) >= 0.0


def _dict_dataset(data: dict, specs=None, split: Optional[str] = None,
                  labels: bool = True) -> Dataset:
    """A dict of arrays read as a .npz is: one array per model input named after it, or
    ``x`` (data, images, inputs) alone; labels under ``y`` (labels, targets), unless the
    model (``specs``) has an input of that name, or the dict holds nothing else; Keras's
    ``x_train``/``y_train``, ``x_test``/``y_test``: the ``split`` asked for (default test)."""
    check_unambiguous_keys(list(data), "the data dict")
    names = [n for n, _ in specs or ()]
    found = split_arrays(list(data), split, names, "the data dict", labels)
    if found is not None:          # x_test (or z_test beside it for inputs x, z) and y_test
        arrays, yk = found
        data = {**{i: data[k] for i, k in arrays.items()}, **({"y": data[yk]} if yk else {})}
    arrays = {k: array_like(v, f"input {k!r}") for k, v in data.items()}
    yk = label_key(arrays, names)
    generic = input_key(arrays)
    unused = [k for k in arrays if names and k != yk and k not in names and k != generic]
    if unused and (len(names) > 1 or generic is not None or any(k in arrays for k in names)):
        log.warning("the data dict's array(s) %s are not used: inputs are read from arrays named "
                    "after the model's inputs (%s) or %s, labels from %s", ", ".join(map(repr, unused)),
                    ", ".join(names), "/".join(INPUT_KEYS), "/".join(LABEL_KEYS))
    y = arrays.pop(yk) if yk else None
    x = arrays
    if len(arrays) == 1 and generic is not None:
        x = next(iter(arrays.values()))
    if y is not None:
        y = check_labels(y, sample_count(arrays, "the data dict"), f"the data dict's {yk!r}") \
            if labels else None
    return Dataset("array", x, y, preprocessed=True)


def check_mean_std(mean, std, recorded: Optional[dict]) -> None:
    """--mean/--std given: both (one alone would pair with a silent default: a model recording
    std 0.353 given --mean 0.3 was fed std 1), finite float32 numbers, std positive and not
    so small that [0, 1] pixels leave float32 (a :class:`UsageError` naming them)."""
    if (mean is None) != (std is None):
        has = (f" (the model records mean {recorded.get('mean')} and std {recorded.get('std')})"
               if isinstance(recorded, dict) else "")
        gone = "std" if std is None else "mean"
        raise UsageError(f"{gone} (--{gone}) is missing: give mean and std (--mean and --std) "
                         f"together{has}")
    limit = PREPROCESS_LIMIT      # (x - mean) / std of pixels in [0, 1] stays inside float32
    arrays = {}
    for key, v in (("mean", mean), ("std", std)):
        try:
            a = arrays[key] = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise UsageError(f"--{key} must be numbers, not {v!r}") from None
        bad = (a.size == 0 or not np.all(np.isfinite(a)) or np.any(np.abs(a) > limit)
               or (key == "std" and np.any(a < 1 / limit)))
        if bad:
            raise UsageError(f"--{key} {v!r}: expected finite numbers of magnitude at most {limit:g}"
                             + (f", std at least {1 / limit:g}" if key == "std" else ""))
    m, sd = np.abs(arrays["mean"]), arrays["std"]
    if m.size == sd.size or 1 in (m.size, sd.size):
        if np.any((m + 1) / sd > limit):    # pixels in [0, 1] scaled past float32's range
            raise UsageError(f"mean {mean!r} and std {std!r} (--mean/--std) scale [0, 1] pixels "
                             "beyond 1e30, past what float32 holds")


def resolve_data(data, preprocess: Optional[dict] = None, mean=None, std=None,
                 data_dir=None, split: Optional[str] = None, download: bool = False,
                 specs=None, take=None, scaling: Optional[str] = None,
                 raw_pixels: Optional[str] = None, labels: bool = True, classes=None,
                 show_progress: bool = True, all_rows: bool = False) -> Dataset:
    """Turn an array, Dataset, name or file into preprocessed model inputs.

    Named datasets (images in [0, 1]) get ``mean``/``std`` when given, else the model's
    recorded preprocessing ``preprocess``; a model that records none gets the raw [0, 1]
    pixels, with a warning. Arrays, .npy/.npz files and :class:`Dataset` objects marked
    ``preprocessed`` are taken as already preprocessed: ``mean``/``std`` with them is a
    :class:`UsageError` (normalize the arrays yourself). The result's ``preprocess`` says
    what was applied to a named dataset (None for arrays). ``specs`` (the model's inputs,
    :func:`~onnx_snn.feeds.input_specs`): a named dataset's images are put in the layout of
    its image input (NHWC for a channels-last model; arrays are taken as given). ``take`` =
    (n, seed): the caller keeps only ``Dataset.take(n, seed)`` of the result, so a folder of
    images reads only those. ``scaling``: how the model scales its input itself
    (:func:`~onnx_snn.graph.inputs.input_scaling`), for the warning about raw pixels;
    ``raw_pixels``: why its own scaling says it takes 0-255 pixels
    (:func:`~onnx_snn.graph.inputs.scales_raw_pixels`): a named dataset or image folder is
    then fed so when neither a recorded preprocessing nor mean/std says otherwise (arrays
    are taken as given, as always). ``labels=False``: the caller uses no labels (convert,
    calibrate): an array file's or a dict's are neither read nor checked. ``classes``: the
    model's class names (``datasets.model_classes``), which label an image folder's classes.
    ``show_progress=False``: no bar while a folder of images is read. A file's samples
    beyond ``take`` are dropped before any check reads them (a memory-mapped .npy of 9.4 GB
    was read whole to evaluate 100 samples), unless ``all_rows`` (convert: it may train on
    more of the data than it calibrates on).
    """
    given = mean is not None or std is not None
    if is_inputs_labels(data):       # (inputs, labels), as evaluate takes them
        inner = resolve_data(data[0], preprocess, mean, std, data_dir, split, download, specs,
                             take, scaling, raw_pixels, labels, classes, show_progress)
        return dataclasses.replace(inner, y=check_labels(data[1], len(inner), "data")
                                   if labels else None)
    if isinstance(data, tuple):      # a pair whose labels do not fit its inputs, or no pair
        def shape(d):
            try:
                return list(np.shape(next(iter(d.values())) if isinstance(d, dict) and d else d))
            except (ValueError, TypeError):
                return "ragged"
        shapes = [shape(d) if not isinstance(d, (str, bytes)) else type(d).__name__
                  for d in data[:3]]
        raise DataError(f"data: a tuple is (inputs, labels) with one label per sample; this one "
                        f"has {len(data)} item(s) of shape(s) {shapes}" + (
                            "" if len(data) == 2 else "; pass an array for inputs alone"))
    if isinstance(data, Dataset):
        ds = data
    elif isinstance(data, (str, Path)):
        from .image_folder import image_shape
        ds = load_dataset(str(data), data_dir=data_dir, split=split, download=download,
                          image_shape=image_shape(specs), take=take,
                          inputs=[n for n, _ in specs or ()], labels=labels, classes=classes,
                          show_progress=show_progress, float32=all_rows or take is None)
        if take is not None and not all_rows:
            ds = as_float32(ds.take(*take))     # (the samples taken, in float32)
    elif isinstance(data, dict):
        ds = _dict_dataset(data, specs, split, labels)
    elif isinstance(data, (np.ndarray, list)) or hasattr(data, "__array__"):
        ds = Dataset("array", array_like(data, "data"), None, preprocessed=True)
    else:
        raise DataError(f"cannot use {type(data).__name__} as data; pass an array (numpy, or "
                        "anything numpy converts: a list, a CPU torch tensor), a dataset name or "
                        "a .npy/.npz path")
    if ds.preprocessed and given:
        raise UsageError(f"{ds.name}: --mean/--std apply to named datasets (fashion-mnist, mnist, "
                         "cifar10, cifar100: images in [0, 1]); arrays (.npy/.npz files, numpy "
                         "arrays) are taken as already preprocessed, so normalize them yourself "
                         "and drop --mean/--std")
    if given:
        check_mean_std(mean, std, preprocess)
    if isinstance(ds.x, dict):
        for k, v in ds.x.items():
            check_inputs(v, f"{ds.name} (input {k!r})")
        return ds
    check_inputs(ds.x, ds.name)
    from .graph.inputs import is_pixels_255
    dtype = np.dtype(ds.source_dtype or ds.x.dtype)
    if ds.preprocessed and is_pixels_255(preprocess):
        check_raw_pixels(ds.x, ds.name)
    elif ds.preprocessed and dtype.kind in "iu":
        log.warning("%s: integer data (%s) is taken as already preprocessed; if these are raw "
                    "pixels, scale them to [0, 1] and normalize them first", ds.name, dtype)
    elif ds.preprocessed and _looks_unnormalized(ds.x, preprocess):
        log.warning("%s: taken as already preprocessed, but it has no negative value (largest "
                    "%.4g) while the model records a normalization (mean %s, std %s) that makes "
                    "black pixels negative: if these are raw pixels, normalize them first: "
                    "(x - mean) / std", ds.name, float(np.max(ds.x)), preprocess["mean"],
                    preprocess["std"])
    applied = None
    if given:
        applied = {"mean": _as_list(0.0 if mean is None else mean),
                   "std": _as_list(1.0 if std is None else std)}
        x = apply_preprocess(ds.x, applied["mean"], applied["std"], ds.name, "--mean/--std have")
    elif not ds.preprocessed:
        if preprocess:
            pp = check_preprocess(preprocess, "the model", partial=True)   # a DNN's record
            applied = {"mean": pp["mean"], "std": pp["std"]}
            x = apply_preprocess(ds.x, applied["mean"], applied["std"], ds.name,
                                 "the preprocessing the model records (onnx_snn.preprocess) has",
                                 " (pass --mean/--std for this data)")
        elif raw_pixels:     # the model's own first scaling: x / 255 or so
            log.warning("%s: %s, so it takes raw 0-255 pixels: the images are fed as such "
                        "(--mean/--std for another preprocessing)", ds.name, raw_pixels)
            applied = dict(PIXELS_255)
            x = apply_preprocess(ds.x, applied["mean"], applied["std"], ds.name,
                                 "the 0-255 pixels the model's own scaling implies have")
        else:
            _warn_raw_pixels(ds.name, scaling)
            applied = {"mean": [0.0], "std": [1.0]}
            x = ds.x
    else:
        x = ds.x
    if not ds.preprocessed and specs is not None:
        x = to_input_layout(x, specs, ds.name)
    return Dataset(ds.name, x, ds.y, preprocessed=True,
                   preprocess=applied if applied is not None else ds.preprocess,
                   class_names=ds.class_names)


def _warn_raw_pixels(where: str, scaling: Optional[str]) -> None:
    """Images fed as raw [0, 1] pixels to a model that records no preprocessing."""
    if scaling:
        log.warning("%s: the model records no preprocessing and no --mean/--std was given, "
                    "so the images are fed as %s; the model scales its input itself (%s), "
                    "which fits [0, 1] images if it was trained on them (if on 0-255 pixels: "
                    "--mean 0 --std 0.00392156862745098)", where, RAW_PIXELS, scaling)
    else:
        log.warning("%s: the model records no preprocessing (no onnx_snn.preprocess "
                    "metadata) and no --mean/--std was given, so the images are fed as %s. "
                    "If the model was trained on normalized inputs, the results are wrong: "
                    "pass --mean/--std (e.g. --mean 0.2860 --std 0.3530 for Fashion-MNIST)",
                    where, RAW_PIXELS)


@checks_flags
def build(nm: NormalizedModel, calib: Calibration, timesteps: int = DEFAULT_TIMESTEPS,
          method: str = DEFAULT_METHOD,
          config: Optional[SearchConfig] = None, history_extra: Optional[dict] = None,
          calib_data=None, show_progress: bool = False,
          threads: Optional[int] = None, seed: int = 0) -> SpikingModel:
    """Choose (alpha, beta) for every site and rewrite into the spiking format.

    ``refined`` (the default; also ``datta`` with ``config.sequential``) then refines the
    parameters site by site on the spiking network itself (:mod:`onnx_snn.sequential`), on
    the calibration inputs (``calib_data``; by default those :func:`calibrate` recorded)."""
    if not isinstance(nm, NormalizedModel) or not isinstance(calib, Calibration):
        raise UsageError(f"build(nm, calib) takes prepare()'s result and calibrate()'s, not "
                         f"{type(nm).__name__} and {type(calib).__name__}")
    if config is not None and not isinstance(config, SearchConfig):
        raise UsageError(f"config must be a SearchConfig, not {type(config).__name__} "
                         "(SearchConfig(**options))")
    cfg = config or SearchConfig()
    if method == REFINED and not cfg.sequential:
        cfg = dataclasses.replace(cfg, sequential=True)
    if cfg.sequential and method not in ("datta", REFINED):
        raise UsageError(f"the sequential refinement is part of the datta method, not {method!r}")
    if method in METHODS:
        check_method_options(cfg, method)
    if cfg.sequential:
        method = REFINED     # datta refined is the refined method: the file says so
        calib_data = calib.inputs if calib_data is None else calib_data
        if calib_data is None:
            raise UsageError("the sequential refinement runs the spiking network on the "
                             "calibration inputs: pass them as calib_data")
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if cfg.objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    timesteps = check_timesteps(timesteps)
    seed = check_seed(seed)
    check_search_limits(cfg, timesteps, method)
    check_refine_memory(calib, timesteps, cfg, nm)
    t0 = time.perf_counter()
    if calib.model_key is not None and calib.model_key != model_key(nm.model):
        raise UsageError("this calibration was recorded on another model (its graph or weights "
                         "differ from this one's): calibrate(nm, data) with the model you build")
    missing = [s.name for s in nm.sites if s.name not in calib.sites]
    if missing:
        raise ValueError(f"the calibration has no record of site(s) {', '.join(missing)}; "
                         "calibrate all sites of this model")
    pool_nodes = rewrite.spiking_pools(nm, {s.name: s for s in nm.sites})
    rewrite.check_reserved_names(nm, len(pool_nodes))
    pools = rewrite.pool_records(pool_nodes, tensor_shapes(
        nm, [t for n in pool_nodes for t in (n.input[0], n.output[0])], calib.input_shapes), nm)
    records: Dict[str, fmt.SiteRecord] = {}
    site_rows = []
    notes = list(nm.notes) + _pinned_input_notes(nm, calib.input_shapes)
    silent = [s for s in nm.sites if not calib.sites[s.name].max > 0]
    if len(silent) > SILENT_NOTES:     # one warning for them all, not one per layer
        notes.append(
            WARNING_NOTE + f"{len(silent)} sites never activate on the calibration data "
            f"({listed(s.name for s in silent)}), so their neurons stay silent on it; "
            "calibrate on data that reaches them")
    for site in nm.sites:
        st = calib.sites[site.name]
        mu, mu_source = site.mu, site.mu_source
        label = f"site {site.name} ({site.idiom}, {', '.join(site.source_nodes) or '?'})"
        if not st.max > 0 and len(silent) <= SILENT_NOTES:
            # a layer that never activates on the calibration data: a trained clip bound is
            # kept (nothing here says it is unused); its neurons stay silent on such data
            notes.append(
                WARNING_NOTE + f"{label}: "
                f"never activates on the calibration data (largest pre-activation {st.max:.4g}), "
                "so its neurons stay silent on it" + (f"; its clip bound {mu:.4g} is kept"
                                                       if mu is not None else "")
                + "; calibrate on data that reaches it")
        if mu is not None and st.max > 0 and not mu <= UNUSED_CLIP_FACTOR * st.max:
            # a clip no calibration value comes near (Clip(0, FLT_MAX) as an exporter's ReLU):
            # as a threshold scale it would leave every neuron silent
            est = estimate_mu(st.sample, cfg.relu_percentile)
            notes.append(
                WARNING_NOTE + f"{label}: "
                f"its clip bound {mu:.4g} is more than {UNUSED_CLIP_FACTOR:g}x the largest "
                f"calibration value ({st.max:.4g}); treated as a plain ReLU, mu estimated from the "
                f"calibration data: {est:.4g} (--relu-percentile)")
            mu, mu_source = est, "estimated"
        elif mu is None:
            mu = estimate_mu(st.sample, cfg.relu_percentile)
        ts = time.perf_counter()
        p = choose_params(st.sample, mu, int(timesteps), method, cfg)
        search_s = time.perf_counter() - ts
        rec = fmt.SiteRecord(
            name=site.name, input=site.input, output=site.output, shape=list(st.shape),
            mu=float(mu), mu_source=mu_source, alpha=p.alpha, beta=p.beta,
            objective=cfg.objective, objective_value=p.objective_value, idiom=site.idiom,
            source_nodes=site.source_nodes, sample_size=int(st.sample.size),
            values_seen=int(st.count))
        rec.v_init = p.v_init_fraction * rec.threshold
        if cfg.signed_spikes:
            rec.neuron = fmt.NEURON_SIGNED
        records[site.name] = rec
        site_rows.append({**rec.to_dict(), "neurons": rec.neurons,
                          "positive_fraction": st.positive_fraction, "max": st.max,
                          "search_seconds": search_s})
    refinement = None
    if cfg.sequential:
        from .sequential import refine
        records, refinement, nm = refine(nm, records, calib_data, int(timesteps), cfg,
                                     calib.input_shapes, calib.batch_size, seed=seed,
                                     show_progress=show_progress, threads=threads, pools=pools)
        for row in site_rows:
            rec = records[row["name"]]
            row.update(alpha=rec.alpha, beta=rec.beta, threshold=rec.threshold,
                       amplitude=rec.amplitude, v_init=rec.v_init,
                       objective_value=rec.objective_value)
        notes += [f"site {r['site']}: one threshold, amplitude and offset for the whole site, "
                  f"not one per channel: {r['one_group']}"
                  for r in refinement["sites"] if r.get("one_group")]
    # the weight calibration keeps a refit only when it predicts held-out images better: a
    # calibration set of one image has none, and refits no layer
    one_image = bool(refinement) and cfg.weight_calibration and refinement["images"] < 2
    if one_image:
        notes.append(WARNING_NOTE + "the weight calibration checks each layer's refit on every "
                     "second calibration image, and the calibration set has one: no layer "
                     "was refitted; give more calibration samples (--calib-samples)")
    history = [{
        "step": "convert", "tool": f"onnx-snn {__version__}",
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": method, "timesteps": int(timesteps), "objective": cfg.objective,
        "calibration_samples": calib.n_samples, "sample_size": calib.sample_size,
        **({"sequential": True, "v_init_fractions": list(cfg.v_init_fractions),
            "sequential_sample": cfg.sequential_sample, "per_channel": cfg.per_channel,
            "bias_correction": cfg.bias_correction,
            "weight_calibration": cfg.weight_calibration and not one_image,
            **({"weight_calibration_skipped": "one calibration image: none held out to check "
                "a refit on"} if one_image else {}),
            **({"weight_holdout": cfg.weight_holdout, "weight_ridge": cfg.weight_ridge,
                "weight_ridge_toward": "own weights" if cfg.weight_ridge_to_original else "zero",
                **({"weight_target": "min(h, mu) where a layer feeds a site alone"}
                   if cfg.caps_fit_targets(timesteps) else {}),
                **({"weight_ridge_grid": list(cfg.weight_ridge_grid)} if cfg.weight_ridge_grid
                   else {})} if cfg.weight_calibration else {}),
            **({"search_stride": cfg.stride_at(timesteps)} if cfg.stride_at(timesteps) != 1
               else {})}
           if cfg.sequential else {}),
        **({"pool_first": True} if nm.pools_moved else {}),
        **({"signed_spikes": True} if cfg.signed_spikes else {}),
        # where the DNN was: fine-tuning distills from it when the file is still there, unchanged
        **({"source_path": os.path.abspath(nm.source_path)} if nm.source_path else {}),
        # a file or folder as its absolute path: commands run elsewhere find it
        **({"calibration_data": recorded_data_name(calib.data_name)} if calib.data_name else {}),
        **(history_extra or {}),
    }]
    meta = rewrite.base_metadata(nm, records, int(timesteps), method, history)
    model = rewrite.loop_model(nm, records, int(timesteps), meta, calib.input_shapes, pools)
    _self_check(model)
    report = {
        "tool": f"onnx-snn {__version__}", "source": nm.source_path,
        "source_sha256": nm.source_sha256, "method": method, "timesteps": int(timesteps),
        "objective": cfg.objective, "config": cfg.__dict__,
        "calibration": {"samples": calib.n_samples, "batch_size": calib.batch_size,
                        "sample_size": calib.sample_size, "seconds": calib.seconds},
        "search_and_rewrite_seconds": time.perf_counter() - t0,
        "notes": notes, "sites": site_rows,
    }
    if refinement is not None:
        report["sequential"] = refinement
    for note in notes:    # a warning is logged (a note in the report alone went unseen in
        # the API, and `convert -q` hid it), once per model: several builds of one nm (one
        # calibration, several T) say the model's own warnings once
        if note.startswith(WARNING_NOTE) and note not in nm.logged:
            log.warning(note[len(WARNING_NOTE):])
            if note in nm.notes:
                nm.logged.add(note)
    return SpikingModel(model=model, normalized=nm, records=records, timesteps=int(timesteps),
                        method=method, report=report, input_shapes=dict(calib.input_shapes),
                        pools=pools, data_files=_data_files(calib.data_name))


#: at most this many sites that never activate get a warning each; more get one together
SILENT_NOTES = 3


def _pinned_input_notes(nm: NormalizedModel, input_shapes) -> List[str]:
    """A note per input whose non-batch dimensions were free in the DNN: the spiking model's
    membranes have the calibration data's shape, so it takes inputs of that shape only."""
    out = []
    params = {vi.name: [d.dim_param or "?" for d in vi.type.tensor_type.shape.dim]
              for vi in nm.model.graph.input}
    for name, dims in input_specs(nm.model):
        shape = input_shapes.get(name)
        if shape is not None and any(d is None for d in dims[1:]):
            free = ['N'] + [params[name][i + 1] if d is None else d for i, d in enumerate(dims[1:])]
            out.append(interface(
                f"input '{name}' has free dimensions {free}: the spiking model takes "
                f"{['N'] + list(shape)} only, the calibration data's shape (its neurons' states "
                "have that shape); convert again with data of another size for another input "
                "size"))
    return out


def _self_check(model: onnx.ModelProto) -> None:
    """Never hand out a model that fails the ONNX checker (that would be a bug here).

    The full check (checker and strict shape inference) runs on the model's skeleton, its
    weights (the Loop body's included, as outer-scope values) left out (see
    :mod:`onnx_snn.graph.skeleton`): the same verdict as on the whole model, without
    serializing it. The weights left out are copies of the normalized model's, which passed
    the checker, or made from arrays, so their data needs no second look. Models of 2 GB or
    more are not checked (as before: onnx cannot serialize them)."""
    from .graph import skeleton
    sk = skeleton.split(model, subgraphs=True)
    if sk.byte_size() >= skeleton.MAX_PROTOBUF:
        return
    try:
        onnx.checker.check_model(sk.model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InternalError(f"onnx-snn produced an invalid spiking model ({str(e).strip()[:300]}); "
                            "please report this with the source model") from None


@checks_flags
def convert(model: Union[PathLike, onnx.ModelProto], calib, timesteps: int = DEFAULT_TIMESTEPS,
            method: str = DEFAULT_METHOD, config: Optional[SearchConfig] = None, *,
            batch_size: Optional[int] = None, sample_size: int = DEFAULT_SAMPLE_SIZE,
            calib_samples: Optional[int] = DEFAULT_CALIB_SAMPLES, mean=None, std=None,
            data_dir=None, seed: int = 0, show_progress: bool = True, download: bool = False,
            pool_first: bool = False, outputs: Optional[Sequence[str]] = None,
            reconstruct=AUTO, reconstruct_budget: float = 1.0, **options) -> SpikingModel:
    """Convert a DNN into a spiking model in one call.

    ``calib`` is an array (already preprocessed), a :class:`~onnx_snn.datasets.Dataset`, a
    dataset name such as ``"fashion-mnist"`` (its training split is used) or a .npy/.npz path.
    ``calib_samples`` random samples are drawn from it (``None``: all of them).
    ``config`` (a :class:`SearchConfig`) sets the search; keyword ``options`` override its
    fields (``objective="mean"``, ``sequential=True``, ``beta_step=0.01``, ...).

    ``mean``/``std`` normalize a named dataset or an image folder (images in [0, 1]) and are recorded in
    the spiking model's ``onnx_snn.preprocess`` metadata, so that ``evaluate`` and
    ``finetune`` feed it the same way; without them the DNN's recorded preprocessing is used
    (and carried over), else raw [0, 1] pixels with a warning (and recorded as such). Arrays
    are taken as already preprocessed: ``mean``/``std`` with them is a UsageError.
    Bad values (``timesteps=2.7``, a search grid past the limits above) raise UsageError
    before any work. ``pool_first``, ``outputs`` (the DNN's outputs to keep, e.g. the
    logits of an export that also exposes intermediate tensors): see :func:`prepare`.
    ``reconstruct``: after the conversion, train the spiking network on the calibration
    samples to follow the DNN, without labels, for this many epochs (or as a
    ``runtimes.torch.reconstruct.ReconstructConfig`` says; needs PyTorch; see
    :mod:`onnx_snn.runtimes.torch.reconstruct`); None or 0: not; ``"auto"`` (the default):
    with the ``refined`` method and PyTorch installed, within a budget of compute, on the
    calibration samples and more of ``calib`` where it holds more (any source but an image
    folder, of which only the calibration images are read; up to 4096 samples in all, or all
    the calibration samples where they are more, 3
    epochs or more each, at lr 1e-3), or on some of the calibration samples where they are
    more than the budget pays for; else not (:mod:`onnx_snn.auto_reconstruct`; the report's
    ``reconstruction`` says why not). Where ``calib`` holds 256 or more samples beyond those it
    calibrates and trains on, up to 1024 of them are held out: the default keeps its
    reconstruction only if it follows the DNN there at least as well as the conversion it
    started from (the report's ``reconstruction`` has ``held_out``; an explicit number of
    epochs is kept either way, with a warning); where it holds fewer, a quarter of the
    calibration samples (at most 256, from 256 calibration samples up) are held out of the
    calibration and the training to check it the same way (``held_from_calibration``;
    :func:`onnx_snn.auto_reconstruct.split_rows`). ``reconstruct_budget`` scales that budget (2: twice
    the epochs, or a network twice as costly reconstructed; at most
    ``auto_reconstruct.MAX_BUDGET_SCALE``); only with ``"auto"``.
    """
    timesteps = check_timesteps(timesteps)
    budget_scale = auto_reconstruct.check_budget_scale(reconstruct_budget)
    recon = reconstruct_config(reconstruct)     # (torch imported, the values checked: first)
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if budget_scale != 1 and method != REFINED:
        raise UsageError(f"the reconstruction's budget (--reconstruct-budget) scales the "
                         f"default reconstruction of the {REFINED} method; {method!r} is a "
                         "reference, never reconstructed by default (--reconstruct EPOCHS "
                         "trains it)")
    if budget_scale != 1 and recon != AUTO:
        raise UsageError("the reconstruction's budget (--reconstruct-budget) scales the default "
                         "reconstruction, which "
                         + ("$ONNX_SNN_RECONSTRUCT=0 turns off here" if reconstruct == AUTO else
                            "--reconstruct 0 turns off" if recon is None else
                            "--reconstruct EPOCHS replaces (it trains that many epochs of the "
                            "calibration samples)")
                         + ": give one or the other")
    try:
        cfg = search_config(config, **options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if method == REFINED and not cfg.sequential:
        cfg = dataclasses.replace(cfg, sequential=True)
    if cfg.sequential and method not in ("datta", REFINED):
        raise UsageError(f"the sequential refinement is part of the datta method, not {method!r}")
    check_method_options(cfg, method)
    check_search_limits(cfg, timesteps, method)
    if method == REFINED and timesteps > SLOW_REFINE_TIMESTEPS:
        log.warning("refined at T=%d: the refinement simulates every step of every layer, and "
                    "its search grows with T (a small MobileNet: 3 s at T=2, 2 min at T=16); "
                    "at this many steps the rate code alone comes close to the DNN: "
                    "--method max or datta converts in seconds", timesteps)
    asked = batch_size is not None        # (None: the default, DEFAULT_BATCH_SIZE)
    batch_size = check_count(DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                             "batch_size", MAX_BATCH_SIZE, why=" (MAX_BATCH_SIZE)")
    sample_size = check_count(sample_size, "sample_size", MAX_SAMPLE_SIZE,
                              why=" (MAX_SAMPLE_SIZE: values kept per layer, memory)")
    calib_samples = check_count(calib_samples, "calib_samples", allow_none=True)
    seed = check_seed(seed)
    try:
        nm = prepare(model, pool_first=pool_first, outputs=outputs)
    except UnsupportedModelError as refused:
        # a model refused with free spatial dimensions (a resize to another tensor's
        # dynamic size, say) may convert at the calibration data's shape, which its spiking
        # model takes anyway: pin them and try again
        shapes = _calibration_shapes(model, calib, mean, std, data_dir, (calib_samples, seed))
        if not shapes:
            raise
        try:
            nm = prepare(model, pool_first=pool_first, input_shapes=shapes, outputs=outputs)
        except UnsupportedModelError as pinned:
            if str(pinned) == str(refused):
                raise refused from None
            raise UnsupportedModelError(f"{pinned} (with its free input dimensions pinned to "
                                        f"the calibration data's; free: {refused})") from None
    ds = resolve_data(calib, nm.preprocess, mean, std, data_dir=data_dir, split="train",
                      download=download, specs=input_specs(nm.model), take=(calib_samples, seed),
                      labels=False, show_progress=show_progress, all_rows=True,
                      **own_scaling(nm.model))
    if ds.preprocess is not None:   # a named dataset: record how it was fed
        warn_preprocess_override(nm.source_path or "the DNN", mean, std, nm.preprocess,
                                 "the spiking model records the ones given")
        nm.preprocess = ds.preprocess
    nm.source_metadata.update(remember_dataset(nm.source_metadata, calib))
    for name, arr in (ds.x.items() if isinstance(ds.x, dict) else [(None, ds.x)]):
        # before the random subset is drawn: the sample numbers are the file's
        check_finite(np.asarray(arr), f"{ds.name} (calibration data"
                     + (f", input '{name}')" if name else ")"))
    full, ds = ds, ds.take(calib_samples, seed=seed)
    # (the data checked as given, before any plan: an empty file, a wrong shape)
    probe = {k: v[:2] for k, v in ds.x.items()} if isinstance(ds.x, dict) else ds.x[:2]
    validate_feeds(input_specs(nm.model), probe, f"{ds.name} (calibration data)", samples=len(ds))
    if calib_samples and len(full) < calib_samples:   # (said aloud where a count was asked)
        log.log(logging.INFO if calib_samples == DEFAULT_CALIB_SAMPLES else logging.WARNING,
                "%s holds %d samples: calibrating on all of them (--calib-samples asked %d)",
                ds.name, len(full), calib_samples)
    auto, train_x, held_x, measure_rows, split = None, None, None, len(ds), 0
    if recon == AUTO:      # (the budget counts the network and the data; it may train on
        # more of the data than it calibrates on, or fewer: drawn now, the rest is not kept)
        auto = auto_reconstruct.plan_for_data(method, timesteps, nm.model, ds.x,
                                              available=len(full), scale=budget_scale)
    all_calibration = ds          # (where some of it judges the reconstruction instead)
    fixed = fixed_batch(input_specs(nm.model))
    if recon is not None and (auto is None or auto.epochs):   # (and others, to check it)
        cal_rows = full.rows(calib_samples, seed)
        if auto is None:            # (asked for: held out only where the data has more)
            rows, held = auto_reconstruct.reconstruction_rows(
                len(full), cal_rows, None, seed, auto_reconstruct.sample_bytes(full.x))
        else:
            n_cal = len(cal_rows)
            cal_rows, rows, held = auto_reconstruct.checked_rows(
                len(full), cal_rows, auto.images, seed, auto_reconstruct.sample_bytes(full.x),
                fixed)
            split = n_cal - len(cal_rows)
            if split:
                log.info("reconstruction: the data holds too few samples to hold out beyond "
                         "the %d calibration samples; %d of them are held out of the "
                         "calibration and the training to check it (calibrated on %d)",
                         n_cal, split, len(cal_rows))
                ds = Dataset(ds.name, auto_reconstruct.rows_of(full.x, cal_rows),
                             None if full.y is None else full.y[cal_rows], ds.preprocessed,
                             ds.preprocess, ds.source_dtype)
            trained = len(cal_rows) if rows is None else len(rows)
            if split or trained != auto.images:   # (the plan's epochs and words, as trained)
                auto = auto_reconstruct.plan_for_data(
                    method, timesteps, nm.model, ds.x, scale=budget_scale,
                    available=None if rows is None else trained)
        train_x = None if rows is None else auto_reconstruct.rows_of(full.x, rows)
        # (the before and after on the calibration images it trains on: those come first)
        measure_rows = len(ds) if rows is None else int(np.isin(rows, cal_rows).sum()) or None
        held_x = None if held is None else auto_reconstruct.rows_of(full.x, held)
    del full
    if asked and fixed and fixed != batch_size:
        log.warning("the model has a fixed batch of %d: calibrating in batches of %d, not the "
                    "%d asked (--batch-size); re-export it with a dynamic batch axis to choose",
                    fixed, fixed, batch_size)
    snn = _calibrated_and_built(nm, ds, timesteps, method, cfg, batch_size, sample_size, seed,
                                show_progress, calib, data_dir)
    extra = {}
    if auto is not None:
        if auto.why:
            log.info("reconstruction: %s", auto.why)
        if auto.why and not auto.epochs:
            snn.report["reconstruction"] = {"automatic": True, "skipped": auto.why}
        recon = auto_config(auto)
        extra = {"automatic": True, **({"budget": auto.why} if auto.why else {}),
                 **({"held_from_calibration": split} if split else {}),
                 **({"budget_scale": budget_scale} if budget_scale != 1 else {})}
    if recon is not None and (auto is None or auto.epochs):
        from .runtimes.torch.reconstruct import reconstruct as run_reconstruction
        record = run_reconstruction(snn, nm.model, train_x if train_x is not None else ds.x,
                                    recon, show_progress=show_progress, extra=extra,
                                    measure_rows=measure_rows, held_out=held_x,
                                    guard=auto is not None)
        if split and not record.get("kept"):  # (what --reconstruct 0 gives: all of them)
            log.info("reconstruction not kept: converting again from all %d calibration "
                     "samples", len(all_calibration))
            why = str(record.get("why", "")).replace(": the conversion's values are kept", "")
            record = {**record, "recalibrated_on": len(all_calibration),
                      "why": f"{why}: converted again from all {len(all_calibration)} "
                             "calibration samples, as without it"}
            snn = _calibrated_and_built(nm, all_calibration, timesteps, method, cfg,
                                        batch_size, sample_size, seed, show_progress, calib,
                                        data_dir)
            from .runtimes.torch.reconstruct import _append_history
            _append_history(snn, record)
    return snn


def _check_refine_memory_first(nm, ds, timesteps: int, cfg: SearchConfig,
                               batch_size: Optional[int]) -> None:
    """check_refine_memory before the calibration pass, where the sites' shapes are known
    without running the model (its static shapes at the data's): a refinement over its
    limit is refused before the work (``--calib-samples 0`` of 60 000 images calibrated for
    45 s, then was refused); the check after the pass stays for the rest. The samples and
    the batch are the ones the pass takes (``record_sites``: a fixed batch's whole batches,
    the batch bounded by its sites' bytes), so the estimate is the later one's."""
    from types import SimpleNamespace

    from .calibrate import (CALIB_BATCH_BYTES, DEFAULT_BATCH_SIZE, _site_bytes, batch_within,
                            calibration_feeds, static_shapes)
    if not cfg.sequential or not nm.sites:
        return
    feeds, n, batch = calibration_feeds(nm, ds.x, batch_size or DEFAULT_BATCH_SIZE)
    ins = {k: tuple(int(d) for d in v.shape[1:]) for k, v in feeds.items()}
    shapes = static_shapes(nm, [s.input for s in nm.sites], ins)
    if any(s.input not in shapes for s in nm.sites):
        return
    fixed = bool(fixed_batch(input_specs(nm.model)))
    batch = batch_within(batch, _site_bytes(nm, nm.sites, feeds), CALIB_BATCH_BYTES, fixed)
    cal = SimpleNamespace(
        sites={s.name: SimpleNamespace(shape=shapes[s.input]) for s in nm.sites},
        n_samples=n, batch_size=batch, fixed_batch=fixed, input_shapes=ins)
    check_refine_memory(cal, timesteps, cfg, nm)


def _calibrated_and_built(nm, ds, timesteps, method, cfg, batch_size, sample_size, seed,
                          show_progress, calib, data_dir) -> SpikingModel:
    """The conversion of ``nm`` calibrated on the Dataset ``ds`` (``calib``: what the caller
    gave, for the messages and the files the model records)."""
    _check_refine_memory_first(nm, ds, timesteps, cfg, batch_size)
    cal = record_sites(nm, ds.x, batch_size=batch_size, sample_size=sample_size, seed=seed,
                       show_progress=show_progress,      # (a file's name, for its messages)
                       data_name=os.fspath(calib) if isinstance(calib, (str, os.PathLike)) else None)
    check_refine_memory(cal, timesteps, cfg, nm)
    snn = build(nm, cal, timesteps, method, cfg,
                history_extra={"calibration_data": recorded_data_name(ds.name)},
                show_progress=show_progress, seed=seed)
    snn.data_files = _data_files(calib, data_dir)   # (build's: none, the data was arrays there)
    return snn


def auto_config(plan: "auto_reconstruct.Plan"):
    """The default reconstruction's ``ReconstructConfig`` (None: none) for ``plan``."""
    if not plan.epochs:
        return None
    return dataclasses.replace(reconstruct_config(plan.epochs), lr=auto_reconstruct.LR)


def reconstruct_config(value):
    """``convert``'s ``reconstruct`` as a checked ``ReconstructConfig`` (None: none): a
    number of epochs, or the config itself; MissingDependencyError without PyTorch.
    ``"auto"`` stays ``"auto"`` (decided once the data is read: ``auto_reconstruct.plan``)
    unless ``$ONNX_SNN_RECONSTRUCT`` turns it off."""
    if isinstance(value, str) and value == AUTO:
        value = auto_reconstruct.env_default()
        if value == AUTO:
            return AUTO
    if value is None or (is_int(value) and not isinstance(value, bool) and value == 0):
        return None
    try:
        from .runtimes.torch.reconstruct import ReconstructConfig
    except ImportError:
        raise MissingDependencyError("the reconstruction (--reconstruct) trains the spiking "
                                     "network with PyTorch, which is not installed: pip "
                                     "install 'onnx-snn[torch]', or convert without it") from None
    if isinstance(value, ReconstructConfig):
        return value.check()
    if isinstance(value, bool) or not is_int(value):
        raise UsageError(f"reconstruct takes a number of epochs, a ReconstructConfig or "
                         f"'{AUTO}', not {value!r}")
    return ReconstructConfig(epochs=int(value)).check()


def _data_files(spec, data_dir=None) -> List[str]:
    """The files calibration data named ``spec`` (a path, a folder, a dataset name) came
    from, for :meth:`SpikingModel.save` to protect; none for arrays (best effort)."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        return []
    try:
        from .datasets import dataset_files
        return [str(f) for f in dataset_files(spec, data_dir)]
    except Exception:        # noqa: BLE001 -- a name that is no file: nothing to protect
        return []


class _ThreadFilter(logging.Filter):
    """Drops the records of below-error level logged by one thread."""

    def __init__(self, thread: int):
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.ERROR


def _calibration_shapes(model, calib, mean, std, data_dir, take) -> Dict[str, tuple]:
    """{input: per-sample shape} of the calibration data, for the inputs with free non-batch
    dimensions that the data can pin (its rank, and the sizes the input fixes, agree); {} when
    there are none, or the data cannot be read here without downloading (the caller then
    reports why the model was refused, not the data)."""
    try:
        raw = model if isinstance(model, onnx.ModelProto) else \
            onnx.load(str(model), load_external_data=False)
    except Exception:
        return {}
    free = free_input_dims(raw)
    if not free:
        return {}
    specs = input_specs(raw)
    # resolve_data warns again when the data is read for real: this thread's warnings are
    # dropped meanwhile (a filter on this thread's records, not the logger's level, which
    # other threads' conversions share)
    mute = _ThreadFilter(threading.get_ident())
    log.addFilter(mute)
    try:
        ds = resolve_data(calib, None, mean, std, data_dir=data_dir, split="train",
                          download=False, specs=specs, take=take, labels=False,
                          show_progress=False)
    except (DataError, UsageError, OSError, ValueError):
        return {}
    finally:
        log.removeFilter(mute)
    data = ds.x if isinstance(ds.x, dict) else ({specs[0][0]: ds.x} if len(specs) == 1 else {})
    shapes = {}
    for name, dims in specs:
        arr = data.get(name)
        if name not in free or arr is None:
            continue
        shape = tuple(int(a) for a in np.asarray(arr).shape[1:])
        if len(shape) + 1 == len(dims) and all(d is None or d == s for d, s in zip(dims[1:], shape)):
            shapes[name] = shape
    return shapes


def search_config(config: Optional[SearchConfig] = None, **options) -> SearchConfig:
    """``config`` (default: ``SearchConfig()``; a dict of its fields too) with the fields in
    ``options`` replaced; UsageError for anything else, or an unknown field."""
    if isinstance(config, Mapping):
        config, options = None, {**config, **options}
    elif config is not None and not isinstance(config, SearchConfig):
        raise UsageError(f"config must be a SearchConfig (or a dict of its fields), not "
                         f"{type(config).__name__} {config!r}")
    cfg = config or SearchConfig()
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown conversion option(s) {', '.join(unknown)}; the options are "
                         f"the fields of SearchConfig: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **options) if options else cfg


__all__ = ["SpikingModel", "prepare", "pin_inputs", "free_input_dims", "calibrate", "build", "convert", "resolve_data",
           "SearchConfig", "search_config", "MAX_TIMESTEPS", "check_timesteps"]
