"""Where a tensor's elements come from: the walk back from a tensor through the ops that
move values without mixing them (pools, reshapes, concatenations, scaling by constants) to
the sites whose spikes they are, shared by the rewrite (is a max pool's input all spikes?)
and the analyzer (at which site's spike rate is a layer charged?).

* :func:`constant_names` — the tensors no data input reaches;
* :func:`source_mix` / :func:`source_mix_and_pools` — {site: share} of a tensor's elements
  (and the spiking max pools on the way); :func:`source_site` — the first of them.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import onnx

#: ops the source-site walk passes through (data input(s) only)
PASS_THROUGH = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                "ReduceMean", "ReduceSum",
                "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad", "Slice", "Split",
                "Identity", "Dropout", "Cast", "Concat", "Mul", "Div", "Resize", "Gather",
                "GatherND", "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Neg")
#: sums: a sum of spike trains (and constants) still arrives as spikes, each source at its
#: own rate (a layer after it accumulates every source's spikes: it is linear, W(a + b + c) =
#: Wa + Wb + Wc, and Wc a constant it adds to its bias once); with an analog term it is analog
SUMS = ("Add", "Sub", "Sum")


def constant_names(g: onnx.GraphProto, weights: Iterable[str] = ()) -> set:
    """Tensors that depend on no data input (initializers, Constant nodes and their results)."""
    const = {t.name for t in g.initializer} | set(weights)
    inputs = {i.name for i in g.input} - const
    for n in g.node:
        ins = [i for i in n.input if i]
        if all(i in const for i in ins) and not any(i in inputs for i in ins):
            const.update(o for o in n.output if o)
    return const


def source_site(tensor: str, producers: Mapping[str, onnx.NodeProto], sites: Mapping[str, str],
                constant: set) -> Optional[str]:
    """The site whose spikes reach ``tensor`` through pass-through ops only (else None).

    Depth-first, inputs in order: for a ``Concat`` the first site found is returned.
    """
    return next((k for k in source_mix(tensor, producers, sites, constant) if k), None)


def source_mix(tensor: str, producers: Mapping[str, onnx.NodeProto], sites: Mapping[str, str],
               constant: set, shapes: Optional[Mapping[str, Sequence[int]]] = None,
               sums: bool = False) -> Dict[str, float]:
    """Where the elements of ``tensor`` come from, through pass-through ops: {site: share},
    "" for what is not a site's spikes, in the order a depth-first walk (inputs in order)
    reaches them; a ``Concat`` splits its output by its inputs' sizes in ``shapes`` (equally
    when a size is unknown). The shares sum to 1. With ``sums`` (the analyzer's walk: which
    spikes does a layer accumulate?) the walk also passes a sum of spike trains (``SUMS``),
    whose every element receives each source's spikes: share 1 each, so they may sum to more;
    without it (the rewrite's: is a tensor single spikes?) a sum ends the walk."""
    return source_mix_and_pools(tensor, producers, sites, constant, shapes, sums=sums)[0]


def source_mix_and_pools(tensor: str, producers: Mapping[str, onnx.NodeProto],
                         sites: Mapping[str, str], constant: set,
                         shapes: Optional[Mapping[str, Sequence[int]]] = None,
                         pools: Optional[Mapping[str, str]] = None, sums: bool = False
                         ) -> Tuple[Dict[str, float], Dict[str, str]]:
    """:func:`source_mix`, and from the same walk the sources whose spikes reach ``tensor``
    through a spiking max pool: {site: the pool nearest ``tensor`` on the way} (``pools``: a
    pool's output tensor -> its name). A site reached both ways keeps the pooled path."""
    mix: Dict[str, float] = {}
    pooled: Dict[str, str] = {}
    for key, w, pool in _sources(tensor, producers, sites, constant, shapes or {}, pools or {},
                                 sums):
        mix[key] = mix.get(key, 0.0) + w
        if key and pool:
            pooled.setdefault(key, pool)
    return mix, pooled


def _sources(tensor, producers, sites, constant, shapes, pools, sums=False):
    """The leaves of the pass-through walk from ``tensor``: (site or "", share, the nearest
    spiking pool passed on the way or None), depth-first, inputs in order."""
    stack = [(tensor, 1.0, None)]
    while stack:
        x, w, via = stack.pop()
        via = via or pools.get(x)
        key = sites.get(x)
        node = None if key is not None else producers.get(x)
        nxt: List[Tuple[str, float]] = []
        if node is not None and node.domain in ("", "ai.onnx") and (
                node.op_type in PASS_THROUGH or (sums and node.op_type in SUMS)):
            if node.op_type == "Concat":
                ins = [i for i in node.input if i]
                sizes = [math.prod(int(d) for d in shapes[i]) if shapes.get(i) is not None and
                         all(isinstance(d, int) and d >= 0 for d in shapes[i]) else None
                         for i in ins]
                if any(z is None for z in sizes) or not sum(sizes):
                    sizes = [1] * len(ins)
                nxt = [(i, w * z / sum(sizes)) for i, z in zip(ins, sizes)]
            elif node.op_type in SUMS:
                # a constant term adds the same to every step: the layer after folds W c into
                # its bias, once; the data terms must all be spikes
                ins = [i for i in node.input if i and i not in constant]
                leaves = [leaf for i in ins for leaf in _sources(i, producers, sites, constant,
                                                                 shapes, pools, sums)]
                if leaves and all(k for k, _, _ in leaves):     # spikes only
                    for k, v, p in leaves:
                        yield k, w * v, p or via
                    continue
            elif node.op_type in ("Mul", "Div"):
                if len(node.input) >= 2 and (node.input[1] in constant or
                                             (node.op_type == "Mul" and node.input[0] in constant)):
                    nxt = [([i for i in node.input[:2] if i not in constant][0], w)]
            else:
                nxt = [(node.input[0], w)]
        if nxt:
            stack.extend((t, v, via) for t, v in reversed(nxt))
        else:                       # a site, or where the spikes end (not pass-through)
            yield (key if key is not None else ""), w, via
