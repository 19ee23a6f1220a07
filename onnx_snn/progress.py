"""A dependency-free progress bar for long loops (calibration, evaluation, training).

It writes to stderr, redraws in place on a terminal and prints a few plain lines
otherwise (logs, CI). ``ONNX_SNN_PROGRESS=0`` silences it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def _enabled() -> bool:
    return os.environ.get("ONNX_SNN_PROGRESS", "1") not in ("0", "false", "no")


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Progress over ``total`` units; ``update(n, **postfix)`` advances it."""

    def __init__(self, total: Optional[int], desc: str = "", unit: str = "it",
                 enabled: Optional[bool] = None, stream=None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _enabled() if enabled is None else enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.n = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_pct = -1
        self._last_n = -1
        self.postfix: dict = {}

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        self._draw()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        post = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in self.postfix.items())
        if self.total:
            frac = min(1.0, self.n / self.total)
            width = 24
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            eta = (self.total - self.n) / rate if rate > 0 else 0
            return (f"{self.desc}: {frac * 100:5.1f}% |{bar}| {self.n}/{self.total} "
                    f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {rate:.1f} {self.unit}/s] {post}").rstrip()
        return f"{self.desc}: {self.n} {self.unit} [{_fmt_time(elapsed)}, {rate:.1f} {self.unit}/s] {post}".rstrip()

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if final or now - self._last_draw > 0.1:
                self.stream.write("\r" + self._line() + ("\n" if final else ""))
                self.stream.flush()
                self._last_draw = now
        else:
            # plain streams: a line at 0/25/50/75/100 % so logs stay short
            pct = int(100 * self.n / self.total) // 25 * 25 if self.total else -1
            if (final and self._last_n != self.n) or pct > self._last_pct:
                self._last_pct = pct
                self._last_n = self.n
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        self._draw(final=True)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], total: Optional[int] = None, desc: str = "",
             unit: str = "it") -> Iterator[T]:
    """Wrap an iterable with a progress bar."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = Progress(total, desc=desc, unit=unit)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
