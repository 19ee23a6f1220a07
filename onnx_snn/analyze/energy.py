"""Compute energy of a DNN and of its spiking form, per layer and in total (pure functions).

Energy model (Datta & Beerel 2022, after Horowitz 2014), per sample. ``F_l`` is layer l's
MAC count (see :mod:`onnx_snn.analyze.flops`); ``r_{l-1}`` is the average number of spikes
per neuron, **over all T steps** (0..T), of the site whose spikes reach layer l (its
``source_site``)::

    E_DNN = sum_l F_l * E_MAC
    E_SNN = sum_{direct l} F_l * E_MAC                  computed once: the direct-encoded first
                                                        layer is hoisted out of the time loop
          + sum_{spiking l} F_l * r_{l-1} * E_AC        one accumulate per input spike and fan-out
          + sum_{analog l}  F_l * T * E_MAC             a layer inside the loop fed by no site
                                                        (time-varying analog input): full MACs
                                                        every step (none in the paper's networks)

SNN FLOPs are ``F_l`` (direct), ``F_l * r_{l-1}`` (spiking, ACs) and ``F_l * T`` (analog), and
the FLOPs ratio is ``sum F_l / sum SNN FLOPs`` (MACs and ACs added up, as in the paper).
Only MAC layers (Conv, ConvTranspose, Gemm, MatMul) enter the energy; pooling and residual
additions are counted and reported but left out of it, like the paper, which counts the
FLOPs of convolutional and fully connected layers. Biases are not counted.

Neuromorphic estimate (Park et al. 2020), normalized so that the DNN costs 1::

    E_DNN = 1 * E_compute + 1 * E_static            (= 1: the presets' two parts sum to 1)
    E_SNN = (SNN FLOPs / DNN FLOPs) * E_compute + T * E_static

These are relative units for comparing spiking networks on such hardware (different T,
methods, fine-tuning), as the paper uses them; the "DNN" value is the same formula at T = 1
with all FLOPs, a reference point, not a claim about running the DNN there.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import onnx

from .. import json_text
from ..errors import DataError, NotSpikingModelError, UsageError, file_problem
from ..spiking import format as fmt
from ..values import is_int, is_nonnegative, is_real
from ..flags import checks_flags
from .flops import LayerCount, _dims, count_flat, flatten

#: (pJ per MAC, pJ per AC), Horowitz 2014, 45 nm CMOS at 0.9 V; the first is the paper's default
ENERGY_PRESETS: Dict[str, Tuple[float, float]] = {"45nm-fp32": (4.6, 0.9), "45nm-int32": (3.2, 0.1)}
DEFAULT_PRESET = "45nm-fp32"
#: normalized (E_compute, E_static) per platform, Park et al. 2020
NEUROMORPHIC: Dict[str, Tuple[float, float]] = {"truenorth": (0.4, 0.6), "spinnaker": (0.64, 0.36)}

RATE_TOLERANCE = 1e-6


@dataclass
class LayerRow:
    """One MAC layer. SNN fields are None when no spike rates were given (DNN analysis).

    ``input_mode``: "direct" (time-invariant input, MACs once), "spikes" (fed by
    ``source_site``: ACs) or "analog" (time-varying non-spike input: MACs every step).
    ``spike_rate`` is r_{l-1}: spikes each input element receives over the T steps (a
    site's neuron, a spiking max pool's output, or an average pool's window: its neurons'
    spikes summed, which may exceed T).
    """

    name: str
    op: str
    neurons: int
    source_site: Optional[str]
    input_mode: str
    dnn_flops: int
    dnn_energy_pj: float
    spike_rate: Optional[float] = None
    snn_flops: Optional[float] = None
    snn_macs: Optional[float] = None
    snn_acs: Optional[float] = None
    snn_energy_pj: Optional[float] = None
    #: a concatenated input: each source's share of its elements (site, or "" for an input
    #: that is not spikes), charged at that source's rate; empty for a single source
    source_mix: Dict[str, float] = field(default_factory=dict)
    #: sources whose spikes reach the layer through a spiking max pool: site -> pool; the
    #: layer is charged at the pool's output rate (when the rates have it)
    source_pools: Dict[str, str] = field(default_factory=dict)


@dataclass
class SiteRow:
    """One spiking site: its activity and the accumulates its spikes cause downstream."""

    name: str
    neurons: int
    spikes_per_neuron: Optional[float]     # over the T steps
    rate: Optional[float]                  # per neuron per step
    layers: List[str]                      # MAC layers it feeds
    snn_flops: Optional[float]             # ACs those layers do
    snn_energy_pj: Optional[float]


@dataclass
class OtherRow:
    """A counted op outside the energy (pooling, ReduceMean/ReduceSum, residual Add/Sum)."""

    name: str
    op: str
    ops: int
    neurons: int
    source_site: Optional[str]


@dataclass
class Totals:
    dnn_flops: int
    dnn_energy_pj: float
    other_ops: int
    snn_flops: Optional[float] = None
    snn_macs: Optional[float] = None
    snn_acs: Optional[float] = None
    snn_energy_pj: Optional[float] = None
    flops_ratio: Optional[float] = None     # DNN / SNN (None when the SNN does nothing)
    energy_ratio: Optional[float] = None    # DNN / SNN


@dataclass
class Analysis:
    """The result of :func:`analyze`. ``kind`` is "snn" when spike rates were used, else "dnn"."""

    model: str
    kind: str
    timesteps: Optional[int]
    mac_pj: float
    ac_pj: float
    layers: List[LayerRow]
    sites: List[SiteRow]
    other: List[OtherRow]
    totals: Totals
    neuromorphic: Dict[str, Dict[str, float]] = field(default_factory=dict)
    dnn_source: str = "model"          # where the DNN totals come from: "model" or "dnn model"
    notes: List[str] = field(default_factory=list)

    @property
    def has_snn(self) -> bool:
        return self.kind == "snn"

    def to_dict(self) -> dict:
        """JSON-ready (no infinities: a ratio with a zero denominator is None)."""
        d = asdict(self)
        d["conventions"] = {
            "per": "sample",
            "dnn_energy": "sum F_l * E_MAC over MAC layers",
            "snn_energy": "direct F_l * E_MAC (once) + spiking F_l * r * E_AC + analog F_l * T * E_MAC",
            "spike_rate": "spikes each input element receives over the T steps: a neuron's "
                          "own, a max pool's output spikes, or the sum over an average pool's "
                          "window (so above T where a window holds several neurons)",
            "neuromorphic": "E = (SNN FLOPs / DNN FLOPs) * E_compute + T * E_static; DNN = 1",
            "not_in_energy": "pooling, ReduceMean/ReduceSum, Add/Sum, biases",
        }
        return d

    def to_json(self) -> str:
        return json_text.dumps(self.to_dict())


# ------------------------------------------------------------------ rates

def parse_rates(obj, where: str = "rates") -> Tuple[Dict[str, float], Optional[int]]:
    """Spike rates (site -> spikes per neuron over T steps) and T from an already-read JSON value.

    Accepted: the ``onnx-snn eval --json`` result ({"kind": "snn", "timesteps": T, "sites":
    {name: {"spikes_per_neuron": ...}}}); an ``onnx-snn finetune --json`` result (the rates
    of its best epoch: the model it wrote); a plain {"site": spikes_per_neuron} mapping (T None).
    The spiking max pools' output rates (eval's ``"pools"``, fine-tuning's
    ``pool_spikes_per_neuron``) are returned under the pools' names beside the sites'.
    """
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{where}: expected a JSON object of spike rates (the file `onnx-snn eval "
                        "--json` writes, or {\"site\": spikes_per_neuron}); got "
                        f"{type(obj).__name__ if obj != {} else 'an empty object'}")
    T = obj.get("timesteps")
    if obj.get("kind") == "dnn":
        raise DataError(f"{where}: is the evaluation of a DNN (no spikes); run `onnx-snn eval "
                        "--json` on the spiking model")
    if isinstance(obj.get("sites"), dict) and not obj["sites"] and obj.get("kind") == "snn":
        raise DataError(f"{where}: an evaluation that recorded no spike rates (a deploy graph "
                        "made without --spike-counts?); evaluate the spiking model, or a deploy "
                        "graph made with `onnx-snn deploy --spike-counts`, with --json")
    if isinstance(obj.get("sites"), dict):
        rates = {}
        for k, v in obj["sites"].items():
            if not isinstance(v, dict) or "spikes_per_neuron" not in v:
                raise DataError(f"{where}: site {k!r} has no 'spikes_per_neuron' value")
            rates[k] = v["spikes_per_neuron"]
        pools = obj.get("pools")
        for k, v in (pools.items() if isinstance(pools, dict) else ()):
            if not isinstance(v, dict) or "spikes_per_neuron" not in v:
                raise DataError(f"{where}: pool {k!r} has no 'spikes_per_neuron' value")
            rates[k] = v["spikes_per_neuron"]
    elif isinstance(obj.get("epochs"), list):
        epochs = [e for e in obj["epochs"] if isinstance(e, dict) and e.get("spikes_per_neuron")]
        if not epochs:
            raise DataError(f"{where}: a fine-tuning result without spike rates per epoch")
        best = [e for e in epochs if e.get("epoch") == obj.get("best_epoch")]
        if not best:     # the written model is not an epoch of this file (epoch 0: the start)
            raise DataError(
                f"{where}: the fine-tuned model written is its best epoch "
                f"({obj.get('best_epoch')!r}: 0 is the starting model, which no epoch beat), "
                "and this file has no spike rates of it; measure them with `onnx-snn eval "
                "MODEL --json FILE` and pass that file")
        rates = best[-1]["spikes_per_neuron"]
        if not isinstance(rates, dict):
            raise DataError(f"{where}: epoch {best[-1].get('epoch')!r}'s spikes_per_neuron is a "
                            f"{type(rates).__name__}, not a mapping {{site: rate}}: the file is "
                            "damaged; measure the rates with `onnx-snn eval MODEL --json FILE`")
        rates = dict(rates)
        pools = best[-1].get("pool_spikes_per_neuron")
        rates.update(pools if isinstance(pools, dict) else {})
    elif all(is_real(v) for v in obj.values()):
        rates, T = dict(obj), None
    else:
        raise DataError(f"{where}: not a spike-rate file: expected the JSON of `onnx-snn eval "
                        "--json` or a mapping {\"site\": spikes_per_neuron}")
    out = {}
    for k, v in rates.items():
        if not is_nonnegative(v):
            raise DataError(f"{where}: site {k!r} has spike rate {v!r}; expected a finite number >= 0 "
                            "(spikes per neuron over the T steps)")
        out[str(k)] = float(v)
    if T is not None:
        if not is_int(T) or T < 1:
            raise DataError(f"{where}: 'timesteps' is {T!r}; expected a positive integer")
    return out, T


def load_rates(path: Union[str, Path]) -> Tuple[Dict[str, float], Optional[int]]:
    """Read spike rates from a JSON file (see :func:`parse_rates`): ``(rates, timesteps)``."""
    return parse_rates(read_rate_json(path), str(path))


def read_rate_json(path: Union[str, Path]):
    """The JSON value of a spike-rate file (``onnx-snn eval --json``), read once."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a folder; give the spike-rate file `onnx-snn eval MODEL --json "
                        "RATES.json` writes")
    why = file_problem(p)
    if why is not None:
        hint = "; write one with `onnx-snn eval MODEL --json RATES.json`"
        raise DataError(f"{p}: {why}{hint if why == 'no such file' else ''}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e}); spike rates are the file `onnx-snn eval MODEL "
                        "--json RATES.json` writes (a new file: this one is not it)") from None


