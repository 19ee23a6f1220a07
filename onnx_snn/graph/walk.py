"""Walks over ONNX node lists, shared by the rewrite, the runtimes and the analyzer.

* :func:`prune` — backward: the nodes needed to compute some tensors (a graph cut down to
  what one site's input, or the outputs, depend on);
* :func:`dependents` / :func:`depends` — forward: the tensors (or per-node flags) that depend
  on some seed tensors (what depends on a membrane state must run every time step);
* :func:`subgraphs`, :func:`all_nodes`, :func:`outer_refs` — the graphs nested in control-flow
  nodes (the time loop's body) and the outer-scope names they read;
* :func:`topological_order` — an order in which every node comes after what it reads (or
  why there is none: a tensor nothing makes, a cycle);
* :func:`attr`, :func:`constant_tensors` — a node's attribute, the graphs' constants by name.

All functions take and return plain ``onnx.NodeProto`` sequences in their original order.
"""
from __future__ import annotations

import heapq
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import onnx


def subgraphs(graph: onnx.GraphProto) -> List[onnx.GraphProto]:
    """``graph`` and every graph nested in its nodes' attributes, depth first."""
    out = [graph]
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += subgraphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    out += subgraphs(g)
    return out


def all_nodes(graph: onnx.GraphProto) -> List[onnx.NodeProto]:
    """Every node of ``graph`` and of its nested graphs."""
    return [n for g in subgraphs(graph) for n in g.node]


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name``, else ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constant_tensors(graphs: Iterable[onnx.GraphProto]) -> Dict[str, onnx.TensorProto]:
    """The initializers and Constant nodes' values (``value`` attribute) of ``graphs``, by
    tensor name, as TensorProtos (nothing is converted: read the few needed)."""
    out = {}
    for g in graphs:
        out.update((t.name, t) for t in g.initializer)
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                out[n.output[0]] = n.attribute[0].t
    return out


def outer_refs(graph: onnx.GraphProto) -> List[str]:
    """Names a (sub)graph reads from its enclosing scope, in first-use order."""
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    refs: List[str] = []
    for n in graph.node:
        for x in n.input:
            if x and x not in made and x not in refs:
                refs.append(x)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                refs += [r for r in outer_refs(a.g) if r not in made and r not in refs]
        made.update(n.output)
    refs += [o.name for o in graph.output if o.name not in made and o.name not in refs]
    return refs


def node_inputs(node: onnx.NodeProto) -> List[str]:
    """The tensors a node reads: its inputs and the outer names its subgraphs use."""
    names = [x for x in node.input if x]
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            names += outer_refs(a.g)
    return names


def read_names(graph: onnx.GraphProto) -> Set[str]:
    """Every tensor a node of ``graph`` reads (its subgraphs' outer names too), and the
    graph's outputs."""
    return {x for n in graph.node for x in node_inputs(n)} | {o.name for o in graph.output}


def unread_inputs(graph: onnx.GraphProto, read: Set[str],
                  inputs: Optional[Sequence[onnx.ValueInfoProto]] = None) -> List[str]:
    """The data inputs among ``inputs`` (default: the graph's; initializers are not data)
    that are not in ``read`` (:func:`read_names`); none when no data input is read: a
    model that reads none of its inputs keeps them (its callers feed something)."""
    inits = {t.name for t in graph.initializer}
    data = [vi.name for vi in (graph.input if inputs is None else inputs) if vi.name not in inits]
    unread = [n for n in data if n not in read]
    return [] if len(unread) == len(data) else unread


