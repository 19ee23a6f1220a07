"""Render an :class:`~onnx_snn.analyze.energy.Analysis`: terminal table, JSON, and a PNG plot.

The plot follows the paper's Fig. 4: the spike rate each MAC layer receives (spikes per
input neuron over the T steps; the direct-encoded layer receives the analog input and has
none), and the compute energy per layer, DNN beside SNN, on a log scale.
matplotlib is imported only by :func:`plot` (``pip install 'onnx-snn[plot]'``).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..errors import DataError, MissingDependencyError, UsageError
from ..flags import checks_flags
from ..model_io import check_output_path, write_bytes_atomic
from .energy import Analysis

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def human(x: Optional[float]) -> str:
    """3 significant digits with K/M/G/T suffixes: 313196544 -> '313M', 40551040 -> '40.6M'."""
    if x is None:
        return "-"
    ax = abs(float(x))
    for scale, p in _PREFIXES:
        if ax >= scale * 0.9995:
            return f"{x / scale:.3g}{p}"
    if ax == 0:
        return "0"
    return f"{x:.3g}"


def human_energy(pj: Optional[float]) -> str:
    """Energy from picojoules to the most readable unit: 1.44e9 pJ -> '1.44 mJ'."""
    if pj is None:
        return "-"
    j = float(pj) * 1e-12
    for scale, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ"), (1e-9, "nJ")):
        if abs(j) >= scale * 0.9995:
            return f"{j / scale:.3g} {unit}"
    return f"{float(pj):.3g} pJ" if pj else "0 pJ"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool],
          rule_before_last: bool = False) -> List[str]:
    from ..table import format_table
    return format_table(headers, rows, right=right, total_row=rule_before_last).split("\n")


def _fmt_rate(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.4f}"


def _ratio(x: Optional[float]) -> str:
    return "n/a (the SNN does no work)" if x is None else f"{x:.2f}x"


@checks_flags
def format_table(analysis: Analysis, other_ops: bool = False, notes: bool = True) -> str:
    """The per-layer table with a totals row, then the DNN/SNN ratios and notes.

    Columns: layer, op, neurons (outputs per sample), input (source site, "site>pool" for
    spikes that pass a spiking max pool, "direct" or "analog"), spikes/input (r_{l-1}: the spikes each input element receives over the T steps; after an average pool, its window's spikes summed, so above T there: a note says so), DNN FLOPs (MACs), SNN FLOPs (MACs
    + ACs), DNN and SNN energy. A DNN analysis has only the DNN columns. ``other_ops`` lists
    pooling and additions one by one (they are otherwise summed on one line).
    """
    a = analysis
    t = a.totals
    snn = a.has_snn
    rows = []
    for l in a.layers:
        def named(k):     # a site's spikes after a spiking max pool: "lif1>pool0"
            return f"{k}>{l.source_pools[k]}" if k in l.source_pools else (k or "analog")
        src = (("+".join(named(k) for k in l.source_mix) if l.source_mix else named(l.source_site))
               if l.input_mode == "spikes" else l.input_mode)
        r = [l.name, l.op, human(l.neurons)]
        if snn:
            r += [src, _fmt_rate(l.spike_rate), human(l.dnn_flops), human(l.snn_flops),
                  human_energy(l.dnn_energy_pj), human_energy(l.snn_energy_pj)]
        else:
            r += [human(l.dnn_flops), human_energy(l.dnn_energy_pj)]
        rows.append(r)
    total = ["total", "", human(sum(l.neurons for l in a.layers))]
    if snn:
        total += ["", "", human(t.dnn_flops), human(t.snn_flops), human_energy(t.dnn_energy_pj),
                  human_energy(t.snn_energy_pj)]
        headers = ["layer", "op", "neurons", "input", "spikes/input", "DNN FLOPs", "SNN FLOPs",
                   "DNN energy", "SNN energy"]
        right = [False, False, True, False, True, True, True, True, True]
    else:
        total += [human(t.dnn_flops), human_energy(t.dnn_energy_pj)]
        headers = ["layer", "op", "neurons", "DNN FLOPs", "DNN energy"]
        right = [False, False, True, True, True]
    rows.append(total)
    kind = f"SNN, T={a.timesteps}" if snn else ("spiking model, no rates" if a.timesteps else "DNN")
    lines = [f"{a.model} ({kind}); per sample; MAC {a.mac_pj:g} pJ, AC {a.ac_pj:g} pJ"]
    lines += _grid(headers, rows, right, rule_before_last=True)
    if a.dnn_source != "model":
        same = t.dnn_flops == sum(l.dnn_flops for l in a.layers)
        lines.append(f"DNN totals from the DNN model: {human(t.dnn_flops)} MACs "
                     + ("(equal to the analyzed graph's)" if same else "(differ from the rows above)"))
    if snn:
        lines.append(f"DNN/SNN: FLOPs {_ratio(t.flops_ratio)}, compute energy {_ratio(t.energy_ratio)} "
                     f"(SNN: {human(t.snn_macs)} MACs + {human(t.snn_acs)} ACs)")
        for name, e in a.neuromorphic.items():
            lines.append(f"neuromorphic {name} (E_compute {e['e_compute']:g}, E_static "
                         f"{e['e_static']:g}): DNN {e['dnn']:.3g}, SNN {e['snn']:.3g}, "
                         f"DNN/SNN {_ratio(e['ratio'])}")
    if a.other:
        by_op = {}
        for o in a.other:
            by_op[o.op] = by_op.get(o.op, 0) + o.ops
        lines.append("not in the energy: " + ", ".join(f"{op} {human(n)} ops" for op, n in by_op.items()))
        if other_ops:
            lines += _grid(["op layer", "op", "neurons", "ops"],
                           [[o.name, o.op, human(o.neurons), human(o.ops)] for o in a.other],
                           [False, False, True, True])
    lines += [f"note: {n}" for n in a.notes] if notes else []
    summed = [l for l in a.layers if snn and l.spike_rate is not None and a.timesteps
              and l.spike_rate > a.timesteps]
    if summed and notes:
        lines.append(f"note: spikes/input is what each input element of a layer receives over "
                     f"the {a.timesteps} steps; after an average or global pool it sums the "
                     f"pool window's spikes, so it exceeds T on "
                     + ", ".join(f"{l.name} ({_fmt_rate(l.spike_rate)})" for l in summed[:3])
                     + (f" and {len(summed) - 3} more" if len(summed) > 3 else "")
                     + ": not a firing rate (eval gives each site's spikes per neuron)")
    return "\n".join(lines)


def to_json(analysis: Analysis) -> str:
    return analysis.to_json()


#: the figure formats a plot's file name may ask for (by its suffix; none: PNG)
PLOT_FORMATS = ("png", "svg", "pdf")


def plot_format(path: Union[str, Path]) -> str:
    """The format a plot's path asks for: its suffix, one of PLOT_FORMATS (no suffix: png);
    another suffix is a UsageError, raised before any work."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"{path}: a plot is written as {', '.join('.' + f for f in PLOT_FORMATS)}; "
                         f"not .{suffix}")
    return suffix