def rate_neurons(obj) -> Dict[str, int]:
    """The neurons per site an ``onnx-snn eval --json`` value records (empty for the other
    forms): the spiking model the rates were measured on, to check against."""
    sites = obj.get("sites") if isinstance(obj, dict) else None
    if not isinstance(sites, dict):
        return {}
    return {str(k): v["neurons"] for k, v in sites.items()
            if isinstance(v, dict) and isinstance(v.get("neurons"), int)
            and not isinstance(v.get("neurons"), bool)}


def check_rate_file(path: Union[str, Path], rates_T: Optional[int], neurons: Mapping[str, int],
                    info, timesteps: Optional[int], model: str,
                    fingerprint: Optional[str] = None) -> None:
    """Refuse rates that were measured on another model (a site of the same name with
    another neuron count, ``neurons`` as :func:`rate_neurons` reads them, or another
    ``fingerprint``: :func:`~onnx_snn.spiking.format.spiking_fingerprint`, which ``eval
    --json`` records) or at another T than the one asked for."""
    if timesteps and rates_T and int(timesteps) != int(rates_T):
        import re
        other = re.sub(r"(\.T\d+)?\.json$", "", str(path)) + f".T{int(timesteps)}.json"
        raise UsageError(f"{path}: these spike rates were measured at T={rates_T}, not the T="
                         f"{timesteps} asked for (-T); drop -T, or measure them at T={timesteps} with "
                         f"`onnx-snn eval {model} -T {timesteps} --json {other}`")
    if info is None:
        return
    if fingerprint and isinstance(fingerprint, str) and fingerprint != fmt.spiking_fingerprint(info):
        raise DataError(f"{path}: these spike rates were measured on another spiking model than "
                        f"{model} (another conversion or fine-tuning: its neurons' thresholds "
                        f"differ); run `onnx-snn eval {model} --json FILE` on this one")
    have = {s.name: s.neurons for s in info.sites}
    for site, n in neurons.items():
        if site in have and have[site] and n != have[site]:
            raise DataError(f"{path}: site {site} has {n} neurons there but {have[site]} in "
                            f"{model}: the rates were measured on another model; run `onnx-snn "
                            f"eval {model} --json FILE` on this one")


