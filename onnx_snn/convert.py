"""The conversion API: DNN ONNX in, calibrated spiking ONNX out.

``convert`` does it in one call; ``prepare`` + ``calibrate`` + ``build`` expose the three
stages so that one calibration can serve several methods and time-step counts.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import onnx

from . import __version__
from .calibrate import (DEFAULT_BATCH_SIZE, DEFAULT_CALIB_SAMPLES, DEFAULT_SAMPLE_SIZE,
                        Calibration, calibrate, tensor_shapes)
from .datasets import Dataset, apply_preprocess, load_dataset
from .errors import DataError
from .graph.normalize import NormalizedModel, normalize
from .model_io import PathLike, save_model, write_text_atomic
from .scales import (DEFAULT_METHOD, DEFAULT_TIMESTEPS, METHODS, OBJECTIVES, REFINED, SearchConfig,
                     choose_params, estimate_mu)
from .spiking import format as fmt
from .spiking import rewrite

log = logging.getLogger("onnx_snn")

@dataclass
class SpikingModel:
    """A converted network: the single-call ONNX model plus what produced it."""

    model: onnx.ModelProto
    normalized: NormalizedModel
    records: Dict[str, fmt.SiteRecord]
    timesteps: int
    method: str
    report: dict = field(default_factory=dict)
    input_shapes: dict = field(default_factory=dict)
    pools: Dict[str, fmt.PoolRecord] = field(default_factory=dict)

    def step_model(self) -> onnx.ModelProto:
        """The one-time-step graph (states in, next states out)."""
        meta = fmt.metadata(self.model)
        return rewrite.step_model(self.normalized, self.records, meta, self.input_shapes,
                                  self.pools)

    def binary_model(self, step: bool = False) -> onnx.ModelProto:
        """The model with every foldable spike amplitude moved into the next layer's weights
        (0/1 spikes); ``self.report['binary_spikes']`` says which sites kept theirs and why."""
        from .spiking.binary import fold_amplitudes
        model, result = fold_amplitudes(self.step_model() if step else self.model)
        self.report["binary_spikes"] = result
        return model

    def save(self, path: PathLike, *inputs: PathLike, step: bool = False,
             binary_spikes: bool = False) -> Path:
        """Write the model atomically; refuses to overwrite the source model."""
        src = [self.normalized.source_path] if self.normalized.source_path else []
        if binary_spikes:
            model = self.binary_model(step)
        else:
            model = self.step_model() if step else self.model
        return save_model(model, path, *src, *inputs)

    def save_report(self, path: PathLike) -> Path:
        src = [self.normalized.source_path] if self.normalized.source_path else []
        return write_text_atomic(json.dumps(self.report, indent=2) + "\n", path, *src)

    @property
    def info(self) -> fmt.SpikingInfo:
        return fmt.read_info(self.model)


def prepare(model: Union[PathLike, onnx.ModelProto]) -> NormalizedModel:
    """Load and normalize a DNN (raises clear errors for unsupported graphs)."""
    return normalize(model if isinstance(model, onnx.ModelProto) else str(model))


def resolve_data(data, preprocess: Optional[dict] = None, mean=None, std=None,
                 data_dir=None, split: Optional[str] = None, download: bool = False) -> Dataset:
    """Turn an array, Dataset, name or file into preprocessed model inputs.

    Named datasets (images in [0, 1]) get ``mean``/``std`` when given, else the model's
    recorded preprocessing; arrays and .npy/.npz files are taken as already preprocessed
    unless ``mean``/``std`` are given explicitly.
    """
    if isinstance(data, Dataset):
        ds = data
    elif isinstance(data, (str, Path)):
        ds = load_dataset(str(data), data_dir=data_dir, split=split, download=download)
    elif isinstance(data, np.ndarray) or isinstance(data, dict):
        ds = Dataset("array", data, None, preprocessed=True)  # type: ignore[arg-type]
    else:
        raise DataError(f"cannot use {type(data).__name__} as data; pass an array, a dataset "
                        "name or a .npy/.npz path")
    if isinstance(ds.x, dict):
        return ds
    if ds.preprocessed and mean is None and std is None and ds.x.dtype.kind in "iu":
        log.warning("%s: integer data (%s) is taken as already preprocessed; pass --mean/--std "
                    "(and scale to [0, 1]) if these are raw pixels", ds.name, ds.x.dtype)
    if mean is not None or std is not None:
        x = apply_preprocess(ds.x, mean, std)
    elif not ds.preprocessed and preprocess:
        x = apply_preprocess(ds.x, preprocess.get("mean"), preprocess.get("std"))
    else:
        x = ds.x
    return Dataset(ds.name, x, ds.y, preprocessed=True)


def build(nm: NormalizedModel, calib: Calibration, timesteps: int = DEFAULT_TIMESTEPS,
          method: str = DEFAULT_METHOD,
          config: Optional[SearchConfig] = None, history_extra: Optional[dict] = None,
          calib_data=None, show_progress: bool = False,
          threads: Optional[int] = None, seed: int = 0) -> SpikingModel:
    """Choose (alpha, beta) for every site and rewrite into the spiking format.

    ``refined`` (the default; also ``datta`` with ``config.sequential``) then refines the
    parameters site by site on the spiking network itself (:mod:`onnx_snn.sequential`), on
    the calibration inputs (``calib_data``; by default those :func:`calibrate` recorded)."""
    cfg = config or SearchConfig()
    if method == REFINED and not cfg.sequential:
        cfg = dataclasses.replace(cfg, sequential=True)
    if cfg.sequential and method not in ("datta", REFINED):
        raise ValueError(f"the sequential refinement is part of the datta method, not {method!r}")
    if cfg.sequential:
        calib_data = calib.inputs if calib_data is None else calib_data
        if calib_data is None:
            raise ValueError("the sequential refinement runs the spiking network on the "
                             "calibration inputs: pass them as calib_data")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if int(timesteps) < 1:
        raise ValueError("timesteps must be at least 1")
    t0 = time.perf_counter()
    missing = [s.name for s in nm.sites if s.name not in calib.sites]
    if missing:
        raise ValueError(f"the calibration has no record of site(s) {', '.join(missing)}; "
                         "calibrate all sites of this model")
    pool_nodes = rewrite.spiking_pools(nm, {s.name: s for s in nm.sites})
    rewrite.check_reserved_names(nm, len(pool_nodes))
    pools = rewrite.pool_records(pool_nodes, tensor_shapes(
        nm, [t for n in pool_nodes for t in (n.input[0], n.output[0])], calib.input_shapes))
    records: Dict[str, fmt.SiteRecord] = {}
    site_rows = []
    for site in nm.sites:
        st = calib.sites[site.name]
        mu = site.mu if site.mu is not None else estimate_mu(st.sample, cfg.relu_percentile)
        ts = time.perf_counter()
        p = choose_params(st.sample, mu, int(timesteps), method, cfg)
        search_s = time.perf_counter() - ts
        rec = fmt.SiteRecord(
            name=site.name, input=site.input, output=site.output, shape=list(st.shape),
            mu=float(mu), mu_source=site.mu_source, alpha=p.alpha, beta=p.beta,
            objective=cfg.objective, objective_value=p.objective_value, idiom=site.idiom,
            source_nodes=site.source_nodes, sample_size=int(st.sample.size),
            values_seen=int(st.count))
        rec.v_init = p.v_init_fraction * rec.threshold
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
    history = [{
        "step": "convert", "tool": f"onnx-snn {__version__}",
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": method, "timesteps": int(timesteps), "objective": cfg.objective,
        "calibration_samples": calib.n_samples, "sample_size": calib.sample_size,
        **({"sequential": True, "v_init_fractions": list(cfg.v_init_fractions),
            "sequential_sample": cfg.sequential_sample, "per_channel": cfg.per_channel,
            "bias_correction": cfg.bias_correction,
            "weight_calibration": cfg.weight_calibration} if cfg.sequential else {}),
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
        "notes": list(nm.notes), "sites": site_rows,
    }
    if refinement is not None:
        report["sequential"] = refinement
    return SpikingModel(model=model, normalized=nm, records=records, timesteps=int(timesteps),
                        method=method, report=report, input_shapes=dict(calib.input_shapes),
                        pools=pools)


def _self_check(model: onnx.ModelProto) -> None:
    """Never hand out a model that fails the ONNX checker (that would be a bug here)."""
    if model.ByteSize() >= 2_000_000_000:
        return
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise RuntimeError(f"onnx-snn produced an invalid spiking model ({str(e).strip()[:300]}); "
                           "please report this with the source model") from None


def convert(model: Union[PathLike, onnx.ModelProto], calib, timesteps: int = DEFAULT_TIMESTEPS,
            method: str = DEFAULT_METHOD, config: Optional[SearchConfig] = None, *,
            batch_size: int = DEFAULT_BATCH_SIZE, sample_size: int = DEFAULT_SAMPLE_SIZE,
            calib_samples: Optional[int] = DEFAULT_CALIB_SAMPLES, mean=None, std=None,
            data_dir=None, seed: int = 0, show_progress: bool = True, download: bool = False,
            **options) -> SpikingModel:
    """Convert a DNN into a spiking model in one call.

    ``calib`` is an array (already preprocessed), a :class:`~onnx_snn.datasets.Dataset`, a
    dataset name such as ``"fashion-mnist"`` (its training split is used) or a .npy/.npz path.
    ``calib_samples`` random samples are drawn from it (``None``: all of them).
    ``config`` (a :class:`SearchConfig`) sets the search; keyword ``options`` override its
    fields (``objective="mean"``, ``sequential=True``, ``beta_step=0.01``, ...).
    """
    cfg = search_config(config, **options)
    nm = prepare(model)
    ds = resolve_data(calib, nm.preprocess, mean, std, data_dir=data_dir, split="train",
                      download=download)
    if isinstance(ds.x, np.ndarray):
        ds = ds.take(calib_samples, seed=seed)
    cal = calibrate(nm, ds.x, batch_size=batch_size, sample_size=sample_size, seed=seed,
                    show_progress=show_progress)
    return build(nm, cal, timesteps, method, cfg, history_extra={"calibration_data": ds.name},
                 show_progress=show_progress, seed=seed)


def search_config(config: Optional[SearchConfig] = None, **options) -> SearchConfig:
    """``config`` (default: ``SearchConfig()``) with the fields in ``options`` replaced."""
    cfg = config or SearchConfig()
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown conversion option(s) {', '.join(unknown)}; the options are "
                        f"the fields of SearchConfig: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **options) if options else cfg


__all__ = ["SpikingModel", "prepare", "calibrate", "build", "convert", "resolve_data",
           "SearchConfig", "search_config"]
