"""The onnxruntime runtime: run a DNN or a spiking model and collect spike counts.

A spiking model in the single-call form runs in one ``session.run`` per batch (its Loop
does the T steps; ``timesteps`` overrides the default). A step-graph model is driven here,
step by step, with the membrane states fed back. Both return the time-averaged outputs
and the per-site spike totals over the T steps (shape ``[N]`` each).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx

from onnx_snn.calibrate import AUTO_PAD_REFUSALS, make_session

from onnx_snn.errors import (DataError, UnsupportedModelError, UsageError, first_line,
                             is_onnxruntime_error)
from onnx_snn.feeds import check_data_inputs, fixed_batch, input_specs, pad_batch, validate_feeds
from onnx_snn.model_io import load_model
from onnx_snn.spiking import format as fmt


@dataclass
class StepResult:
    outputs: List[np.ndarray]          # time-averaged DNN outputs, in graph order
    #: site (or counted spiking pool) -> spikes per sample over all T steps, [N]
    spikes: Dict[str, np.ndarray]
    step_outputs: Optional[List[np.ndarray]] = None   # per_step runners: [T, N, ...] each
    step_spikes: Optional[Dict[str, np.ndarray]] = None  # per_step runners: site -> [T, N]


def _as_feed(v: np.ndarray, dtype, name: str) -> np.ndarray:
    """A batch in its input's type; for a uint8 input, raw pixel values 0-255 (rounded: a
    named dataset's [0, 1] images times 255 are whole up to float rounding)."""
    if np.dtype(dtype) != np.uint8 or v.dtype == np.uint8:
        return v.astype(dtype, copy=False)
    r = np.rint(v)
    if r.size and (r.min() < 0 or r.max() > 255 or np.abs(v - r).max() > 1e-3):
        raise DataError(f"input '{name}' takes raw uint8 pixels (whole numbers 0-255); the data "
                        f"holds values in [{float(v.min()):g}, {float(v.max()):g}]: feed raw "
                        "pixels (a named dataset is fed so)")
    return r.astype(np.uint8)


def run_failure(e: Exception, where: str, feeds: Dict[str, np.ndarray]) -> Exception:
    """onnxruntime's failure while running a model, as a one-line UnsupportedModelError (the
    exception itself when it is not onnxruntime's). A failure on a batch of several samples
    says what it usually is: a graph that runs one sample at a time."""
    if not is_onnxruntime_error(e):
        return e
    msg = first_line(e)
    n = len(next(iter(feeds.values()))) if feeds else 0
    shapes = any(k in msg for k in ("Reshape", "reshape", "shape", "dimension", "Dimension"))
    hint = (" The model may run only one sample at a time (a Reshape to a batch of 1, as "
            "x.view(1, -1) exports): pass --batch-size 1, or re-export it with x.flatten(1)"
            if n > 1 and shapes else "")
    return UnsupportedModelError(f"{where}: onnxruntime failed running the model on a batch of "
                                 f"{n}: {msg[:300]}.{hint}")