def rate_file_warnings(measured: Mapping, info) -> List[str]:
    """What an ``eval --json`` result says about how its rates were measured that an energy
    figure built on them should repeat: the warnings eval gave (another T, --mean/--std that
    overrode the model's preprocessing), and a normalization other than the one the spiking
    model records (results written before eval recorded it say nothing of it)."""
    from ..convert import same_values, values_text
    out = [f"the spike rates were measured with a warning: {w}"
           for w in measured.get("warnings") or [] if isinstance(w, str) and w]
    pp = measured.get("preprocess")
    rec = getattr(info, "preprocess", None)
    if isinstance(pp, dict) and isinstance(rec, dict) and not (
            same_values(pp.get("mean"), rec.get("mean")) and same_values(pp.get("std"), rec.get("std"))) \
            and not any("overrode the preprocessing" in w for w in out):
        out.append(f"the spike rates were measured on inputs normalized with mean "
                   f"{values_text(pp.get('mean'))}, std {values_text(pp.get('std'))}, not as the "
                   f"model records (mean {values_text(rec.get('mean'))}, std "
                   f"{values_text(rec.get('std'))}): the energy is that of other inputs")
    return out


# ------------------------------------------------------------------ the analysis

def _ratio(a: float, b: Optional[float]) -> Optional[float]:
    return a / b if b else None