def plot(analysis: Analysis, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """Write the figure: per-layer input spike rate (bars) and compute energy, DNN beside SNN
    (log), as PNG, SVG or PDF by the path's suffix (:func:`plot_format`).

    A DNN analysis gets the energy panel only. The path is checked before the figure is drawn
    (a folder, device or missing folder raises OutputPathError) and the file is written
    atomically.
    """
    fmt = plot_format(path)
    path = check_output_path(path)
    write_bytes_atomic(plot_png(analysis, title, fmt), path)
    return path


def plot_png(analysis: Analysis, title: Optional[str] = None, fmt: str = "png") -> bytes:
    """The figure of :func:`plot` as PNG bytes (or ``fmt``: svg, pdf; the CLI writes it with
    its other outputs)."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'onnx-snn[plot]'") from None
    del matplotlib
    import numpy as np

    a = analysis
    if not a.layers:
        raise DataError(f"{a.model}: nothing to plot, the model has no MAC layers")
    names = [l.name for l in a.layers]
    x = np.arange(len(names))
    n_panels = 2 if a.has_snn else 1
    fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 2.0), 3.2 * n_panels + 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    if a.has_snn:
        ax = axes[0]
        rates = [l.spike_rate or 0.0 for l in a.layers]
        bars = ax.bar(x, rates, color="tab:orange")
        for i, l in enumerate(a.layers):
            if l.input_mode != "spikes":
                bars[i].set_hatch("//")
                ax.text(i, 0, l.input_mode, rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("spikes per input element\n(over T=%d steps)" % a.timesteps)
        ax.set_title("Spike rate received by each layer")
    ax = axes[-1]
    w = 0.4 if a.has_snn else 0.8
    dnn = [l.dnn_energy_pj for l in a.layers]
    ax.bar(x - (w / 2 if a.has_snn else 0), dnn, w, label="DNN (MAC)", color="tab:blue")
    if a.has_snn:
        ax.bar(x + w / 2, [l.snn_energy_pj for l in a.layers], w, label="SNN", color="tab:green")
    ax.set_yscale("log")
    ax.set_ylabel("compute energy per sample (pJ)")
    ax.set_title(f"Compute energy per layer (MAC {a.mac_pj:g} pJ, AC {a.ac_pj:g} pJ)")
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if title or a.model:
        fig.suptitle(title or a.model, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    return buf.getvalue()