class ModelRunner:
    """Runs any ONNX model the tool handles: a DNN, a spiking loop model, a step model or a
    deploy graph (its fixed T only; spike totals where it kept them)."""

    def __init__(self, model: Union[str, onnx.ModelProto], threads: Optional[int] = None,
                 providers=None, per_step: bool = False, spin: bool = True,
                 where: Optional[str] = None, expose: Sequence[str] = ()):
        """``where``: the model's name in messages (default: its path, else "model").
        ``expose``: tensors inside a DNN to return after its outputs (a teacher's scores
        before an output head).
        ``per_step``: also return every step's outputs and spike counts, so one run at T
        gives the results of every shorter run (for models whose parameters do not depend
        on T, and for studying a model beyond its T). ``spin``: see
        :func:`onnx_snn.calibrate.make_session`."""
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        self.path = model if isinstance(model, str) else None
        self.model = load_model(model) if isinstance(model, str) else model
        where = self.where = where or self.path or "model"
        self.spiking = fmt.is_spiking(self.model)
        info = fmt.read_info(self.model, where) if self.spiking else None
        self.deploy = self.spiking and info.graph == fmt.GRAPH_DEPLOY
        if self.deploy and per_step:
            raise UsageError(f"{where}: a deploy graph runs its fixed T={info.timesteps} only; "
                            "to study other T, evaluate the spiking model it was made from")
        self.view = fmt.read_spiking(self.model, where) if self.spiking and not self.deploy else None
        self.info = info
        #: the T it has been run at, each warned about once when its parameters were fitted
        #: for another (:func:`onnx_snn.convert.warn_other_timesteps`)
        self.warned_timesteps: set = set()
        self.per_step = per_step and self.spiking
        per_step_outputs = self.view.per_step_names() \
            if self.per_step and self.info.graph == fmt.GRAPH_LOOP else ()
        expose = [] if self.spiking else [e for e in expose
                                          if e not in {o.name for o in self.model.graph.output}]
        check_data_inputs(self.model, where)
        self._session_args = dict(threads=threads, providers=providers, where=where,
                                  outputs=tuple(per_step_outputs) + tuple(expose), spin=spin)
        self.session = make_session(self.model, **self._session_args)
        self.pinned = False     # (see _pin_to)
        skip = (fmt.TIMESTEPS_INPUT,) + tuple(self.view.state_inputs) if self.view else ()
        taken = {i.name for i in self.session.get_inputs()}    # an unread input is not one
        self.specs = [sp for sp in input_specs(self.model, skip=skip) if sp[0] in taken]
        self.feed_types = _feed_types(self.session, [n for n, _ in self.specs], where)
        self.fixed_batch = fixed_batch(self.specs)
        graph_outputs = [o.name for o in self.model.graph.output]
        if self.deploy:   # spike totals only where the deploy graph kept its counters
            spikes = {fmt.spikes_name(s): s for s in
                      [s.name for s in info.sites] + [p.name for p in info.pools]}
            self.deploy_spikes = {spikes[o]: o for o in graph_outputs if o in spikes}
            self.output_names = [o for o in graph_outputs if o not in spikes]
        else:
            self.output_names = self.view.outputs if self.spiking else graph_outputs + expose

    @property
    def is_step_graph(self) -> bool:
        return self.spiking and self.info.graph == fmt.GRAPH_STEP

    def validate(self, x, what="data") -> Dict[str, np.ndarray]:
        return validate_feeds(self.specs, x, what)

    def check_timesteps(self, timesteps: Optional[int] = None) -> int:
        """The T a spiking model will run (default: its own), refused before any work when
        it is out of range or a deploy graph's fixed T is not it."""
        T = int(timesteps or self.info.timesteps)
        from onnx_snn.convert import MAX_TIMESTEPS
        if not 1 <= T <= MAX_TIMESTEPS:
            raise DataError(f"timesteps must be between 1 and {MAX_TIMESTEPS} (got {T})")
        if self.deploy and T != self.info.timesteps:
            raise UsageError(f"{self.where}: a deploy graph runs T={self.info.timesteps} "
                             f"only (asked for T={T}); make one for T={T} with "
                             f"`onnx-snn deploy -T {T}` from the spiking model")
        return T

    def run(self, feeds: Dict[str, np.ndarray], timesteps: Optional[int] = None) -> StepResult:
        """One batch (already validated feeds)."""
        feeds = {k: _as_feed(v, self.feed_types.get(k, v.dtype), k) for k, v in feeds.items()}
        if not self.spiking:
            while True:     # (once more after a pin: _pin_to pins once)
                try:
                    return StepResult(self.session.run(self.output_names, feeds), {})
                except Exception as e:
                    if not self._pin_to(e, feeds):
                        raise run_failure(e, self.where, feeds) from None
        T = self.check_timesteps(timesteps)
        from onnx_snn.convert import warn_other_timesteps_once
        warn_other_timesteps_once(self.info, T, self.where, self.warned_timesteps)
        if self.is_step_graph:
            return self._run_steps(feeds, T)
        if self.deploy:
            names = list(self.deploy_spikes.values())
            outs = self.session.run(self.output_names + names, feeds)
            k = len(self.output_names)
            return StepResult(outs[:k], dict(zip(self.deploy_spikes, outs[k:])))
        sites = self.view.counted          # sites, then the counted spiking pools
        spike_names = [fmt.spikes_name(s) for s in sites]
        extra, timed = [], []
        if self.per_step:
            timed = self.view.timed_outputs
            extra = [fmt.steps_output_name(o) for o in timed] + \
                [fmt.steps_spikes_name(s) for s in sites]
        outs = self.session.run(self.output_names + spike_names + extra,
                                {**feeds, fmt.TIMESTEPS_INPUT: np.array(T, np.int64)})
        k, ns = len(self.output_names), len(sites)
        result = StepResult(outs[:k], dict(zip(sites, outs[k:k + ns])))
        if self.per_step:
            steps = dict(zip(timed, outs[k + ns:k + ns + len(timed)]))
            # a time-invariant output is the same at every step
            result.step_outputs = [steps[o] if o in steps else np.repeat(v[None], T, axis=0)
                                   for o, v in zip(self.output_names, outs[:k])]
            result.step_spikes = dict(zip(sites, outs[k + ns + len(timed):]))
        return result

    def _pin_to(self, e: Exception, feeds: Dict[str, np.ndarray]) -> bool:
        """Where onnxruntime refused to run a DNN's auto_pad SAME_* form on an input whose size
        the model leaves free (``AUTO_PAD_REFUSALS``: a dilated Conv, a pool whose stride is
        longer than its window), pin its free dimensions to the batch's, as convert does, and
        open the session again, whose padding is then written out (True); else False. Later
        batches must have that size."""
        if self.pinned or not is_onnxruntime_error(e) or \
                not any(m in str(e) for m in AUTO_PAD_REFUSALS):
            return False
        from onnx_snn.convert import pin_inputs
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        notes = pin_inputs(model, {k: tuple(v.shape[1:]) for k, v in feeds.items()})
        if not notes:
            return False
        import logging
        logging.getLogger("onnx_snn").warning(
            "%s: onnxruntime cannot run its auto_pad SAME form on a free input size: "
            "run at the data's size (%s)", self.where,
            ", ".join(f"{k} {list(v.shape[1:])}" for k, v in feeds.items()))
        self.model, self.pinned = model, True
        self.session = make_session(model, **self._session_args)
        return True

    def run_padded(self, feeds: Dict[str, np.ndarray], timesteps: Optional[int] = None) -> StepResult:
        """``run``, padding a short last batch with zeros for models with a fixed batch size
        (the padding's results are dropped)."""
        n = next(iter(feeds.values())).shape[0]
        fb = self.fixed_batch
        if not fb or n == fb:
            return self.run(feeds, timesteps)
        if n > fb:
            raise DataError(f"the model takes batches of exactly {fb}; got {n}")
        padded = {k: pad_batch(v, fb) for k, v in feeds.items()}
        r = self.run(padded, timesteps)
        cut = StepResult([o[:n] for o in r.outputs], {k: v[:n] for k, v in r.spikes.items()})
        if r.step_outputs is not None:
            cut.step_outputs = [o[:, :n] for o in r.step_outputs]
            cut.step_spikes = {k: v[:, :n] for k, v in r.step_spikes.items()}
        return cut

    def _run_steps(self, feeds, T: int) -> StepResult:
        n = next(iter(feeds.values())).shape[0]
        sites = self.view.counted
        states = {st.names.input: fmt.initial_state(self.view, st, n) for st in self.view.states}
        want = self.output_names + [st.names.next for st in self.view.states] + \
            [self.view.step_spikes[s] for s in sites]
        acc = None
        spikes = {s: np.zeros(n, np.float32) for s in sites}
        k, ns = len(self.output_names), len(self.view.states)
        steps_o, steps_s = [], {s: [] for s in sites}
        for _ in range(T):
            outs = self.session.run(want, {**feeds, **states})
            acc = outs[:k] if acc is None else [a + o for a, o in zip(acc, outs[:k])]
            steps_o.append(outs[:k])
            for i, st in enumerate(self.view.states):
                states[st.names.input] = outs[k + i]
            for i, s in enumerate(sites):
                spikes[s] += outs[k + ns + i]
                steps_s[s].append(outs[k + ns + i])
        result = StepResult([a / np.float32(T) for a in acc], spikes)
        if self.per_step:
            result.step_outputs = [np.stack(o) for o in zip(*steps_o)]
            result.step_spikes = {k2: np.stack(v) for k2, v in steps_s.items()}
        return result