def _input_mode(layer: LayerCount, spiking: bool) -> str:
    if layer.direct or not spiking:
        return "direct"
    return "spikes" if layer.source_site else "analog"


def layer_energy(layer: LayerCount, mode: str, rate: Optional[float], timesteps: int,
                 mac_pj: float, ac_pj: float,
                 rates: Optional[Mapping[str, float]] = None) -> Tuple[float, float, float, float]:
    """(SNN FLOPs, MACs, ACs, energy pJ) of one MAC layer in the SNN (formula: module doc).
    A layer with a ``source_mix`` (a concatenated input) is charged per source: each site's
    share of its MACs as ACs at that site's rate (from ``rates``), the share that is not
    spikes as MACs every step."""
    F_l = float(layer.macs)
    if mode == "direct":
        return F_l, F_l, 0.0, F_l * mac_pj
    if mode == "spikes" and layer.source_mix and rates is not None:
        acs = sum(F_l * w * float(rates[s]) for s, w in layer.source_mix.items() if s)
        macs = F_l * layer.source_mix.get("", 0.0) * timesteps
        return acs + macs, macs, acs, acs * ac_pj + macs * mac_pj
    if mode == "spikes":
        acs = F_l * float(rate)
        return acs, 0.0, acs, acs * ac_pj
    macs = F_l * timesteps
    return macs, macs, 0.0, macs * mac_pj


def neuromorphic_estimate(snn_flops: float, dnn_flops: float, timesteps: int,
                          platforms: Mapping[str, Tuple[float, float]] = NEUROMORPHIC
                          ) -> Dict[str, Dict[str, float]]:
    """Normalized energy per platform: DNN = E_compute + E_static; SNN = (F_SNN/F_DNN) E_c + T E_s."""
    out = {}
    for name, (ec, es) in platforms.items():
        dnn = ec + es
        snn = (snn_flops / dnn_flops if dnn_flops else 0.0) * ec + timesteps * es
        out[name] = {"e_compute": ec, "e_static": es, "dnn": dnn, "snn": snn,
                     "ratio": _ratio(dnn, snn)}
    return out