def topological_order(graph: onnx.GraphProto) -> Tuple[Optional[List[int]], str]:
    """(indices of ``graph.node`` in an order where every node follows the nodes whose outputs
    it reads, closest to the file's order; why not, as a sentence naming the node) — the
    order is None when a node reads a tensor that no node, graph input or initializer makes,
    or when nodes read each other's outputs in a cycle."""
    nodes = list(graph.node)
    given = ({i.name for i in graph.input} | {t.name for t in graph.initializer}
             | {t.values.name for t in graph.sparse_initializer} | {""})
    maker: Dict[str, int] = {}
    for k, n in enumerate(nodes):
        for o in n.output:
            if o:
                maker.setdefault(o, k)
    waits = [0] * len(nodes)
    readers: Dict[int, List[int]] = {}
    for k, n in enumerate(nodes):
        for x in set(node_inputs(n)):
            if x in given:
                continue
            if x not in maker:
                return None, (f"node '{n.name or n.op_type}' ({n.op_type}) reads '{x}', which no "
                              "node, graph input or initializer makes")
            readers.setdefault(maker[x], []).append(k)
            waits[k] += 1
    ready = [k for k, w in enumerate(waits) if w == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers.get(k, ()):
            waits[r] -= 1
            if waits[r] == 0:
                heapq.heappush(ready, r)
    if len(order) < len(nodes):
        # walk from a waiting node to a waiting node it reads until one repeats: a cycle
        makers = {k: [maker[x] for x in set(node_inputs(n)) if x not in given
                      and waits[maker[x]] > 0] for k, n in enumerate(nodes) if waits[k] > 0}
        path, k = [], next(iter(makers))
        while k not in path:
            path.append(k)
            k = makers[k][0]
        loop = path[path.index(k):][::-1]
        names = [f"'{nodes[i].name or nodes[i].op_type}' ({nodes[i].op_type})" for i in loop]
        return None, ("nodes read each other's outputs in a cycle: "
                      + " -> ".join(names + names[:1]))
    return order, ""


def reorder_nodes(graph: onnx.GraphProto, order: Sequence[int]) -> None:
    """Put ``graph``'s nodes, in place, in ``order`` (indices of :func:`topological_order`);
    each is copied first, as deleting the repeated field frees the messages it holds."""
    nodes = [onnx.NodeProto() for _ in order]
    for new, k in zip(nodes, order):
        new.CopyFrom(graph.node[k])
    del graph.node[:]
    graph.node.extend(nodes)


def fresh_name(base: str, taken: Set[str], avoid=None) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken`` (nor refused by
    ``avoid``), added to it. The one renaming scheme for names two nodes share, whichever
    command reads the model (a layer keeps one name in every report)."""
    new, k = base, 1
    while new in taken or (avoid is not None and avoid(new)):
        new, k = f"{base}_{k}", k + 1
    taken.add(new)
    return new


def producers(nodes: Sequence[onnx.NodeProto]) -> Dict[str, int]:
    """Each tensor's first producer, by its position in ``nodes``."""
    producer: Dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o and o not in producer:
                producer[o] = i
    return producer


def prune(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str],
          stop: Iterable[str] = (), producer: Optional[Dict[str, int]] = None
          ) -> List[onnx.NodeProto]:
    """The nodes needed to compute ``outputs`` (the first producer of a name wins), in their
    original order; tensors in ``stop`` are taken as given (their producers are not needed).
    ``producer``: :func:`producers` of ``nodes``, when the caller keeps it (a pruning per
    layer of a deep network then costs what it keeps, not the whole graph)."""
    if producer is None:
        producer = producers(nodes)
    keep: Set[int] = set()
    stack = list(outputs)
    given = set(stop)
    while stack:
        t = stack.pop()
        if t in given:
            continue
        i = producer.get(t)
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(node_inputs(nodes[i]))
    return [nodes[i] for i in sorted(keep)]


def needed_tensors(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str],
                   stop: Iterable[str] = ()) -> Set[str]:
    """Every tensor read by the nodes that ``prune`` keeps, plus ``outputs``."""
    names = set(outputs)
    for n in prune(nodes, names, stop):
        names.update(node_inputs(n))
    return names


def dependents(nodes: Sequence[onnx.NodeProto], seeds: Iterable[str]) -> Set[str]:
    """The tensors that depend (transitively, in node order) on ``seeds``, seeds included."""
    dep = set(seeds)
    for n in nodes:
        if any(i in dep for i in node_inputs(n)):
            dep.update(o for o in n.output if o)
    return dep


def depends(nodes: Sequence[onnx.NodeProto], seeds: Iterable[str]) -> List[bool]:
    """For each node, whether any of its inputs depends on ``seeds``."""
    dep = set(seeds)
    flags = []
    for n in nodes:
        d = any(i in dep for i in node_inputs(n))
        if d:
            dep.update(o for o in n.output if o)
        flags.append(d)
    return flags


def rename_tensors(nodes: Iterable[onnx.NodeProto], mapping: Dict[str, str]) -> None:
    """Rename, in place, every input and output of ``nodes`` that ``mapping`` names (the
    nodes' own graph only, not their subgraphs)."""
    for n in nodes:
        for i, o in enumerate(n.output):
            if o in mapping:
                n.output[i] = mapping[o]
        for i, x in enumerate(n.input):
            if x in mapping:
                n.input[i] = mapping[x]