#: the input element types data is fed as (validated as float32 first; uint8: raw pixels)
_FEED_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(double)": np.float64, "tensor(uint8)": np.uint8}


def _feed_types(session, names, where: str) -> dict:
    """Each data input's numpy type: a float16, float64 or uint8 (raw pixels, see
    :func:`_as_feed`) input gets its data in that type; any other type is refused before a
    batch runs."""
    types = {i.name: i.type for i in session.get_inputs()}
    out = {}
    for name in names:
        t = types.get(name, "tensor(float)")
        if t not in _FEED_TYPES:
            raise UnsupportedModelError(
                f"{where}: input '{name}' takes {t}; onnx-snn feeds data as floats (float32, "
                "float16 or float64 inputs) or raw uint8 pixels. Re-export the model with a "
                "float input (a Cast inside the graph can convert it)")
        out[name] = _FEED_TYPES[t]
    return out


def run(model: Union[str, onnx.ModelProto], x, timesteps: Optional[int] = None,
        batch_size: Optional[int] = None) -> StepResult:
    """Run ``model`` on all of ``x`` in batches (default: as ``evaluate`` picks them, sized
    by the model's memory); return averaged outputs and spike totals."""
    from onnx_snn.evaluate import eval_batch
    runner = ModelRunner(model)
    feeds = runner.validate(x)
    n = next(iter(feeds.values())).shape[0]
    batch_size = runner.fixed_batch or eval_batch(batch_size, runner.info)
    outs: List[List[np.ndarray]] = []
    spikes: Dict[str, List[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        r = runner.run_padded({k: v[start:start + batch_size] for k, v in feeds.items()}, timesteps)
        outs.append(r.outputs)
        for k, v in r.spikes.items():
            spikes.setdefault(k, []).append(v)
    return StepResult([np.concatenate(o) for o in zip(*outs)],
                      {k: np.concatenate(v) for k, v in spikes.items()})