def _check_rates(rates: Mapping[str, float], needed: Sequence[str], known: Sequence[str],
                 T: int, model: str, notes: List[str], pools: Sequence[str] = (),
                 source: Optional[str] = None) -> None:
    missing = [s for s in needed if s not in rates]
    if missing:
        raise DataError(f"{source + ': ' if source else ''}"
                        f"the spike rates have no value for site(s) {', '.join(missing)} of {model}; "
                        "were they measured on another model? Measure them on this one: "
                        f"`onnx-snn eval {model} --data DATA --json RATES.json`, then "
                        f"`onnx-snn analyze {model} --rates RATES.json`")
    unknown = sorted(set(rates) - set(known))
    if unknown:
        notes.append(f"spike rates given for site(s) not in the model, ignored: {', '.join(unknown)}")
    for s, r in rates.items():
        if r > T * (1 + RATE_TOLERANCE):
            raise DataError(f"{source + ': ' if source else ''}"
                            f"{'pool' if s in pools else 'site'} {s!r} has {r:.4g} spikes per "
                            f"neuron, more than T={T} steps allow; "
                            "rates must be spikes per neuron over all T steps (spikes_per_neuron), "
                            "measured at the T given")


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from ..model_io import load_model
    return load_model(model)      # a path (bytes or None: a UsageError, not "no such file")


def _shapes_for(dnn: onnx.ModelProto, measured: onnx.ModelProto) -> Dict[str, List[int]]:
    """The input shapes (batch fixed) of the analyzed graph ``measured`` for the DNN's inputs
    of the same names whose sizes are symbolic: a DNN with symbolic H and W is counted at the
    sizes its spiking model was calibrated with (pinned in its inputs)."""
    fixed = lambda dims: all(isinstance(d, int) and d > 0 for d in dims)  # noqa: E731
    names = {vi.name for vi in dnn.graph.input   # inputs with a symbolic dim past the batch
             if not fixed((_dims(vi) or [])[1:])}
    return {vi.name: _dims(vi) for vi in measured.graph.input
            if vi.name in names and _dims(vi) and fixed(_dims(vi))}


