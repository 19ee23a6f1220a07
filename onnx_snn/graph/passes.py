"""The shape of a normalization pass: a named in-place rewrite of an onnx-graphsurgeon graph
that says what it changed and, for each candidate it looked at but left alone, why.

A pass is written as ``def fn(graph, result)`` and decorated with :func:`graph_pass`; calling
the decorated object on a graph runs it and returns the filled-in :class:`PassResult`, so each
pass can be applied and checked on its own::

    r = fold_batchnorm(graph)
    r.changed, r.skipped   # 1, [("bn3", "the preceding Conv's weight is not constant; ...")]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple

import onnx_graphsurgeon as gs


@dataclass
class PassResult:
    """What one pass did to a graph."""

    name: str
    changed: int = 0                                            # rewrites made
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (node name, why not)
    notes: List[str] = field(default_factory=list)              # user-visible notes
    records: list = field(default_factory=list)                 # findings for later stages

    def skip(self, node: gs.Node, reason: str) -> None:
        self.skipped.append((node.name, reason))

    def reason(self, node_name: str) -> str:
        """The skip reason given for ``node_name`` (KeyError when there is none)."""
        for n, r in self.skipped:
            if n == node_name:
                return r
        raise KeyError(f"{self.name}: no skip recorded for '{node_name}'")

    def lines(self) -> List[str]:
        return [f"{self.name}: changed {self.changed}"] + \
            [f"{self.name}: skipped '{n}': {r}" for n, r in self.skipped]


class GraphPass:
    """A named pass; ``pass_(graph)`` rewrites ``graph`` in place and returns a PassResult."""

    def __init__(self, name: str, fn: Callable[[gs.Graph, PassResult], None]):
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __call__(self, graph: gs.Graph) -> PassResult:
        result = PassResult(self.name)
        self.fn(graph, result)
        return result

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


def graph_pass(name: str) -> Callable[[Callable], GraphPass]:
    """Decorator: turn ``fn(graph, result)`` into a :class:`GraphPass` called ``name``."""
    return lambda fn: GraphPass(name, fn)


def run_passes(graph: gs.Graph, passes: Sequence[GraphPass]) -> List[PassResult]:
    """Apply ``passes`` in order; their results, in the same order."""
    return [p(graph) for p in passes]
