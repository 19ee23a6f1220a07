"""A fine-tuning run's curves as a figure (``onnx-snn finetune --plot``): top-1 per epoch
(test and train, the starting top-1 as epoch 0, the best epoch marked) above the training
loss. matplotlib is imported only here (``pip install 'onnx-snn[plot]'``)."""
from __future__ import annotations

import io
from typing import Optional

from onnx_snn.errors import DataError, MissingDependencyError


def diverged_result(record: dict):
    """A fine-tuning run that diverged, as :func:`curves_png` reads it, from the record its
    ``TrainingDivergedError`` carries (the epochs completed before it; ``diverged``: what
    turned non-finite)."""
    from types import SimpleNamespace
    from .finetune import EpochRecord
    epochs = [EpochRecord(**e) for e in record.get("epochs") or []]
    return SimpleNamespace(output=record.get("output", "?"), timesteps=record.get("timesteps"),
                           initial_top1=record.get("initial_top1"),
                           best_top1=record.get("best_top1"), best_epoch=record.get("best_epoch"),
                           epochs=epochs, diverged=record.get("diverged"))


def curves_png(result, fmt: str = "png", title: Optional[str] = None) -> bytes:
    """The figure of a :class:`~onnx_snn.runtimes.torch.finetune.FinetuneResult` (every
    epoch it records, those before a resume too) as PNG bytes, or ``fmt`` (svg, pdf)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'onnx-snn[plot]'") from None
    epochs = list(result.epochs)
    if not epochs:
        raise DataError(f"{result.output}: nothing to plot, the run recorded no epoch")
    x = [e.epoch for e in epochs]
    fig = Figure(figsize=(6.4, 5.6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    test = [e.test_top1 for e in epochs]
    if result.initial_top1 is not None:          # the converted model, before training
        top.plot([0] + x, [result.initial_top1] + test, "o-", color="tab:green",
                 label="test (epoch 0: as converted)")
        top.axhline(result.initial_top1, color="gray", lw=0.8, ls=":")
    else:
        top.plot(x, test, "o-", color="tab:green", label="test")
    top.plot(x, [e.train_top1 for e in epochs], "s--", color="tab:blue", alpha=0.7,
             label="train (during the epoch)")
    best = [e for e in epochs if e.epoch == result.best_epoch]
    if best:
        top.plot([best[0].epoch], [best[0].test_top1], "*", ms=14, color="tab:red",
                 label=f"best: epoch {result.best_epoch}, {result.best_top1:.2f}%")
    top.set_ylabel("top-1 (%)")
    diverged = getattr(result, "diverged", None)
    top.set_title(f"Fine-tuning at T={result.timesteps}"
                  + (f" (diverged in epoch {x[-1] + 1})" if diverged else ""))
    top.legend(loc="lower right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(x, [e.loss for e in epochs], "o-", color="tab:orange")
    bottom.set_ylabel("training loss")
    bottom.set_xlabel("epoch")
    bottom.grid(alpha=0.3)
    bottom.set_xticks(([0] if result.initial_top1 is not None else []) + x)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    return buf.getvalue()