@checks_flags
def analyze(model: Union[onnx.ModelProto, str, Path],
            rates: Optional[Mapping[str, float]] = None,
            timesteps: Optional[int] = None,
            mac_pj: float = ENERGY_PRESETS[DEFAULT_PRESET][0],
            ac_pj: float = ENERGY_PRESETS[DEFAULT_PRESET][1],
            dnn_model: Union[onnx.ModelProto, str, Path, None] = None,
            input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
            where: Optional[str] = None, rates_source: Optional[str] = None) -> Analysis:
    """FLOPs and energy per layer and in total, of a DNN and (with ``rates``) of its SNN.

    ``model`` is a DNN or a spiking model (loop or step form), as a ModelProto, a path or
    the SpikingModel ``convert`` returns.
    ``rates``: what ``onnx_snn.evaluate`` returned for this model (its T and the model it
    measured are checked), or a mapping site -> spikes per neuron over the T steps
    (``load_rates``; a plain mapping says nothing of the model it was measured on, and a
    note says so); with a spiking model and no rates, only the DNN columns are filled (a
    note says so).
    ``timesteps`` is the T the rates were measured at (default: the model's T); it enters
    the analog-layer term and the neuromorphic static term. ``dnn_model`` (the original DNN)
    supplies the DNN totals; its MAC total is checked against the spiking graph's and a
    warning is issued when they differ. ``where``: the model's name in messages (its file;
    default: the path given, else the graph's name); ``rates_source``: the rates' file, for
    messages.
    """
    from ..convert import check_recorded_timesteps, check_timesteps
    from ..errors import UsageError
    from ..model_io import model_proto
    model = model_proto(model)       # a SpikingModel that convert() returned, not yet saved
    if timesteps is not None:
        timesteps = check_timesteps(timesteps, "timesteps")      # 0, 2.5 and True refused
    for key, v in (("mac_pj", mac_pj), ("ac_pj", ac_pj)):
        if not is_nonnegative(v):
            raise UsageError(f"{key} must be a finite energy >= 0 (pJ), not {v!r}")
    rates_T, measured = None, None   # the T and the eval JSON the rates come with
    unchecked = False                # a plain {site: rate}: from which model, nobody says
    if rates is not None and hasattr(rates, "to_dict") and hasattr(rates, "model_fingerprint"):
        rates = rates.to_dict()      # an EvalResult: its model and T are checked as eval's JSON
    if rates is not None:    # checked as a rate file is: finite, >= 0 (NaN gave NaN energy)
        if isinstance(rates, tuple) and len(rates) == 2 and isinstance(rates[0], Mapping):
            rates, rates_T = rates           # load_rates(FILE)'s (rates, T)
            if rates_T is not None:
                rates_T = check_timesteps(rates_T, "the T of load_rates' (rates, T)")
        if not isinstance(rates, Mapping):
            raise DataError(f"rates must be a mapping {{site: spikes per neuron}} (or what "
                            f"load_rates(FILE) returns), not {type(rates).__name__}")
        if not ({"sites", "epochs", "kind"} & set(rates)):     # {site: rate}, not eval's JSON
            bad = [(k, v) for k, v in rates.items() if not is_real(v)]
            if bad:
                raise DataError(f"rates: site {bad[0][0]!r} has spike rate {bad[0][1]!r}; expected "
                                "a finite number >= 0 (spikes per neuron over the T steps)")
            unchecked = rates_T is None
        else:
            measured = dict(rates)
        rates, parsed_T = parse_rates(dict(rates), "rates")
        rates_T = rates_T or parsed_T
    m = _load(model)
    name = where or (str(model) if not isinstance(model, onnx.ModelProto)
                     else (m.graph.name or "model"))
    fg = flatten(m, input_shapes, name)
    counts = count_flat(fg)
    notes = list(fg.notes) + list(fg.warnings)
    for w in fg.warnings:
        warnings.warn(w, stacklevel=2)
    spiking = fg.spiking or bool(fg.sites)
    if rates is not None and not spiking:
        raise NotSpikingModelError(f"{name}: spike rates were given but the model is a plain DNN; "
                                   "analyze the spiking model (.snn.onnx) with its rates")
    # the metadata when there is some (a hand-built step graph of neuron calls has none)
    info = fmt.read_info(m, name) if fmt.META_FORMAT in fmt.metadata(m) else None
    if info is not None and timesteps is None and rates_T is None:
        check_recorded_timesteps(info.timesteps, name)   # the T used below: a damaged one refused
    if rates is not None:    # measured at another T, or on another model: refused
        check_rate_file("rates", rates_T, rate_neurons(measured or {}), info, timesteps, name,
                        (measured or {}).get("model_fingerprint"))
        for w in rate_file_warnings(measured or {}, info):   # measured on other inputs: said
            warnings.warn(w, stacklevel=2)
            notes.append(w)
    T = int(timesteps) if timesteps else (rates_T or (info.timesteps if info else None))
    if T is not None and T < 1:
        raise DataError(f"timesteps must be at least 1 (got {T})")
    use_snn = rates is not None
    if unchecked:
        notes.append("the rates were given as a plain {site: rate} mapping, which does not say "
                     "which model or T they were measured on: nothing checked that they are "
                     "this model's (pass what onnx_snn.evaluate returned, or eval's JSON)")
    mac_layers = [c for c in counts if c.kind == "mac"]
    if spiking and not use_snn:
        notes.append("no spike rates given: only the DNN columns are filled (rates come from "
                     "`onnx-snn eval MODEL --json FILE`)")
    if use_snn:
        site_names = list(dict.fromkeys(fg.sites.values()))
        needed = list(dict.fromkeys(
            s for c in mac_layers if _input_mode(c, True) == "spikes"
            for s in ([c.source_site] + [k for k in c.source_mix if k])))
        _check_rates(rates, needed, site_names + list(fg.pools.values()), T, name, notes,
                     list(fg.pools.values()) + list(fg.uncounted_pools.values()), rates_source)
        unpooled = sorted({p for c in mac_layers if _input_mode(c, True) == "spikes"
                           for p in c.source_pools.values() if p not in rates})
        if unpooled:
            notes.append(
                f"the rates have no output rate of the spiking max pool(s) {', '.join(unpooled)} "
                "(measured on a model converted before onnx-snn counted them, or by a deploy "
                "graph without --spike-counts): the layers after them are charged at the rate "
                "of the site before the pool, which undercounts them (a pooled output fires as "
                "often as the busiest input of its window); convert the model again and measure "
                "its rates with `onnx-snn eval MODEL --json FILE`")
        spiking_layers = [c for c in mac_layers if _input_mode(c, True) == "spikes"]
        parts = [c.name for c in spiking_layers if c.estimated.get("part")]
        if parts:
            notes.append(
                f"layer(s) {', '.join(parts[:5])}{' and more' if len(parts) > 5 else ''} read part "
                "of a site's output (a Slice, Split or Gather): charged at the whole site's mean "
                "spike rate, which over- or undercounts them where that part fires more or less "
                "than the rest")
        late = sorted({p for c in spiking_layers for p in c.estimated.get("pools", [])})
        if late:
            notes.append(
                f"the spiking max pool(s) {', '.join(late)} pool a sum of spike trains (or an "
                "average pool's fractions), whose output spikes the model does not count: the "
                "layers after them are charged at the rates of the sites before them, an "
                "estimate that can be off either way")
        if any(_input_mode(c, True) == "analog" for c in mac_layers):
            notes.append("some MAC layers are fed by no spiking site (analog input inside the time "
                         "loop): counted as MACs every time step")

    layers: List[LayerRow] = []
    for c in mac_layers:
        mode = _input_mode(c, spiking)
        row = LayerRow(name=c.name, op=c.op, neurons=c.neurons, source_site=c.source_site,
                       input_mode=mode, dnn_flops=c.macs, dnn_energy_pj=c.macs * mac_pj,
                       source_mix=dict(c.source_mix) if mode == "spikes" else {},
                       source_pools=dict(c.source_pools) if mode == "spikes" else {})
        if use_snn:
            own = layer_rates(row, rates)
            r = own[c.source_site] if mode == "spikes" else None
            if r is not None and row.source_mix:   # spikes per input neuron, over all sources
                spiking = {k: w for k, w in row.source_mix.items() if k}
                # over the spiking elements (a concatenation's shares sum to 1 or less); a sum
                # of spike trains brings every element each source's spikes (shares above 1)
                r = sum(w * own[k] for k, w in spiking.items()) / min(1.0, sum(spiking.values()))
            row.spike_rate = r
            row.snn_flops, row.snn_macs, row.snn_acs, row.snn_energy_pj = \
                layer_energy(c, mode, r, T, mac_pj, ac_pj, own)
        layers.append(row)
    other = [OtherRow(c.name, c.op, c.ops, c.neurons, c.source_site) for c in counts
             if c.kind == "other"]

    dnn_flops = sum(l.dnn_flops for l in layers)
    dnn_source = "model"
    if dnn_model is not None:
        dnn_flops, msg = _dnn_reference(m, fg, dnn_model, input_shapes, dnn_flops, name)
        dnn_source = "dnn model"
        if msg:
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
    totals = Totals(dnn_flops=dnn_flops, dnn_energy_pj=dnn_flops * mac_pj,
                    other_ops=sum(o.ops for o in other))
    neuromorphic = {}
    if use_snn:
        totals.snn_flops = sum(l.snn_flops for l in layers)
        totals.snn_macs = sum(l.snn_macs for l in layers)
        totals.snn_acs = sum(l.snn_acs for l in layers)
        totals.snn_energy_pj = sum(l.snn_energy_pj for l in layers)
        totals.flops_ratio = _ratio(totals.dnn_flops, totals.snn_flops)
        totals.energy_ratio = _ratio(totals.dnn_energy_pj, totals.snn_energy_pj)
        neuromorphic = neuromorphic_estimate(totals.snn_flops, totals.dnn_flops, T)

    sites = _site_rows(fg, info, layers, counts, rates if use_snn else None, T, float(ac_pj))
    return Analysis(model=name, kind="snn" if use_snn else "dnn", timesteps=T if spiking else None,
                    mac_pj=float(mac_pj), ac_pj=float(ac_pj), layers=layers, sites=sites,
                    other=other, totals=totals, neuromorphic=neuromorphic, dnn_source=dnn_source,
                    notes=notes)


