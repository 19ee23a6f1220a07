"""Sequential, spiking-aware refinement of the datta parameters (opt-in: ``--sequential``).

Algorithm 1 chooses each site's (alpha, beta) on the DNN's own pre-activations, as if every
neuron received a constant input. In the spiking network it does not: the site's input is
built from the spikes of the sites before it, which arrive at different steps and carry those
sites' quantization error. At T = 1-4 the two differ enough to matter.

This pass goes through the sites in graph order. For site ``l`` it runs the step graph (sites
before ``l`` already refined) over the calibration images for T steps and records, on a fixed
random sample of neurons, the input current of every step; the target is the DNN's activation
``clip(h, 0, mu)`` of the same neuron on the same image. ``scales.search_dynamic`` then picks
alpha, beta and the initial membrane (a fraction of the threshold) by simulating the neuron
exactly on those currents. Cost: one T-step pass of the spiking network over the calibration
set per site.
"""
from __future__ import annotations

import copy
import time
from typing import Dict, List, Optional

import numpy as np
import onnx

from .calibrate import calibration_feeds, make_session, with_outputs
from .errors import DataError
from .graph.normalize import NormalizedModel
from .progress import Progress
from .scales import SearchConfig, search_dynamic
from .graph import walk
from .spiking import format as fmt
from .spiking import rewrite


def _upstream(view: fmt.SpikingView, target: str) -> onnx.ModelProto:
    """The part of the step graph that computes ``target``: its nodes, the states they read,
    and those states' next values as outputs (later layers are not run)."""
    step = view.model
    g = step.graph
    keep = walk.prune(list(g.node), [target])
    needed = walk.needed_tensors(keep, [target])
    made = {o for n in keep for o in n.output}
    outputs = [target] + [st.names.next for st in view.states
                          if st.names.input in needed and st.names.next in made]
    graph = onnx.helper.make_graph(keep, g.name, [i for i in g.input if i.name in needed], [],
                                   [t for t in g.initializer if t.name in needed])
    for name in outputs:
        graph.output.add().name = name
    m = onnx.helper.make_model(graph, opset_imports=list(step.opset_import))
    m.ir_version = step.ir_version
    m.functions.extend(step.functions)
    return m


def _positions(rng: np.random.Generator, per_sample: int, n_total: int, sizes: List[int],
               sample: int) -> List[np.ndarray]:
    """For every batch, the flat positions sampled from it (in proportion to its size)."""
    total = per_sample * n_total
    out, taken, seen = [], 0, 0
    for nb in sizes:
        m = nb * per_sample
        seen += m
        want = min(m, int(min(sample, total) * seen // total) - taken)
        out.append(np.sort(rng.choice(m, want, replace=False)) if want > 0 else np.zeros(0, np.int64))
        taken += max(want, 0)
    return out


def refine(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord], x, timesteps: int,
           config: Optional[SearchConfig] = None, input_shapes=None, batch_size: int = 64,
           seed: int = 0, show_progress: bool = True, threads: Optional[int] = None,
           pools=None) -> tuple:
    """Return (refined records, report rows). ``records`` are the datta ones to start from;
    ``x`` the calibration inputs (an array or {input name: array})."""
    cfg = config or SearchConfig()
    t0 = time.perf_counter()
    feeds, n_total, batch_size = calibration_feeds(nm, x, batch_size)
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
    bar = Progress(n_total * (1 + timesteps * len(names)), desc="sequential refinement",
                   unit="img-step", enabled=None if show_progress else False)

    # targets: the DNN's activations at the sampled positions
    dnn = with_outputs(nm.model, [recs[s].input for s in names])
    sess = make_session(dnn, threads, where="the DNN")
    targets = {s: [] for s in names}
    for b, start in enumerate(starts):
        feed = {k: v[start:start + sizes[b]] for k, v in feeds.items()}
        outs = dict(zip([o.name for o in dnn.graph.output], sess.run(None, feed)))
        for s in names:
            h = outs[recs[s].input].reshape(-1)[positions[s][b]]
            targets[s].append(np.clip(h.astype(np.float64), 0.0, recs[s].mu))
        bar.update(sizes[b])
    targets = {s: np.concatenate(v) for s, v in targets.items()}

    rows = []
    for s in names:
        rec = recs[s]
        meta = rewrite.base_metadata(nm, recs, timesteps, "datta", [])
        view = fmt.read_spiking(rewrite.step_model(nm, recs, meta, input_shapes, pools),
                                "the step graph")
        step = _upstream(view, rec.input)
        sess = make_session(step, threads, where=f"the step graph (site {s})")
        out_names = [o.name for o in step.graph.output]
        fed = {i.name for i in step.graph.input}
        upstream = [st for st in view.states if st.names.input in fed]
        currents = []
        for b, start in enumerate(starts):
            nb = sizes[b]
            feed = {k: v[start:start + nb] for k, v in feeds.items() if k in fed}
            state = {st.names.input: fmt.initial_state(view, st, nb) for st in upstream}
            steps = []
            for _ in range(timesteps):
                res = dict(zip(out_names, sess.run(out_names, {**feed, **state})))
                steps.append(res[rec.input].reshape(-1)[positions[s][b]])
                state = {st.names.input: res[st.names.next] for st in upstream}
                bar.update(nb)
            currents.append(np.stack(steps))
        cur = np.concatenate(currents, axis=1)
        alpha, beta, frac, value = search_dynamic(cur, targets[s], rec.mu, timesteps, cfg,
                                                  start=(rec.alpha, rec.beta))
        rows.append({"site": s, "alpha_datta": rec.alpha, "beta_datta": rec.beta,
                     "alpha": alpha, "beta": beta, "v_init_fraction": frac,
                     "objective_value": value, "pairs": int(cur.shape[1])})
        rec.alpha, rec.beta = alpha, beta
        rec.v_init, rec.objective_value = frac * rec.threshold, value
    bar.close()
    return recs, {"seconds": time.perf_counter() - t0, "sites": rows}
