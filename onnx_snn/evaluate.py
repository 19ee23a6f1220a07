"""Top-1 accuracy and spike statistics of a DNN or a spiking model, run in onnxruntime."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import onnx

from . import json_text
from .datasets import (Dataset, array_like, check_inputs, check_labels, check_preprocess,
                       dnn_preprocess, folder_classes, image_folder_spec, parse_preprocess)
from .errors import DataError, ModelLoadError, UsageError
from .flags import checks_flags
from .graph.inputs import PIXELS_255, is_pixels_255, own_scaling
from .image_folder import FolderPlan, image_shape, load_image_folder, plan_image_folder
from .progress import Progress
from .scores import (IDS, SCORES, check_labels_for, check_labels_for_table, class_table,
                     first_output_kind, ids_to_indices, predicted)
from .spiking import format as fmt

if TYPE_CHECKING:   # the annotation only (convert imports evaluate's siblings)
    from .convert import SpikingModel

log = logging.getLogger("onnx_snn")


@dataclass
class SiteActivity:
    """Spiking activity of one site over a dataset."""

    name: str
    neurons: int                 # neurons per sample
    spikes_per_sample: float     # spikes per input sample over all T steps
    spikes_per_neuron: float     # average spikes per neuron over the T steps (0..T)
    rate: float                  # spikes per neuron per time step (0..1)


@dataclass
class EvalResult:
    model: str
    kind: str                    # "dnn" or "snn"
    samples: int
    correct: Optional[int]
    top1: Optional[float]        # percent
    seconds: float
    timesteps: Optional[int] = None
    method: Optional[str] = None
    sites: Dict[str, SiteActivity] = field(default_factory=dict)
    #: the output top-1 reads (the first), and how many the model has
    scored_output: Optional[str] = None
    outputs: int = 1
    #: :func:`~onnx_snn.spiking.format.spiking_fingerprint` of the spiking model evaluated
    model_fingerprint: Optional[str] = None
    #: the output spikes of every spiking max pool the model counts (``neurons``: pooled
    #: outputs per sample): the rate of the layer after the pool, which ``analyze`` charges
    pools: Dict[str, SiteActivity] = field(default_factory=dict)
    #: the samples run at once (the default batch lowered for a large spiking model: see
    #: :func:`eval_batch`)
    batch_size: Optional[int] = None
    #: what the user should know about how it ran
    notes: List[str] = field(default_factory=list)
    #: the warnings it gave (logged as it ran; kept here for a saved result): a model run at
    #: another T than its parameters were fitted for, --mean/--std that override the model's
    warnings: List[str] = field(default_factory=list)
    #: the data it ran on (a dataset's name and split, or a file), the samples asked for
    #: (``limit``), and the normalization applied to a named dataset's or a folder's images
    #: ({"mean", "std"}: the recorded one, --mean/--std, or 0 and 1 for raw [0, 1] pixels;
    #: None: arrays taken as already preprocessed), so
    #: that what reads the result (``analyze --rates``) can tell what it measured
    data: Optional[str] = None
    limit: Optional[int] = None
    preprocess: Optional[dict] = None

    @property
    def mean_rate(self) -> Optional[float]:
        """Spikes per neuron per step, averaged over all neurons of all sites."""
        if not self.sites:
            return None
        total = sum(s.spikes_per_sample for s in self.sites.values())
        neurons = sum(s.neurons for s in self.sites.values())
        return total / (neurons * self.timesteps) if neurons and self.timesteps else 0.0

    @property
    def rates(self) -> Dict[str, float]:
        """Spikes per neuron over the T steps of every site and counted max pool: what
        :func:`onnx_snn.analyze.analyze` takes as ``rates``."""
        return {k: s.spikes_per_neuron for k, s in {**self.sites, **self.pools}.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean_rate"] = self.mean_rate
        return d

    def to_json(self) -> str:
        return json_text.dumps(self.to_dict())


#: samples per batch when none is asked for
DEFAULT_EVAL_BATCH = 256
#: what one default batch of a spiking model may hold in onnxruntime (see :func:`eval_batch`)
EVAL_BATCH_BYTES = 2 * 2 ** 30
#: bytes onnxruntime holds per neuron (the sites' and counted pools') and sample while it
#: runs a spiking model: the slope of peak memory over the batch size, measured on
#: torchvision resnet18 and densenet121 at 3x64x64 (T=2, batches 32-256): 45-46 for the
#: Loop graph (each step's currents, membranes, spikes and counters of every neuron live
#: at once inside the loop body), 33 for the step graph, 11 for the deploy graph
LOOP_BYTES_PER_NEURON = 48
DEPLOY_BYTES_PER_NEURON = 12
#: an image folder is read and evaluated in parts of at most this many bytes of float32
#: images (ImageNet's 50 000 validation images at 224 x 224 are 28 GiB)
EVAL_PART_BYTES = 2 ** 28


def sample_bytes(info: fmt.SpikingInfo) -> int:
    """Estimated bytes onnxruntime holds per sample while running a spiking model."""
    neurons = sum(s.neurons for s in info.sites) + sum(p.neurons for p in info.pools)
    per = DEPLOY_BYTES_PER_NEURON if info.graph == fmt.GRAPH_DEPLOY else LOOP_BYTES_PER_NEURON
    return int(neurons) * per


def eval_batch(requested: Optional[int], info: Optional[fmt.SpikingInfo],
               limit: Optional[int] = None) -> int:
    """The batch to evaluate with: ``requested`` when given, else DEFAULT_EVAL_BATCH, lowered
    (at least one sample) for a spiking model whose batch would hold more than ``limit``
    bytes (default EVAL_BATCH_BYTES; a 224x224 ResNet-50's Loop graph holds about 0.5 GB per
    image). A DNN keeps it: onnxruntime reuses its activations' memory."""
    if requested is not None:
        return int(requested)
    if info is None:
        return DEFAULT_EVAL_BATCH
    from .calibrate import batch_within
    return batch_within(DEFAULT_EVAL_BATCH, sample_bytes(info),
                        EVAL_BATCH_BYTES if limit is None else limit)