def _dnn_reference(m: onnx.ModelProto, fg, dnn_model, input_shapes, macs: int, name: str
                   ) -> Tuple[int, Optional[str]]:
    """The MACs per sample of ``dnn_model``, the DNN that the model ``m`` (flattened: ``fg``;
    ``macs`` MACs per sample in its layers; named ``name``) is compared with, and a note where
    the two counts differ; an UnsupportedModelError for a spiking model (exit 4, as convert
    refuses one), a UsageError for another network than the source a spiking ``m`` records."""
    from ..errors import UnsupportedModelError, UsageError
    dnn = _load(dnn_model)
    if fmt.is_spiking(dnn):
        raise UnsupportedModelError(f"{dnn_model if not isinstance(dnn_model, onnx.ModelProto) else 'dnn_model'}"
                         ": a spiking model, not the DNN it was converted from; pass the "
                         "original DNN (.onnx) as the DNN to compare with")
    ref = [c for c in count_flat(flatten(dnn, input_shapes or _shapes_for(dnn, fg.model)))
           if c.kind == "mac"]
    ref_macs = sum(c.macs for c in ref)
    if ref_macs == macs:
        return ref_macs, None
    source = fmt.metadata(m).get(fmt.META_SOURCE) if fg.spiking or fg.sites else None
    if source and not isinstance(dnn_model, onnx.ModelProto):
        from ..model_io import sha256_file
        if sha256_file(dnn_model) != source:   # another network: its ratios mean nothing
            raise UsageError(
                f"{dnn_model}: not the DNN {name} was converted from (its sha256 is not the "
                f"recorded source's, and it has {ref_macs} MACs per sample where the "
                f"spiking model's layers have {macs}); pass that DNN, or leave --dnn out")
    return ref_macs, (f"the DNN model has {ref_macs} MACs per sample but the analyzed graph "
                      f"has {macs}; the DNN totals and ratios use the DNN model's count")


