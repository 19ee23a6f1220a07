"""Progress bars for long loops (calibration, refinement, evaluation, training): tqdm on
stderr, silenced by ``-q`` (which sets ``ONNX_SNN_PROGRESS=0``) or ``enabled=False``.

``Progress(total, desc, unit)`` is a ``tqdm`` whose ``update(n, **postfix)`` also sets the
postfix (loss, top-1, ...), so that call sites stay one line.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from tqdm import tqdm


def _enabled() -> bool:
    return os.environ.get("ONNX_SNN_PROGRESS", "1") not in ("0", "false", "no")


class Progress(tqdm):
    """Progress over ``total`` units; ``update(n, **postfix)`` advances it."""

    def __init__(self, total: Optional[int], desc: str = "", unit: str = "it",
                 enabled: Optional[bool] = None, stream=None):
        on = _enabled() if enabled is None else enabled
        super().__init__(total=total, desc=desc, unit=unit, disable=not on,
                         file=stream if stream is not None else sys.stderr,
                         dynamic_ncols=True, leave=True,
                         mininterval=0.1 if (stream or sys.stderr).isatty() else 15.0)

    @staticmethod
    def close_open() -> None:
        """End every bar still open (an error left its loop), so that what is printed next,
        the error, starts on a line of its own rather than after the bar's last state."""
        for bar in list(getattr(tqdm, "_instances", ())):
            if isinstance(bar, Progress):
                bar.close()

    def update(self, n: int = 1, **postfix) -> Optional[bool]:
        if postfix and not self.disable:
            self.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                              for k, v in postfix.items()}, refresh=False)
        return super().update(n)