def available_memory() -> Optional[int]:
    """Bytes the system can still give (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@checks_flags
def evaluate(model: Union[str, onnx.ModelProto, SpikingModel], data, timesteps: Optional[int] = None,
             batch_size: Optional[int] = None, limit: Optional[int] = None, mean=None, std=None,
             data_dir=None, show_progress: bool = True, threads: Optional[int] = None,
             download: bool = False, where: Optional[str] = None,
             top1: Optional[bool] = True, output: Optional[str] = None) -> EvalResult:
    """Top-1 of ``model`` (a path, a ModelProto, or the SpikingModel ``convert`` returns) on
    ``data`` (a dataset name, array file, Dataset, or (x, y) tuple); ``where``: the model's
    name in messages and the result (default: its path, or the graph's name).

    For spiking models, also the spikes per neuron of every site (``timesteps`` overrides the
    model's T; a whole number in 1..MAX_TIMESTEPS). Named datasets get the model's recorded
    preprocessing (or ``mean``/``std``; with none, raw [0, 1] pixels and a warning); arrays
    are taken as already preprocessed. Labels must be class indices below the model's
    number of outputs. ``batch_size``: samples run at once (default: :func:`eval_batch`).
    ``top1``: score the labels (True), not (False), or only when the model's first output
    gives classes (None: ``analyze``, which wants the spike rates of any model). ``output``:
    the name of the output to score (default: the first).
    """
    from .convert import check_timesteps
    if timesteps is not None:
        timesteps = check_timesteps(timesteps)
    results = _evaluate(model, data, [timesteps] if timesteps else None, batch_size, limit,
                        mean, std, data_dir, show_progress, threads, download, where, top1,
                        output)
    return next(iter(results.values()))


@checks_flags
def evaluate_prefixes(model: Union[str, onnx.ModelProto], data, timesteps: Sequence[int],
                      batch_size: Optional[int] = None, limit: Optional[int] = None, mean=None, std=None,
                      data_dir=None, show_progress: bool = True,
                      threads: Optional[int] = None, download: bool = False) -> Dict[int, EvalResult]:
    """Evaluate a spiking model at several T in one run of max(T) steps: the result at T is
    what a run of exactly T steps gives (same parameters; prefixes of the same spike trains)."""
    from .convert import check_timesteps
    try:
        if isinstance(timesteps, (str, bytes)):
            raise TypeError
        timesteps = list(timesteps)
    except TypeError:
        raise UsageError(f"evaluate_prefixes takes a list of time-step counts, not "
                         f"{timesteps!r} (for one T: evaluate(..., timesteps=T))") from None
    t_list = sorted(set(check_timesteps(t) for t in timesteps))
    if not t_list:
        raise UsageError("evaluate_prefixes needs at least one time-step count")
    return _evaluate(model, data, t_list, batch_size, limit,
                     mean, std, data_dir, show_progress, threads, download)


def _other_outputs_hint(runner) -> str:
    """For a model of several outputs: how to score another one than the first."""
    names = list(getattr(runner, "output_names", None) or [])
    if len(names) < 2:
        return ""
    return (f". It has {len(names)} outputs ({', '.join(repr(n) for n in names[:6])}"
            f"{', ...' if len(names) > 6 else ''}): score another with `eval --output NAME`, "
            "and convert the DNN with `--outputs NAME` to keep the scores alone")


def _scored_index(runner, output: Optional[str], where: str) -> int:
    """The index among the runner's outputs of ``output`` (None: the first, 0); a name the
    model does not output is a UsageError listing those it does."""
    if output is None:
        return 0
    names = list(runner.output_names or [])
    if not isinstance(output, str) or output not in names:
        raise UsageError(f"--output: {output!r} is not an output of {where}; its outputs are: "
                         + ", ".join(names))
    return names.index(output)


def _scores_classes(out: np.ndarray, kind: str) -> bool:
    """Whether a model's first output ``out`` gives each sample's class (scores or ids)."""
    try:
        predicted(out, kind)
    except DataError:
        return False
    return True


def _labels_fit(y, out, kind: str, table, name: str) -> bool:
    """Whether every label is a class the first output ``out`` scores (see check_labels_for)."""
    try:
        if kind != IDS:
            check_labels_for(y, out, name)
        if table is not None:
            check_labels_for_table(y, table, name)
    except DataError:
        return False
    return True


def _evaluate(model, data, t_list: Optional[List[int]], batch_size, limit, mean, std, data_dir,
              show_progress, threads, download=False, where=None,
              top1: Optional[bool] = True, output: Optional[str] = None) -> Dict[int, EvalResult]:
    from .convert import (MAX_BATCH_SIZE, check_count, check_recorded_timesteps,
                          resolve_data, values_text, warn_other_timesteps,
                          warn_preprocess_override)
    from .model_io import model_proto
    from .runtimes.ort import ModelRunner

    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size", MAX_BATCH_SIZE, why=" (MAX_BATCH_SIZE)")
    limit = check_count(limit, "limit", allow_none=True)
    many = t_list is not None and len(t_list) > 1
    model = model_proto(model)       # a SpikingModel that convert() returned, not yet saved
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise UsageError(f"a model is a path, an onnx.ModelProto or what convert() returned, "
                         f"not {type(model).__name__}")
    runner = ModelRunner(model if isinstance(model, onnx.ModelProto) else str(model), threads,
                         per_step=many, where=where)
    if many and not runner.spiking:
        raise DataError("several time-step counts only make sense for a spiking model")
    name = where or (str(model) if not isinstance(model, onnx.ModelProto)
                     else (runner.model.graph.name or "model"))
    where = str(name)
    scored = _scored_index(runner, output, where)
    which = "first output" if scored == 0 else f"output '{runner.output_names[scored]}'"
    other_t = None
    if runner.spiking:
        preprocess = check_preprocess(runner.info.preprocess, where)
        if t_list is None:
            check_recorded_timesteps(runner.info.timesteps, where)
        for t in t_list or [None]:
            runner.check_timesteps(t)      # a deploy graph's fixed T: refused before any work
        other_t = warn_other_timesteps(runner.info, t_list or [runner.info.timesteps], where)
        runner.warned_timesteps.update(t_list or [runner.info.timesteps])   # said once, here
    else:
        preprocess = _dnn_preprocess(runner.model, where)
    if isinstance(data, tuple):
        if len(data) != 2:
            raise DataError(f"data: a tuple must be (inputs, labels), not {len(data)} items")
        if isinstance(data[0], dict):      # one array per input of a multi-input model
            x = {k: array_like(v, f"data (input {k!r})") for k, v in data[0].items()}
            for k, v in x.items():
                check_inputs(v, f"data (input {k!r})")
            n = len(next(iter(x.values()))) if x else 0
        else:
            x = array_like(data[0], "data")
            check_inputs(x, "data")
            n = len(x)
        data = Dataset("arrays", x, None if data[1] is None else       # (x, None): unlabeled
                       check_labels(data[1], n, "data"), preprocessed=True)
    elif isinstance(data, Dataset) and data.y is not None and not isinstance(data.x, dict):
        check_inputs(data.x, data.name)
        data = Dataset(data.name, data.x, check_labels(data.y, len(data.x), data.name),
                       data.preprocessed, data.preprocess, data.source_dtype)
    own = {} if runner.spiking else own_scaling(runner.model)   # (a DNN's own x / 255)
    folder = image_folder_spec(data, "test")
    plan = None
    if folder is not None:        # read in parts: a folder may hold more than memory does
        plan = plan_image_folder(*folder, image_shape(runner.specs), take=(limit, None),
                                 classes=folder_classes(runner.model))
        n = len(plan.files)
    else:
        ds = resolve_data(data, preprocess, mean, std, data_dir=data_dir, split="test",
                          download=download, specs=runner.specs, take=(limit, None),
                          classes=folder_classes(runner.model), **own)
        if limit:
            ds = ds.take(limit)
        n = len(ds)
    asked, notes = batch_size, []
    if not runner.spiking and t_list:
        notes.append("timesteps (-T) is ignored for a DNN")
    from .datasets import named_dataset
    named = folder is not None or named_dataset(data) is not None    # normalized here
    if preprocess and mean is None and named and not is_pixels_255(preprocess):
        notes.append(f"the images are normalized as {where} records (mean "
                     f"{values_text(preprocess['mean'])}, std {values_text(preprocess['std'])}); "
                     "--mean/--std override it")
    # (a helper's eval fell from 85.3 to 67.2 % without a word)
    overridden = warn_preprocess_override(where, mean, std, preprocess, "its results are then "
                                          "on other inputs than it was trained or converted on")
    said = [f"--mean/--std ({values_text(mean)}, {values_text(std)}) overrode the preprocessing "
            f"the model records (mean {values_text(preprocess.get('mean'))}, std "
            f"{values_text(preprocess.get('std'))})"] if overridden else []
    batch_size = eval_batch(batch_size, runner.info)
    if runner.fixed_batch:
        batch_size = runner.fixed_batch
    elif runner.spiking:
        _warn_memory(asked, min(batch_size, n), runner.info, where)
        if asked is None and batch_size < min(DEFAULT_EVAL_BATCH, n):
            notes.append(f"evaluated in batches of {batch_size} samples (not "
                         f"{DEFAULT_EVAL_BATCH}), so that a batch of this model holds at most "
                         f"about {_size(EVAL_BATCH_BYTES)} in onnxruntime; --batch-size sets it")
    parts = iter([ds]) if plan is None else \
        _folder_parts(plan, batch_size, preprocess, mean, std, runner.specs, show_progress, **own)
    ds = next(parts)
    ds_name = ds.name
    applied = ds.preprocess      # what resolve_data applied (None: arrays taken as given)
    feeds = runner.validate(ds.x, f"{ds.name} (evaluation data)")
    kind = (first_output_kind(runner.model, runner.output_names[scored])
            if ds.y is not None and not runner.spiking and runner.output_names else SCORES)
    table = class_table(runner.model, runner.output_names[scored]) if kind == IDS else None
    labeled = ds.y is not None and top1 is not False
    if runner.spiking:
        t_list = t_list or [runner.info.timesteps]
    else:
        t_list = [0]
    T = max(t_list)
    correct = {t: 0 for t in t_list}
    spikes = {t: {} for t in t_list}
    t0 = time.perf_counter()
    desc = ("evaluating SNN T=" + ",".join(map(str, t_list))) if runner.spiking else "evaluating DNN"
    bar = Progress(n, desc=desc, unit="sample", enabled=None if show_progress else False)
    done = 0                      # samples of the parts before this one
    while ds is not None:
        for start in range(0, len(ds), batch_size):
            feed = {k: v[start:start + batch_size] for k, v in feeds.items()}
            r = runner.run_padded(feed, T if runner.spiking else None)
            out = r.outputs[scored]
            # NaN or +inf: an overflow (-inf is a legitimate score: a log-softmax that
            # underflowed, a masked logit)
            broken = (np.isnan(out) | np.isposinf(out)) if out.dtype.kind == "f" else None
            if broken is not None and broken.any():
                bad = int(np.count_nonzero(broken.reshape(len(out), -1).any(axis=1))
                          if out.ndim else 1)
                raise DataError(f"{ds.name}: the model's {which} is NaN/+Inf on {bad} of the "
                                f"{len(out)} samples of the batch at sample {done + start}: "
                                "the data's values "
                                "drive its activations past float32's range; check the data's "
                                "scale (and preprocessing)" + _huge_weight(runner.model))
            nb, fed = (out.shape[0] if out.ndim else 0), len(next(iter(feed.values())))
            if nb != fed:
                raise DataError(f"{where}: the model's {which} has shape "
                                f"{list(out.shape)} on a batch of {fed}; top-1 needs one "
                                "row per sample (the batch axis first)")
            for t in t_list:
                if many:
                    logits = r.step_outputs[scored][:t].mean(0)
                    counts = {k: v[:t].sum(0) for k, v in r.step_spikes.items()}
                else:
                    logits, counts = out, r.spikes
                if labeled and top1 is None and done == 0 and start == 0:
                    # spikes alone unless the output scores the labels' classes (a
                    # regression's [N, 1] or an embedding's [N, D] fed labelled images)
                    labeled = _scores_classes(logits, kind) and _labels_fit(
                        ds.y, logits, kind, table, ds.name)
                if labeled:
                    if start == 0 and not _scores_classes(logits, kind):
                        raise DataError(
                            f"{where}: its {which} has shape {list(logits.shape)}; top-1 "
                            "needs [N, classes] scores, one score per sample (a binary "
                            "classifier) or [N] integer class ids. The data has labels: for a "
                            "model that does not classify, give data without them ('y')"
                            + _other_outputs_hint(runner))
                    try:
                        if start == 0 and kind != IDS:
                            check_labels_for(ds.y, logits, ds.name)
                        if start == 0 and table is not None:
                            check_labels_for_table(ds.y, table, ds.name)
                    except DataError as e:     # the first output may be the wrong one
                        hint = _other_outputs_hint(runner) if output is None else ""
                        text = str(e)
                        if hint and text.endswith(("?", ".")):
                            hint = hint[1:]           # ". It has ..." after its own stop
                        raise DataError(text + hint) from None
                    guess = ids_to_indices(logits, table, where) if table is not None else \
                        predicted(logits, kind)
                    correct[t] += int(np.count_nonzero(guess == ds.y[start:start + nb]))
                for k, v in counts.items():
                    spikes[t][k] = spikes[t].get(k, 0.0) + float(v.sum())
            bar.update(nb, **({"top1": 100.0 * correct[T] / (done + start + nb)} if labeled else {}))
        done += len(ds)
        feeds = feed = ds = r = None    # the part's arrays, before the next part is read
        ds = next(parts, None)
        if ds is not None:
            feeds = runner.validate(ds.x, f"{ds.name} (evaluation data)")
    bar.close()
    seconds = time.perf_counter() - t0
    out = {}
    for t in t_list:
        sites, pools = {}, {}
        if runner.spiking:
            counted = runner.deploy_spikes if runner.deploy else runner.view.counted
            for recs, into in ((runner.info.sites, sites), (runner.info.pools, pools)):
                for s in recs:   # not in a deploy graph without its counters, nor an uncounted pool
                    if s.name in counted:
                        into[s.name] = _activity(s.name, s.neurons, spikes[t].get(s.name, 0.0) / n, t)
                        _check_activity(into[s.name], where)
        out[t] = EvalResult(model=str(name), kind="snn" if runner.spiking else "dnn", samples=n,
                            correct=correct[t] if labeled else None,
                            top1=100.0 * correct[t] / n if labeled else None,
                            seconds=seconds, timesteps=t if runner.spiking else None,
                            method=runner.info.method if runner.spiking else None, sites=sites,
                            scored_output=runner.output_names[scored] if runner.output_names else None,
                            outputs=len(runner.output_names),
                            model_fingerprint=(fmt.spiking_fingerprint(runner.info)
                                               if runner.spiking else None), pools=pools,
                            batch_size=int(batch_size), notes=list(notes),
                            warnings=([other_t] if other_t else []) + said,
                            data=_data_name(data, ds_name), limit=limit,
                            preprocess={k: [float(v) for v in np.asarray(applied[k]).reshape(-1)]
                                        for k in ("mean", "std")} if applied else None)
    return out


def _data_name(data, loaded: Optional[str]) -> Optional[str]:
    """What the data was, for the result: a spec as given (a dataset's name, a file, a
    folder), else the loaded set's name (in-memory arrays: "arrays")."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    return loaded


def _folder_parts(plan: FolderPlan, batch_size: int, preprocess, mean, std, specs,
                  show_progress: bool, scaling: Optional[str] = None,
                  raw_pixels: Optional[str] = None) -> Iterator[Dataset]:
    """An image folder's images, preprocessed, in parts of at most :data:`EVAL_PART_BYTES` (a
    whole number of batches each): evaluation holds one part at a time, not the folder."""
    from .convert import resolve_data
    n = len(plan.files)
    per = max(1, EVAL_PART_BYTES // plan.image_bytes)
    per = max(batch_size, per // batch_size * batch_size)
    for a in range(0, n, per):
        raw = load_image_folder(plan.folder, show_progress=show_progress and per >= n,
                                part=(a, min(n, a + per)), plan=plan)
        ds = resolve_data(raw, preprocess, mean, std, specs=specs, scaling=scaling,
                          raw_pixels=raw_pixels)
        del raw
        if ds.preprocess is not None:   # the next parts as this one (and no second warning)
            mean, std = ds.preprocess["mean"], ds.preprocess["std"]
        yield ds
        del ds                          # the part is gone before the next one is read


def _warn_memory(asked: Optional[int], batch: int, info: fmt.SpikingInfo, where: str) -> None:
    """Warn when an asked-for batch is estimated to need more memory than the system has."""
    if asked is None:
        return
    need, free = batch * sample_bytes(info), available_memory()
    if free is not None and need > 0.8 * free:
        log.warning("%s: a batch of %d samples needs about %s in onnxruntime and %s are "
                    "available; pass a smaller --batch-size (without one, eval picks a batch "
                    "within %s)", where, batch, _size(need), _size(free), _size(EVAL_BATCH_BYTES))


def _size(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


#: a weight beyond this is named when a model's outputs overflow (no trained network's
#: weights come near; a weight of 3e38 edited into a file was blamed on the data alone)
HUGE_WEIGHT = 1e6


def _huge_weight(model: onnx.ModelProto) -> str:
    """``, and the model's weights: 'fc' holds 3e+38, ...`` for the float initializer of the
    largest magnitude when it is beyond :data:`HUGE_WEIGHT`, else nothing (on an error only:
    it reads every weight)."""
    name, top = None, 0.0
    for t in fmt.all_initializers(model).values():
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                               onnx.TensorProto.FLOAT16):
            continue
        try:
            a = onnx.numpy_helper.to_array(t)
        except Exception:     # noqa: BLE001 -- (external data not found: not the cause here)
            continue
        m = float(np.max(np.abs(a))) if a.size else 0.0
        if m > top:
            name, top = t.name, m
    if name is None or top <= HUGE_WEIGHT:
        return ""
    return (f", and the model's weights: '{name}' holds {top:.3g}, far beyond any trained "
            "network's (a damaged or edited file?)")


#: how far above one spike per neuron and step a measured rate may read before it is refused
#: (:func:`_check_activity`): counts are exact, but files of before 2026-12-08 summed a site's
#: amplitudes in float32 before dividing (one spike in 25 088 per step)
RATE_SLACK = 1e-3


def _check_activity(a: "SiteActivity", where) -> None:
    """A neuron fires at most once per step: a site or pool that counted more spikes per
    sample than its recorded neurons can fire in T steps has a recorded shape of fewer neurons
    than the current it receives (a record and membrane edited to one neuron, on a layer of
    256: eval printed 2.89 spikes per step), and is refused as a damaged file."""
    if a.neurons and a.rate > 1 + RATE_SLACK:
        raise ModelLoadError(f"{where}: {a.name} fired {a.spikes_per_sample:.6g} spikes per "
                             f"sample, {a.rate:.3g} per neuron and step, more than the "
                             f"{a.neurons} neurons its record gives can fire: its recorded shape "
                             "is not that of the current it receives. The file is damaged or was "
                             "edited; convert the model again")


def _activity(name: str, neurons: int, per_sample: float, t: int) -> SiteActivity:
    per_neuron = per_sample / neurons if neurons else 0.0
    return SiteActivity(name, neurons, per_sample, per_neuron, per_neuron / t)


def _dnn_preprocess(model: onnx.ModelProto, where: str = "model") -> Optional[dict]:
    """A DNN's recorded preprocessing; a damaged one raises :class:`ModelLoadError` naming
    ``where`` (as the conversion does)."""
    from .model_io import metadata_dict
    meta = metadata_dict(model)
    if fmt.META_PREPROCESS not in meta:
        inits = {i.name for i in model.graph.initializer}
        data = [i for i in model.graph.input if i.name not in inits]
        if data and all(i.type.tensor_type.elem_type == onnx.TensorProto.UINT8 for i in data):
            return dict(PIXELS_255)          # raw uint8 pixels in: fed as such
        return None
    return dnn_preprocess(parse_preprocess(meta[fmt.META_PREPROCESS], where), where)
