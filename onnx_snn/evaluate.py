"""Top-1 accuracy and spike statistics of a DNN or a spiking model, run in onnxruntime."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Union

import numpy as np
import onnx

from .datasets import Dataset
from .errors import DataError
from .progress import Progress


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

    @property
    def mean_rate(self) -> Optional[float]:
        """Spikes per neuron per step, averaged over all neurons of all sites."""
        if not self.sites:
            return None
        total = sum(s.spikes_per_sample for s in self.sites.values())
        neurons = sum(s.neurons for s in self.sites.values())
        return total / (neurons * self.timesteps) if neurons and self.timesteps else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean_rate"] = self.mean_rate
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def evaluate(model: Union[str, onnx.ModelProto], data, timesteps: Optional[int] = None,
             batch_size: int = 256, limit: Optional[int] = None, mean=None, std=None,
             data_dir=None, show_progress: bool = True, threads: Optional[int] = None) -> EvalResult:
    """Top-1 of ``model`` on ``data`` (a dataset name, array file, Dataset, or (x, y) tuple).

    For spiking models, also the spikes per neuron of every site (``timesteps`` overrides the
    model's T). Named datasets get the model's recorded preprocessing (or ``mean``/``std``).
    """
    from .convert import resolve_data
    from .runtimes.ort import ModelRunner

    runner = ModelRunner(model if isinstance(model, onnx.ModelProto) else str(model), threads)
    name = model if isinstance(model, str) else (runner.model.graph.name or "model")
    preprocess = runner.info.preprocess if runner.spiking else _dnn_preprocess(runner.model)
    if isinstance(data, tuple):
        data = Dataset("arrays", np.asarray(data[0]), np.asarray(data[1]), preprocessed=True)
    ds = resolve_data(data, preprocess, mean, std, data_dir=data_dir, split="test")
    if limit:
        ds = ds.take(limit)
    feeds = runner.validate(ds.x, "evaluation data")
    n = len(ds)
    if runner.fixed_batch:
        batch_size = runner.fixed_batch
    T = int(timesteps or (runner.info.timesteps if runner.spiking else 0)) or None
    correct = 0
    spikes: Dict[str, float] = {}
    t0 = time.perf_counter()
    bar = Progress(n, desc=f"evaluating {'SNN T=%d' % T if runner.spiking else 'DNN'}",
                   unit="img", enabled=None if show_progress else False)
    for start in range(0, n, batch_size):
        feed = {k: v[start:start + batch_size] for k, v in feeds.items()}
        r = runner.run(feed, T)
        logits = r.outputs[0]
        nb = logits.shape[0]
        if ds.y is not None:
            if logits.ndim != 2:
                raise DataError(f"the model's first output has shape {list(logits.shape)}; "
                                "top-1 needs [N, classes] logits")
            correct += int(np.count_nonzero(logits.argmax(1) == ds.y[start:start + nb]))
        for k, v in r.spikes.items():
            spikes[k] = spikes.get(k, 0.0) + float(v.sum())
        bar.update(nb, **({"top1": 100.0 * correct / (start + nb)} if ds.y is not None else {}))
    bar.close()
    seconds = time.perf_counter() - t0
    sites = {}
    if runner.spiking:
        for s in runner.info.sites:
            per_sample = spikes.get(s.name, 0.0) / n
            per_neuron = per_sample / s.neurons if s.neurons else 0.0
            sites[s.name] = SiteActivity(s.name, s.neurons, per_sample, per_neuron, per_neuron / T)
    return EvalResult(model=str(name), kind="snn" if runner.spiking else "dnn", samples=n,
                      correct=correct if ds.y is not None else None,
                      top1=100.0 * correct / n if ds.y is not None else None, seconds=seconds,
                      timesteps=T if runner.spiking else None,
                      method=runner.info.method if runner.spiking else None, sites=sites)


def _dnn_preprocess(model: onnx.ModelProto) -> Optional[dict]:
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        return json.loads(meta["onnx_snn.preprocess"]) if "onnx_snn.preprocess" in meta else None
    except json.JSONDecodeError:
        return None