def check_dnn(model, dnn_model, where: Optional[str] = None) -> None:
    """What :func:`analyze` refuses of ``dnn_model`` as ``model``'s DNN, checked alone: before
    a run on data records the rates that analysis reads."""
    m = _load(model)
    fg = flatten(m)
    macs = sum(c.macs for c in count_flat(fg) if c.kind == "mac")
    _dnn_reference(m, fg, dnn_model, None, macs, where or str(model))


def layer_rates(row, rates: Mapping[str, float]) -> Dict[str, float]:
    """The rate each source of a layer (a :class:`LayerRow` or LayerCount) arrives at:
    the site's own, or, for a site whose spikes pass a spiking max pool on the way, the
    pool's output rate when ``rates`` has it."""
    out = dict(rates)
    out.update({s: rates[p] for s, p in row.source_pools.items() if p in rates})
    return out


def _site_rows(fg, info, layers: List[LayerRow], counts: List[LayerCount],
               rates: Optional[Mapping[str, float]], T: Optional[int],
               ac_pj: float) -> List[SiteRow]:
    recorded = {s.name: s.neurons for s in info.sites} if info else {}
    by_output = {v: k for k, v in fg.sites.items()}  # site -> y tensor (for the neuron count)
    rows = []
    for s in dict.fromkeys(fg.sites.values()):
        fed = [l for l in layers if l.input_mode == "spikes" and
               (s in l.source_mix if l.source_mix else l.source_site == s)]
        neurons = recorded.get(s)
        if neurons is None:
            neurons = next((c.neurons for c in counts if c.input == by_output[s]), 0)
        r = rates.get(s) if rates is not None else None

        def share(l: LayerRow, what: str) -> float:
            """The part of a layer's SNN cost this site's spikes cause (its ACs)."""
            if not l.source_mix:
                return getattr(l, what)
            acs = l.dnn_flops * l.source_mix[s] * layer_rates(l, rates)[s]
            pool = l.source_pools.get(s)
            if pool is not None and pool in rates:
                # sites pooled together (a Concat, then a max pool): the pool's ACs split by
                # each one's own spikes (a silent site's channels pool to silence), not equally
                group = [k for k, p in l.source_pools.items() if p == pool]
                total = l.dnn_flops * rates[pool] * sum(l.source_mix[k] for k in group)
                own = {k: l.source_mix[k] * rates.get(k, 0.0) for k in group}
                weights = own if sum(own.values()) > 0 else {k: l.source_mix[k] for k in group}
                acs = total * weights[s] / sum(weights.values())
            return acs if what == "snn_flops" else acs * ac_pj
        rows.append(SiteRow(
            name=s, neurons=int(neurons), spikes_per_neuron=r,
            rate=(r / T if r is not None and T else None), layers=[l.name for l in fed],
            snn_flops=sum(share(l, "snn_flops") for l in fed) if rates is not None else None,
            snn_energy_pj=sum(share(l, "snn_energy_pj") for l in fed) if rates is not None else None))
    return rows
