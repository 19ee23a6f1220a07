"""The refinement behind the default ``refined`` method: Algorithm 1's parameters refined
site by site on the spiking network itself.

Algorithm 1 chooses each site's (alpha, beta) on the DNN's own pre-activations, as if every
neuron received a constant input. In the spiking network it does not: the site's input is
built from the spikes of the sites before it, which arrive at different steps and carry those
sites' quantization error. At T = 1-4 the two differ enough to matter, and on deep networks
the error compounds until Algorithm 1 alone collapses.

The sites are refined in graph order. For site ``l``:

1. with weight calibration (default), every layer that computes the site's input from spikes
   is refitted (:mod:`onnx_snn.weight_calibration`) on its time-averaged spiking input, to
   the DNN's output of the same layer (gathered, where the layer's rows are drawn, in the one
   pass of the DNN that also samples every site's pre-activations), its ridge pulling toward
   the layer's own weights; at T = 1 a layer that feeds a site alone is fitted to
   ``min(h, mu)``;
2. the step graph runs, T steps over the calibration images, from the recorded spikes of the
   sites before ``l`` (kept a bit each for all images, :mod:`onnx_snn.recorded_spikes`: one
   layer is run, not the network from its input), and records on a fixed random sample of neurons the input current of every
   step; the target is the DNN's activation ``clip(h, 0, mu)`` of the same neuron and image;
3. ``scales.search_channels`` picks per channel alpha, beta and the initial membrane by
   simulating the neurons exactly on those currents (``scales.search_dynamic`` per layer with
   ``per_channel=False``);
4. the site's spikes with its new parameters are recorded for the sites after it; records
   that no later site reads are dropped (:func:`live_sites`).

The layers after the last site (the classifier) are refitted at the end.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .calibrate import (CALIB_BATCH_BYTES, Calibration, StratifiedStream, batch_within,
                        calibration_feeds, fixed_batch, input_specs, make_session, tensor_shapes)
from .errors import DataError, UsageError
from .graph.normalize import NormalizedModel
from .progress import Progress
from .recorded_spikes import RecordedSpikes
from .scales import SearchConfig, channel_offsets, search_channels, search_dynamic
from .graph import walk
from .graph.ir import ELEMENTWISE_SAME_AXES
from .spiking import format as fmt
from .spiking import rewrite
from .weight_calibration import MAX_INPUTS, layer_fit

#: the refinement's onnxruntime runs alternate with numpy work (regressions, the search), so
#: its sessions do not spin between runs (spinning threads took the cores numpy needed: the
#: default conversion of tools/models' VGG-16 took 16.5-18.8 s spinning, 15.1-15.2 s not;
#: ResNet-20 22.2-24.2 s against 19.9-20.6 s; same results)
SPIN = False


class _Index:
    """Lookups over a model's graph that the refinement's cuts share (built once, not once
    per layer: that made a deep network's refinement quadratic in its depth): its nodes,
    each tensor's producer, each initializer's position. The refinement never adds, drops
    or reorders nodes; a refit changes initializers in place and may give a node a new bias
    (:meth:`added_initializer`)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.producer = walk.producers(self.nodes)
        self.init_pos = {t.name: i for i, t in enumerate(g.initializer)}
        self._readers: Optional[Dict[str, int]] = None
        self._named: Optional[Dict[str, onnx.NodeProto]] = None

    def node_named(self, name: str) -> onnx.NodeProto:
        if self._named is None:
            self._named = {n.name: n for n in self.nodes}
        return self._named[name]

    def added_initializer(self, name: str) -> None:
        """A refit's new bias, appended to the graph's initializers, read by one node."""
        self.init_pos[name] = len(self.model.graph.initializer) - 1
        if self._readers is not None:
            self._readers[name] = self._readers.get(name, 0) + 1

    def readers(self, nm: NormalizedModel, records) -> Dict[str, int]:
        """:func:`rewrite.step_readers` of the model (``nm``), counted at the first call and
        kept (a new bias counts itself in: :meth:`added_initializer`)."""
        if self._readers is None:
            self._readers = rewrite.step_readers(nm, records)
        return self._readers


def spike_counts(spikes: np.ndarray, amplitude) -> Optional[tuple]:
    """Recorded spikes [T, N, C, ...] (uint8 0/1, or int8 -1/0/1 for signed neurons) of
    amplitude ``amplitude`` (broadcasting to [C, ...]) as
    :func:`weight_calibration.integer_form` gives the per-step values ``spikes[t] *
    amplitude``: the signed spike counts K (float32) and each channel's quantum amplitude / T
    (float64; integer_form's is 0 for a channel that never fired, whose column is then all
    zeros either way), without the per-step values. None where the amplitude is not one
    positive value per channel, or a sample is a single value."""
    if spikes.ndim < 3:
        return None
    a = np.broadcast_to(np.asarray(amplitude, np.float32), spikes.shape[2:])
    a = a.reshape(spikes.shape[2], -1)
    if not (np.all(a > 0) and np.all(a == a[:, :1])):
        return None
    return spikes.sum(axis=0, dtype=np.float32), a[:, 0].astype(np.float64) / spikes.shape[0]


def _cut(model: onnx.ModelProto, targets: List[str], given=(), extra=None,
         index: Optional[_Index] = None) -> onnx.ModelProto:
    """The part of ``model`` that computes ``targets`` (its outputs), started at the tensors
    in ``given`` (earlier sites' recorded values), which become inputs; ``extra(made,
    needed)`` names more outputs. ``index``: the model's :class:`_Index`, when kept."""
    g = model.graph
    index = index if index is not None else _Index(model)
    keep = walk.prune(index.nodes, targets, stop=given, producer=index.producer)
    needed = walk.needed_tensors(keep, targets, stop=given)
    made = {o for n in keep for o in n.output}
    outputs = list(targets) + (extra(made, needed) if extra else [])
    inputs = [i for i in g.input if i.name in needed]
    declared = {i.name for i in inputs}    # a given graph input (a site reading the input) once
    inputs += [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
               for t in dict.fromkeys(given) if t in needed and t not in made and t not in declared]
    inits = [g.initializer[i] for i in sorted(index.init_pos[t] for t in needed
                                              if t in index.init_pos)]
    graph = onnx.helper.make_graph(keep, g.name, inputs, [], inits)
    for name in outputs:
        graph.output.add().name = name
    m = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    m.functions.extend(model.functions)
    return m


def _upstream(view: fmt.SpikingView, targets: List[str], given=()) -> onnx.ModelProto:
    """The part of the step graph that computes ``targets``: its nodes, the states they read,
    and those states' next values as outputs (later layers are not run). Tensors in
    ``given`` (earlier sites' spikes, recorded) become inputs: the graph starts there."""
    return _cut(view.model, targets, given, lambda made, needed: [
        st.names.next for st in view.states if st.names.input in needed and st.names.next in made])


def _positions(rng: np.random.Generator, per_sample: int, n_total: int, sizes: List[int],
               sample: int) -> List[np.ndarray]:
    """For every batch, the flat positions sampled from it: a stratified sample of the
    whole set's neurons (:class:`~onnx_snn.calibrate.StratifiedStream`), the same neurons
    whatever the batch size."""
    stream = StratifiedStream(rng, per_sample * n_total, sample)
    return [stream.take(nb * per_sample) for nb in sizes]


def _channels(rec: fmt.SiteRecord, positions: List[np.ndarray]) -> Optional[np.ndarray]:
    """The channel (first per-sample axis) of every sampled neuron of a site."""
    per_sample = rec.neurons
    spatial = per_sample // int(rec.shape[0]) if rec.shape else 1
    return np.concatenate([(p % per_sample) // spatial for p in positions]).astype(np.int64)


def channel_axis(model: onnx.ModelProto, tensor: str, rank: int,
                 index: Optional[_Index] = None) -> Optional[int]:
    """The axis of ``tensor`` (of ``rank`` axes, the batch included) along which the layer
    that computes it has its output channels: 1 for a Conv or Gemm, the last for a MatMul,
    moved by any Transpose on the way (a channels-last graph of tf2onnx keeps its
    activations as NHWC between Transposes); None when the walk back reaches anything else.
    Per-channel parameters group the neurons along the site's first per-sample axis (axis
    1), which is the channels only where this gives 1. ``index``: the model's, when kept."""
    index = index if index is not None else _Index(model)
    producer, consts = index.producer, index.init_pos
    perms: List[List[int]] = []
    t = tensor
    for _ in range(256):
        if t not in producer:
            return None
        n = index.nodes[producer[t]]
        if n.op_type in ("Conv", "ConvTranspose", "Gemm"):
            axis = 1
            break
        if n.op_type == "MatMul":      # x W: the columns; W x (a constant on the left): rows
            axis = rank - 2 if n.input[0] in consts else rank - 1
            break
        if n.op_type == "Transpose":
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            perms.append(perm if perm else list(range(rank))[::-1])
        elif n.op_type not in ELEMENTWISE_SAME_AXES:   # (a layer's output plus a bias...)
            return None
        data = [x for x in n.input[:1 if n.op_type in ("Transpose", "Clip", "BatchNormalization",
                                                       "Dropout", "Cast") else None]
                if x and x not in consts and x in producer]
        if not data:
            return None
        t = data[0]
    else:
        return None
    for perm in reversed(perms):         # from the layer toward the site
        if sorted(perm) != list(range(rank)):
            return None
        axis = perm.index(axis)
    return axis


def _value(v) -> fmt.Value:
    """A float for one value, a list for one per channel."""
    v = np.asarray(v, np.float64).reshape(-1)
    return float(v[0]) if v.size == 1 else [float(a) for a in v]


def _working_copy(nm: NormalizedModel) -> NormalizedModel:
    """The normalized model with its own copy of the graph, whose weights calibration changes."""
    m = onnx.ModelProto()
    m.CopyFrom(nm.model)
    return dataclasses.replace(nm, model=m)


def _calibrated_layers(nm: NormalizedModel, recs, skipped: List[dict]) -> list:
    """The Conv/Gemm layers that read spikes (their input depends on a site's output) and own
    their weights: each gets a fit, except those with more than MAX_INPUTS inputs per output
    (each appended to ``skipped`` as a report row)."""
    g = nm.model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    uses: Dict[str, int] = {}
    for n in nodes:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    dep = walk.dependents(nodes, [r.output for r in recs.values()])
    fits = []
    for n in nodes:
        if not n.input or n.input[0] not in dep:
            continue
        f = layer_fit(n, inits)
        if f is None or not all(uses.get(x, 0) == 1 for x in n.input[1:] if x):
            continue
        if f.inputs > MAX_INPUTS:
            skipped.append({"layer": n.name, "op": n.op_type, "inputs": f.inputs, "refitted": False,
                            "why": f"{f.inputs} inputs per output > MAX_INPUTS ({MAX_INPUTS})"})
            continue
        fits.append(f)
    return fits


def _apply_fit(index: _Index, fit, weight: np.ndarray, bias: np.ndarray) -> dict:
    """Write a refitted layer's weight and bias into the initializers of the working model
    that ``index`` indexes (kept up to date: a new bias initializer is added to it)."""
    g = index.model.graph
    node = index.node_named(fit.node.name)
    inits = {name: g.initializer[index.init_pos[name]] for name in node.input[1:3]
             if name in index.init_pos}
    old = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
    if len(node.input) > 2 and node.input[2]:
        b0 = numpy_helper.to_array(inits[node.input[2]])
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(
            np.broadcast_to(bias, b0.shape if b0.size == bias.size else bias.shape)
            .astype(np.float32), node.input[2]))
    else:
        name = _fresh_name(index, f"{node.input[1]}_bias")
        g.initializer.append(numpy_helper.from_array(bias.astype(np.float32), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        index.added_initializer(name)
    change = float(np.linalg.norm(weight - old) / max(np.linalg.norm(old), 1e-12))
    return {"relative_weight_change": change}


def _fresh_name(index: _Index, base: str) -> str:
    taken = index.init_pos.keys() | index.producer.keys() | {i.name for i in index.model.graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}{k}", k + 1
    return name


#: the refinement's batches hold at most this many bytes of one site's per-step values
#: (float32, all T steps): 224 x 224 ImageNet layers run in batches of a few images (which
#: also bounds onnxruntime's activations for a batch)
REFINE_BATCH_BYTES = 2 ** 28


def refine_batch_size(batch_size: int, timesteps: int, neurons: int, fixed: bool = False) -> int:
    """The refinement's batch: ``batch_size``, or fewer images when one batch's T steps of
    the largest site (``neurons`` per image) would exceed REFINE_BATCH_BYTES (a model's
    fixed batch, ``fixed``, is kept)."""
    per_image = 4 * max(1, int(timesteps)) * max(1, int(neurons))
    return batch_within(batch_size, per_image, REFINE_BATCH_BYTES, fixed)


#: build the step graph again only after a refit or a site's new parameters (False: for every
#: run, as before; the results are the same, tests/test_sequential.py)
REUSE_STEP_GRAPH = True

#: build, for every run, the step graph of the part of the network that run computes (from
#: the recorded spikes to the tensors it wants), not the whole network's: the whole graph,
#: rebuilt after each site's new parameters, made the refinement quadratic in the depth.
#: False: the whole graph (cut before each run), as before; the results are the same
#: (tests/test_sequential.py)
PARTIAL_STEP_GRAPH = True


#: a site's input currents of every step and calibration image are kept, when they take at
#: most this many bytes (float32), from the run that samples them for the search: the site's
#: spikes are then computed from them by its neuron alone, not by running the layer again
#: (one convolution pass of T steps fewer per site), when they also fit under
#: MAX_REFINE_BYTES beside what the refinement holds then. The same spikes but where the
#: bias correction's offset is folded into the bias of the layer before: the step graph then
#: rounds acc + (bias + offset), the kept path (acc + bias) + offset, and a neuron whose
#: membrane lies within float32 rounding of its threshold may differ (none of the 100 M+
#: spikes of the shipped model and ResNet-20 did; tests/test_sequential.py)
KEEP_CURRENTS_BYTES = 2 ** 29
#: False: every site's spikes are recorded by running the layer again (as before; the same
#: spikes, tests/test_sequential.py)
KEEP_CURRENTS = True


def kept_currents_bytes(timesteps: int, n_samples: int, neurons: int) -> int:
    """The bytes a site's kept currents take (0 when over KEEP_CURRENTS_BYTES: not kept)."""
    need = 4 * max(1, int(timesteps)) * int(n_samples) * int(neurons)
    return need if KEEP_CURRENTS and need <= KEEP_CURRENTS_BYTES else 0


#: memory the refined method may hold: the spikes (a bit each, every time step) of every
#: calibration sample at the sites still read, the DNN's outputs the weight calibration fits
#: to (float32, gathered in its first pass), plus one batch's per-step input currents of the
#: site being refined and its sampled pairs (float32); see check_refine_memory
MAX_REFINE_BYTES = 4 * 2 ** 30


def live_sites(nm: NormalizedModel, names: List[str]) -> List[List[str]]:
    """For each site of ``names`` (in graph order), the sites up to it whose outputs the
    sites after it still read (the refinement keeps their recorded values, drops the rest)."""
    recs = {s.name: s for s in nm.sites}
    g = nm.model.graph
    # last[t]: the latest site (its index in names) whose input is computed from tensor t
    # through layers that are no site (a site's neuron stands between the tensor and what
    # comes after it); len(names) for a graph output. One backward sweep: linear in the
    # graph, where a pruning per site was quadratic in the depth
    last: Dict[str, int] = {o.name: len(names) for o in g.output}
    for i, k in enumerate(names):
        last[recs[k].input] = max(last.get(recs[k].input, -1), i)
    blocked = {recs[k].output for k in names}
    for n in reversed(g.node):
        if any(o in blocked for o in n.output):
            continue
        reach = max((last.get(o, -1) for o in n.output if o), default=-1)
        if reach < 0:
            continue
        for t in walk.node_inputs(n):
            if last.get(t, -1) < reach:
                last[t] = reach
    out, active = [], []
    for i, k in enumerate(names):
        active = [j for j in active + [k] if last.get(recs[j].output, -1) > i]
        out.append(active)
    return out


def target_bytes(nm: NormalizedModel, cal: Calibration) -> int:
    """The bytes the weight calibration's targets take: each layer to refit's outputs where
    its rows are drawn (:meth:`LayerFit.targets`, float32), for every calibration sample,
    all gathered in the refinement's first pass (each dropped when its layer is refitted)."""
    sites = {s.name: s for s in nm.sites if s.name in cal.sites}
    fits = _calibrated_layers(nm, sites, [])
    shapes = tensor_shapes(nm, [f.node.output[0] for f in fits], cal.input_shapes)
    return _fits_bytes(fits, cal.n_samples, shapes)


def _fits_bytes(fits: list, n_samples: int, shapes: Dict[str, tuple]) -> int:
    """:func:`target_bytes` of ``fits``, their outputs' per-sample ``shapes`` given."""
    return sum(4 * n_samples * f.targets_per_image(shapes[f.node.output[0]]) for f in fits)


def memory_targets_bytes(nm: NormalizedModel, cal: Calibration) -> int:
    """What :func:`target_bytes` keeps in memory: nothing above TARGETS_IN_MEMORY_BYTES (the
    targets then go to temporary files), unless the temporary folder is in memory itself."""
    need = target_bytes(nm, cal)
    return 0 if targets_spill(need) else need


#: file systems whose files are held in memory: targets written there take the same RAM
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def mount_type(path: str, mounts: str) -> Optional[str]:
    """The type of the file system that holds ``path`` (a real path), from the text of
    ``/proc/self/mounts``: the last-mounted of the longest mount points above it; None when
    none is."""
    def unescape(s: str) -> str:       # the kernel writes a space as \040, a tab as \011, ...
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)

    best, kind = None, None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = unescape(parts[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best)):
            best, kind = point, parts[2]
    return kind


def temp_in_memory() -> bool:
    """Whether the temporary folder (TMPDIR, else /tmp) is a file system held in memory (a
    tmpfs): False where that cannot be read (no /proc)."""
    import tempfile
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = f.read()
    except OSError:
        return False
    return mount_type(os.path.realpath(tempfile.gettempdir()), mounts) in MEMORY_FILESYSTEMS


def targets_spill(need: int) -> bool:
    """Whether gathered targets of ``need`` bytes go to temporary files: above
    TARGETS_IN_MEMORY_BYTES, unless the temporary folder is a tmpfs, whose files would hold
    the same memory (they then stay in memory, and the memory check counts them)."""
    return need > TARGETS_IN_MEMORY_BYTES and not temp_in_memory()


def refine_bytes(cal: Calibration, timesteps: int, cfg: SearchConfig,
                 nm: Optional[NormalizedModel] = None) -> int:
    """An estimate of the memory the refined method holds (see :func:`refine`): while a site
    is refined, ``T * samples * neurons / 8`` bytes for it and for every earlier site still
    read (spikes a bit each per step, a byte for signed ones: RecordedSpikes; all sites when
    ``nm`` is not given); with weight calibration,
    :func:`target_bytes` (without ``nm``, a guess: 4 bytes per neuron of every site and
    sample); plus
    ``4 * T * (batch * neurons + 2 * pairs)`` bytes of currents (the refinement's batch, which
    :func:`refine_batch_size` bounds). A site's currents are kept (:func:`kept_currents_bytes`)
    only where they fit under MAX_REFINE_BYTES beside what is held then: not counted here."""
    neurons = {k: int(np.prod(st.shape)) if st.shape else 1 for k, st in cal.sites.items()}
    batch = refine_batch_size(min(cal.batch_size, cal.n_samples) or 1, timesteps,
                              max(neurons.values(), default=1), cal.fixed_batch)
    def kept(k):           # a site's recorded spikes
        return RecordedSpikes.bytes_for(timesteps, cal.n_samples, neurons[k], cfg.signed_spikes)
    if nm is not None:
        names = [s.name for s in nm.sites if s.name in neurons]
        held = [[]] + live_sites(nm, names)[:-1]        # what is kept while each site is refined
    else:
        names = list(neurons)
        held = [names[:i] for i in range(len(names))]
    cache, work = 0, 0
    for k, before in zip(names, held):
        cache = max(cache, kept(k) + sum(kept(j) for j in before))
        pairs = min(cfg.sequential_sample, cal.n_samples * neurons[k])
        work = max(work, 4 * timesteps * (batch * neurons[k] + 2 * pairs))
    targets = 0
    if cfg.weight_calibration:
        targets = (memory_targets_bytes(nm, cal) if nm is not None
                   else 4 * cal.n_samples * sum(neurons.values()))
    return cache + targets + work


def check_refine_memory(cal: Calibration, timesteps: int, cfg: SearchConfig,
                        nm: Optional[NormalizedModel] = None) -> None:
    """Refuse a refined conversion that would hold more than MAX_REFINE_BYTES."""
    if not cfg.sequential:
        return
    need = refine_bytes(cal, timesteps, cfg, nm)
    if need > MAX_REFINE_BYTES:
        raise UsageError(
            f"the refined method would hold about {need / 2 ** 30:.1f} GiB (the spikes of every "
            f"one of T={timesteps} steps for {cal.n_samples} calibration samples at the layers "
            "still read, the DNN's outputs the refitted layers are fitted to, and one batch's "
            "input currents); the "
            f"limit is {MAX_REFINE_BYTES / 2 ** 30:.0f} GiB "
            "(MAX_REFINE_BYTES): lower -T or --calib-samples, or use --method datta"
            + _tmpfs_hint(nm, cal, cfg))


def _tmpfs_hint(nm: Optional[NormalizedModel], cal: Calibration, cfg: SearchConfig) -> str:
    """What to add to the memory refusal where the targets would be written to disk if the
    temporary folder were not in memory."""
    if nm is None or not cfg.weight_calibration or not temp_in_memory():
        return ""
    need = target_bytes(nm, cal)
    if need <= TARGETS_IN_MEMORY_BYTES:
        return ""
    import tempfile
    return (f"; {need / 2 ** 30:.1f} GiB of it are the refitted layers' targets, which would "
            f"go to temporary files, but {tempfile.gettempdir()} is held in memory (a tmpfs): "
            "set TMPDIR to a folder on disk")


#: the weight calibration's gathered targets stay in memory up to this many bytes in all
#: (sequential.target_bytes); above it each layer's go to a file in a temporary folder,
#: read back a batch at a time when the layer is refitted (an ImageNet ResNet-50 gathers
#: 0.7 GB for 64 images, a 400-layer chain 0.4 GB for 512)
TARGETS_IN_MEMORY_BYTES = 2 ** 28


class _Targets:
    """The layers to refit's gathered targets (:meth:`LayerFit.targets`) for every
    calibration image: per layer one array, each image's rows at its place in the set
    (many per-batch pieces, interleaved on the heap with each batch's outputs, held GBs of
    freed memory that could not go back to the system: an ImageNet VGG-16, 64 images), or
    one array per refinement batch for a layer whose output is not a whole number of rows
    per image (a Reshape that moves the batch axis). With ``spill``, each per-layer array is
    an anonymous temporary file (unlinked as it is made: nothing is left behind whatever
    ends the process), written and read with plain file I/O, so that a full disk is an
    error and not a fault in a memory mapping."""

    def __init__(self, n_total: int, starts: List[int], sizes: List[int], spill: bool = False):
        self.n_total, self.starts, self.sizes, self.spill = n_total, starts, sizes, spill
        self.arrays: Dict[str, tuple] = {}        # {layer: (array or file, rows per image, shape)}
        self.pieces: Dict[str, List[list]] = {}   # {layer: per batch, its parts' arrays}

    def _file_error(self, e: OSError) -> UsageError:
        import tempfile
        return UsageError(f"the refinement's temporary files in {tempfile.gettempdir()}: "
                          f"{e.strerror or e}; free space there or set TMPDIR to a folder with "
                          "room for them, or lower --calib-samples")

    def _write(self, k: str, first_row: int, part: np.ndarray) -> None:
        store, _, shape = self.arrays[k]
        row = int(np.prod(shape[1:], dtype=np.int64)) * 4
        try:
            os.pwrite(store.fileno(), np.ascontiguousarray(part, np.float32).tobytes(),
                      first_row * row)
        except OSError as e:
            raise self._file_error(e) from None

    def _read(self, k: str, lo: int, hi: int) -> np.ndarray:
        store, _, shape = self.arrays[k]
        if not self.spill:
            return store[lo:hi]
        row = int(np.prod(shape[1:], dtype=np.int64)) * 4
        data = os.pread(store.fileno(), (hi - lo) * row, lo * row)
        return np.frombuffer(bytearray(data), np.float32).reshape((hi - lo,) + tuple(shape[1:]))

    def add(self, f, y: np.ndarray, b: int, a: int, m: int, bound=None) -> None:
        """Gather ``y``, the layer's output for images ``a .. a + m`` of batch ``b``, into
        its place, after ``bound(part)`` (in place) when given."""
        k, first = f.node.name, self.starts[b] + a
        per = y.shape[0] // m if y.shape[0] % m == 0 else 0
        if per and k not in self.arrays and k not in self.pieces:
            shape = (self.n_total * per,) + f.targets(y[:1], first=0).shape[1:]
            if not self.spill:
                self.arrays[k] = (np.empty(shape, np.float32), per, shape)
            else:
                import tempfile
                try:
                    self.arrays[k] = (tempfile.TemporaryFile(prefix="onnx-snn-targets-"), per, shape)
                except OSError as e:
                    raise self._file_error(e) from None
        if k in self.arrays and per != self.arrays[k][1]:     # per batch from now on
            p = self.arrays[k][1]
            self.pieces[k] = [[self._read(k, self.starts[i] * p, (self.starts[i] + self.sizes[i]) * p).copy()]
                              for i in range(b)] + \
                             [[self._read(k, self.starts[b] * p, first * p).copy()] if a else []]
            self._forget(k)
        if k in self.arrays:
            store, p, _ = self.arrays[k]
            if not self.spill:
                part = f.targets(y, first=first, out=store[first * p:(first + m) * p])
            else:
                part = f.targets(y, first=first)
        else:
            parts = self.pieces.setdefault(k, [])
            while len(parts) <= b:
                parts.append([])
            part = f.targets(y, first=first)
            parts[b].append(part)
        if bound is not None:
            bound(part)
        if self.spill and k in self.arrays:
            self._write(k, first * self.arrays[k][1], part)

    def batch(self, k: str, b: int) -> np.ndarray:
        """Layer ``k``'s targets for batch ``b`` (read from its file when spilled)."""
        if k in self.arrays:
            p = self.arrays[k][1]
            return self._read(k, self.starts[b] * p, (self.starts[b] + self.sizes[b]) * p)
        parts = self.pieces[k][b]
        if len(parts) != 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    def _forget(self, k: str) -> None:
        store = self.arrays.pop(k)[0]
        if self.spill:
            store.close()

    def drop(self, k: str) -> None:
        if k in self.arrays:
            self._forget(k)
        self.pieces.pop(k, None)

    def nbytes(self) -> int:
        """The bytes held in memory."""
        return (sum(v[0].nbytes for v in self.arrays.values() if not self.spill) +
                sum(x.nbytes for parts in self.pieces.values() for p in parts for x in p))

    def close(self) -> None:
        for k in list(self.arrays):
            self._forget(k)
        self.pieces.clear()


def _target_bounds(nm: NormalizedModel, recs, names: List[str], cfg: SearchConfig,
                   timesteps: int) -> Dict[str, object]:
    """{layer output: the in-place bounding of its weight calibration targets}. A layer whose
    output is a site's input (read by nothing else) is fitted to max(h, -floor * mu) with
    weight_target_floor (an experiment), and at T = 1 to min(h, mu) (one_step_ceiling: the
    DNN's activation saturates at mu, and one step fires one spike at most). The bias
    correction still takes the mean of h itself: against min(h, mu) it did worse on both
    deep networks (docs/FORMAT.md)."""
    capped = cfg.caps_fit_targets(timesteps)
    if cfg.weight_target_floor is None and not capped:
        return {}
    readers: Dict[str, int] = {}
    for n in nm.model.graph.node:
        for t in walk.node_inputs(n):      # a subgraph's read counts too
            readers[t] = readers.get(t, 0) + 1

    def bounding(floor: Optional[np.float32], top: Optional[np.float32]):
        def bound(y: np.ndarray) -> None:
            if floor is not None:    # below it the site is silent either way
                np.maximum(y, floor, out=y)
            if top is not None:      # the DNN's activation is mu above it
                np.minimum(y, top, out=y)
        return bound

    bounds = {}
    for k in names:
        if readers.get(recs[k].input) != 1:
            continue
        floor = (np.float32(-float(cfg.weight_target_floor) * float(recs[k].mu))
                 if cfg.weight_target_floor is not None else None)
        bounds[recs[k].input] = bounding(floor, np.float32(recs[k].mu) if capped else None)
    return bounds


def refine(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord], x, timesteps: int,
           config: Optional[SearchConfig] = None, input_shapes=None, batch_size: int = 64,
           seed: int = 0, show_progress: bool = True, threads: Optional[int] = None,
           pools=None) -> tuple:
    """Return (refined records, report, normalized model). ``records`` are the datta ones to
    start from; ``x`` the calibration inputs (an array or {input name: array}). With
    ``config.weight_calibration`` the layers that read spikes are refitted on the way
    (:mod:`onnx_snn.weight_calibration`), in a copy of ``nm`` that is returned; else ``nm``."""
    cfg = config or SearchConfig()
    t0 = time.perf_counter()
    feeds, n_total, batch_size = calibration_feeds(nm, x, batch_size)
    batch_size = refine_batch_size(batch_size, timesteps,
                                   max((r.neurons for r in records.values()), default=1),
                                   bool(fixed_batch(input_specs(nm.model))))
    for name, arr in feeds.items():
        want = (input_shapes or {}).get(name)
        if want is not None and tuple(arr.shape[1:]) != tuple(want):
            raise DataError(f"calibration data: input '{name}' has per-sample shape "
                            f"{list(arr.shape[1:])}, but the model was calibrated with {list(want)}; "
                            "refine on the data it was calibrated with")
    starts = list(range(0, n_total, batch_size))
    sizes = [min(batch_size, n_total - s) for s in starts]
    recs = copy.deepcopy(records)
    names = [s.name for s in nm.sites if s.name in recs]
    rng = np.random.default_rng(seed)
    positions = {s: _positions(rng, recs[s].neurons, n_total, sizes, cfg.sequential_sample)
                 for s in names}
    passes = 1 + len(names) * (3 if cfg.weight_calibration else 2)
    bar = Progress(n_total * passes, desc="refining", unit="sample",
                   enabled=None if show_progress else False)

    layer_rows: List[dict] = []
    # the layers still to refit, by node name, in graph order (found on the DNN: its working
    # copy, made after the first pass, has the same nodes)
    pending = {f.node.name: f for f in (_calibrated_layers(nm, recs, layer_rows)
                                        if cfg.weight_calibration else [])}
    for f in pending.values():
        f.n_images, f.holdout = n_total, cfg.weight_holdout
        f.to_original = cfg.weight_ridge_to_original
    bounds = _target_bounds(nm, recs, names, cfg, timesteps)

    # one pass of the DNN: its pre-activations at each site's sampled positions (the search's
    # targets), and each layer to refit's outputs where its rows will be drawn (the weight
    # calibration's targets: the layers are then never run as the DNN one by one)
    exposed = list(dict.fromkeys([recs[s].input for s in names] +
                                 sorted({f.node.output[0] for f in pending.values()})))
    sess = make_session(nm.model, threads, where="the DNN", spin=SPIN, outputs=exposed)
    sess_names = [o.name for o in sess.get_outputs()]
    # a batch of the refinement runs in parts whose outputs fit in CALIB_BATCH_BYTES, as in
    # calibration: a residual network exposes its convolutions before each Add too
    neurons = {recs[s].input: recs[s].neurons for s in names}
    shapes = tensor_shapes(nm, [f.node.output[0] for f in pending.values()],
                           {k: tuple(v.shape[1:]) for k, v in feeds.items()})
    per_image = 4 * (sum(neurons.values()) +
                     sum(int(np.prod(v)) for t, v in shapes.items() if t not in neurons))
    fixed = bool(fixed_batch(input_specs(nm.model)))
    preacts = {s: [] for s in names}
    targets = _Targets(n_total, starts, sizes, spill=targets_spill(_fits_bytes(
        list(pending.values()), n_total, shapes)))
    for b, start in enumerate(starts):
        nb = sizes[b]
        part = batch_within(nb, per_image, CALIB_BATCH_BYTES, fixed)
        sampled: Dict[str, np.ndarray] = {}
        for a in range(0, nb, part):
            m = min(part, nb - a)
            feed = {k: v[start + a:start + a + m] for k, v in feeds.items()}
            outs = dict(zip(sess_names, sess.run(None, feed)))
            for s in names:
                # as onnxruntime gave them (float32): widened to float64 when used, the same
                # values (a deep network's sites kept 16 bytes per sample for the whole
                # refinement); the batch's positions, in their order, from its parts
                pos, flat = positions[s][b], outs[recs[s].input].reshape(-1)
                if flat.size != m * recs[s].neurons:
                    raise ValueError(f"site {s}: {flat.size // max(m, 1)} values per sample in "
                                     f"the DNN's pass, where it was calibrated with "
                                     f"{recs[s].neurons}")
                if m == nb:
                    sampled[s] = flat[pos]
                else:
                    lo = a * recs[s].neurons
                    sel = (pos >= lo) & (pos < lo + flat.size)
                    sampled.setdefault(s, np.empty(len(pos), np.float32))[sel] = flat[pos[sel] - lo]
            for f in pending.values():
                targets.add(f, outs[f.node.output[0]], b, a, m, bound=bounds.get(f.node.output[0]))
            # (no view of an output may outlive the pass: onnxruntime's outputs share its
            # arena's memory, which a single one kept whole, 0.9 GB on an ImageNet ResNet-50)
            outs = flat = None
        for s in names:
            preacts[s].append(sampled[s])
        bar.update(nb)
    del sess   # the session's activations (GBs for 224 x 224 layers) go now
    preacts = {s: np.concatenate(v) for s, v in preacts.items()}
    grouped = cfg.per_channel or cfg.bias_correction
    work = _working_copy(nm) if cfg.weight_calibration else nm

    dnn_model = nm.model
    dnn_index = _Index(dnn_model)
    work_index = dnn_index if work.model is dnn_model else _Index(work.model)

    # the step graph changes only when a layer is refitted or a site gets its parameters:
    # changed() drops it then, and the next run builds it again (not every run: on an
    # ImageNet VGG each build copies every weight)
    built: Dict[str, fmt.SpikingView] = {}

    def changed():
        built.clear()

    def whole_view():
        if "view" not in built or not REUSE_STEP_GRAPH:
            built.clear()     # the old graph goes before the new one is built
            meta = rewrite.base_metadata(work, recs, timesteps, "datta", [])
            built["view"] = fmt.read_spiking(
                rewrite.step_model(work, recs, meta, input_shapes, pools), "the step graph")
        return built["view"]

    def step_view(wanted: List[str], given: List[str]) -> fmt.SpikingView:
        """The step graph of the part of the network that computes ``wanted`` from ``given``
        (the whole step graph when not PARTIAL_STEP_GRAPH)."""
        if not PARTIAL_STEP_GRAPH:
            return whole_view()
        part = _cut(work.model, wanted, given, index=work_index)
        kept = {n.name for n in part.graph.node}
        sub_recs = {k: r for k, r in recs.items() if k in kept}
        sub_pools = {k: p for k, p in (pools or {}).items() if k in kept}
        sub = dataclasses.replace(work, model=part,
                                  sites=[st for st in work.sites if st.name in sub_recs])
        meta = rewrite.base_metadata(sub, sub_recs, timesteps, "datta", [])
        return fmt.read_spiking(
            rewrite.step_model(sub, sub_recs, meta, input_shapes, sub_pools,
                               readers=work_index.readers(work, recs)), "the step graph")

    # every refined site's spikes, per step, for all calibration images: later sites are run
    # from them (one layer at a time) rather than from the input. 0/1 spikes, a bit each
    # (RecordedSpikes), and the site's amplitude: y = s * amplitude is exactly what the neuron
    # computed.
    spikes: Dict[str, tuple] = {}

    def spike_values(name: str, t: int, start: int, nb: int) -> np.ndarray:
        """A recorded site's output at step ``t`` for a batch: its spikes times its amplitude,
        in float32, as the neuron computed it (one pass, no float32 copy of the spikes)."""
        s, amp = spikes[name]
        return np.multiply(s.read(start, start + nb, step=t), amp, dtype=np.float32)

    def run_spiking(wanted: List[str], per_batch, given: Optional[Dict[str, list]] = None,
                    view: Optional[fmt.SpikingView] = None):
        """Run the step graph, cut to ``wanted`` and started at the recorded spikes, T steps
        over every calibration batch; ``per_batch(b, steps)`` gets each batch's per-step values
        {name: [T, ...]}. ``given``: more tensors it starts at, {name: per batch [T, ...]}.
        ``view``: the step graph to cut (default: :func:`step_view`'s)."""
        given = given or {}
        starts_at = list(spikes) + list(given)
        view = view or step_view(wanted, starts_at)
        step = _upstream(view, wanted, given=starts_at)
        sess = make_session(step, threads, where="the step graph", spin=SPIN)
        out_names = [o.name for o in step.graph.output]
        fed = {i.name for i in step.graph.input}
        upstream = [st for st in view.states if st.names.input in fed]
        recorded = [t for t in spikes if t in fed]
        for b, start in enumerate(starts):
            nb = sizes[b]
            feed = {k: v[start:start + nb] for k, v in feeds.items() if k in fed}
            state = {st.names.input: fmt.initial_state(view, st, nb) for st in upstream}
            steps = {w: [] for w in wanted}
            for t in range(timesteps):
                fed_t = {r: spike_values(r, t, start, nb) for r in recorded}
                fed_t.update({k: v[b][t] for k, v in given.items() if k in fed})
                res = dict(zip(out_names, sess.run(out_names, {**feed, **state, **fed_t})))
                for w in wanted:
                    steps[w].append(res[w])
                state = {st.names.input: res[st.names.next] for st in upstream}
            bar.update(nb)
            per_batch(b, steps)

    def record_spikes(rec: fmt.SiteRecord, currents: Optional[list] = None):
        """Record the site's spikes: from its kept input ``currents`` (per batch [T, ...]) by
        its neuron alone, or by running the step graph up to it."""
        amp = rec.param_values()["amplitude"]
        out = RecordedSpikes(timesteps, n_total, rec.shape, rec.signed)

        def keep(b, steps):
            out.write(starts[b], np.stack(steps[rec.output]))
        given = {rec.input: currents} if currents is not None else {}
        view = step_view([rec.output], list(spikes) + list(given))
        if currents is not None and rec.has_offset and not any(
                n.name == fmt.OffsetNames(rec.name).node for n in view.model.graph.node):
            # the offset is folded into the bias of the layer before: the kept currents,
            # recorded before the site had it, lack it
            off = rec.channel_values(rec.offset)
            for steps_b in currents:
                for c in steps_b:
                    np.add(c, off, out=c)
        run_spiking([rec.output], keep, given=given, view=view)
        spikes[rec.output] = (out, amp)

    # after each site, the sites whose records the later ones still read (found on the DNN:
    # the step graph reads the same site outputs, its neurons and pools stand where the DNN's
    # clips and pools do; the memory check counts the same sets)
    kept_after = live_sites(nm, names)

    def forget(i: int):
        """Drop the recorded spikes no site after the i-th reads."""
        live = {recs[k].output for k in kept_after[i]}
        for name in [k for k in spikes if k not in live]:
            del spikes[name]

    def calibrate_layers(before: Optional[str]):
        """Refit, in graph order, the pending layers that compute ``before`` (every pending
        layer when None), each on the spiking network's input to it and the DNN's outputs
        gathered in the first pass."""
        while True:
            nodes = work_index.nodes
            # back to the refined sites' outputs: every layer behind one was refitted
            # before that site's search (a whole-graph prune per site was quadratic)
            scope = walk.prune(nodes, [before], stop=refined_outputs,
                               producer=work_index.producer) if before else nodes
            # (by node name: pending is long on a deep network, its scope short)
            todo = [pending[n.name] for n in scope if n.name in pending]
            if not todo:
                return
            made = {o for f in todo for o in f.node.output}
            dep = walk.dependents(scope, made) - made
            ready = [f for f in todo if f.node.input[0] not in dep]

            def add(b, steps):
                counts = {}     # a recorded site's spike counts, once for all its readers
                for f in ready:
                    x = f.node.input[0]
                    y = targets.batch(f.node.name, b)
                    if x in spikes and x not in steps:     # a recorded site's output
                        if x not in counts:
                            s, amp = spikes[x]
                            counts[x] = spike_counts(s.read(starts[b], starts[b] + sizes[b]), amp)
                        if counts[x] is not None:
                            f.add(None, y, counts[x], first=starts[b], gathered=True)
                            continue
                        steps[x] = [spike_values(x, t, starts[b], sizes[b]) for t in range(timesteps)]
                    f.add_steps(steps[x], y, first=starts[b], gathered=True)

            computed = sorted({f.node.input[0] for f in ready} - set(spikes))
            if computed:
                run_spiking(computed, add)
            else:   # every layer reads a recorded site's spikes: no step graph to run
                for b in range(len(starts)):
                    add(b, {})
                    bar.update(sizes[b])
            for f in ready:
                if cfg.weight_ridge_grid:
                    ridge, better, new, old = f.choose_ridge(cfg.weight_ridge_grid,
                                                             cfg.weight_ridge)
                else:
                    ridge = cfg.weight_ridge
                    better, new, old = f.improves(ridge)
                row = {"layer": f.node.name, "op": f.node.op_type, "rows": int(f.rows),
                       "heldout_sse_refit": new, "heldout_sse_original": old, "refitted": better}
                if cfg.weight_ridge_grid:
                    row["ridge"] = ridge
                if n_total < 2:
                    row["why"] = ("one calibration image: no held-out image to check a refit "
                                  "on (give more calibration images)")
                if better:
                    w, bias = f.solve(ridge)
                    row.update(_apply_fit(work_index, f, w, bias))
                    changed()
                layer_rows.append(row)
            for f in ready:
                del pending[f.node.name]
                targets.drop(f.node.name)

    rows = []
    refined_outputs: set = set()
    for i, s in enumerate(names):
        rec = recs[s]
        calibrate_layers(rec.input)
        collected = []
        need = kept_currents_bytes(timesteps, n_total, rec.neurons)
        held = sum(v[0].nbytes for v in spikes.values()) + targets.nbytes()
        work_now = 4 * timesteps * (batch_size * rec.neurons + 2 * sum(len(p) for p in positions[s]))
        kept = [] if need and held + work_now + need <= MAX_REFINE_BYTES else None

        def sample(b, steps):
            collected.append(np.stack([x.reshape(-1)[positions[s][b]] for x in steps[rec.input]]))
            if kept is not None:
                # copies: onnxruntime's outputs share its arena, which a kept one holds whole
                kept.append([np.array(c) for c in steps[rec.input]])
        run_spiking([rec.input], sample)
        cur = np.concatenate(collected, axis=1)
        h = preacts.pop(s).astype(np.float64)      # the DNN's pre-activation, sampled
        target = np.clip(h, 0.0, rec.mu)
        row = {"site": s, "alpha_datta": rec.alpha, "beta_datta": rec.beta,
               "pairs": int(cur.shape[1])}
        if not grouped:
            alpha, beta, frac, value = search_dynamic(cur, target, rec.mu, timesteps, cfg,
                                                      start=(rec.alpha, rec.beta),
                                                      signed=rec.signed)
            rec.alpha, rec.beta = alpha, beta
            rec.v_init, rec.objective_value = frac * rec.threshold, value
        else:
            channels = _channels(rec, positions[s])
            n_ch = int(rec.shape[0]) if rec.shape else 1
            axis = channel_axis(nm.model, rec.input, len(rec.shape) + 1,
                                index=dnn_index) if n_ch > 1 else 1
            if axis not in (None, 1):    # channels last: one group for the whole site
                channels, n_ch = np.zeros_like(channels), 1
                row["one_group"] = (f"its channels are axis {axis}, not its first per-sample "
                                    "axis (a channels-last layout)")
            if cfg.bias_correction:  # the mean current each channel lacks, added every step
                offset = channel_offsets(cur, h, channels, n_ch)
                cur = cur + offset[channels].astype(np.float32)[None, :]
                rec.offset = _value(offset)
                row["offset"] = rec.offset
            groups = (channels, n_ch) if cfg.per_channel and n_ch > 1 else (None, 1)   # None: one group
            ch = search_channels(cur, target, rec.mu, timesteps, cfg, *groups,
                                 start=(rec.alpha, rec.beta), signed=rec.signed)
            value = ch.objective_value
            rec.alpha, rec.beta, frac = (_value(v) for v in (ch.alpha, ch.beta, ch.v_init_fraction))
            rec.v_init = _value(np.asarray(ch.v_init_fraction) * np.asarray(rec.threshold))
            rec.objective_value = value
            alpha, beta = rec.alpha, rec.beta
        row.update(alpha=alpha, beta=beta, v_init_fraction=frac, objective_value=value)
        rows.append(row)
        changed()   # the site's new parameters
        record_spikes(rec, kept)
        kept = None
        refined_outputs.add(rec.output)
        forget(i)
    calibrate_layers(None)   # the layers after the last site (the classifier)
    targets.close()
    order = {n.name: i for i, n in enumerate(nm.model.graph.node)}
    layer_rows.sort(key=lambda r: order.get(r["layer"], len(order)))   # graph order
    if not bar.disable and bar.total and bar.n < bar.total:   # a site with no layer to refit: one pass fewer
        bar.total = bar.n
        bar.refresh()
    bar.close()
    report = {"seconds": time.perf_counter() - t0, "sites": rows, "batches": len(starts),
              "images": n_total}    # (the weight calibration holds out every second image)
    if cfg.weight_calibration:
        report["layers"] = layer_rows
    return recs, report, work
