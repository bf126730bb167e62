"""Cut any traceable network wherever exactly one tensor crosses.

The network is traced with torch.fx (in eval mode: stochastic depth and functional
dropout are traced off). After node i of the graph, the tensors that cross are the
nodes at or before i still used after it; where that is i alone (a batch of float
features) at a boundary the code draws (a module's output), the graph can be cut. The
pieces between cuts become the blocks of a BlockBackbone, each a GraphModule sharing
the network's own modules and weights, so running them in order is the traced graph,
operation for operation. Blocks are named by the module whose output the cut is
(`layer2.1`, `features.6`, `encoder.layers.encoder_layer_3`); other module paths
ending there, and the node's own name, are aliases; a module path or node that is not
a clean cut is remembered with the tensors that cross it, for the error message.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edge.errors import UserError
from engines.backbone import BlockBackbone, Normalize

_CHECK_BATCH = 2
_FREE_OPS = ("get_attr",)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # weights and buffers: every piece may read them


class TraceError(UserError):
    """A network cannot be traced, run at the given input shape, or cut."""


@dataclass(frozen=True)
class _Graph:
    """The traced graph in execution order, with what each cut would need."""

    module: fx.GraphModule
    order: list[fx.Node]  # placeholder, computations..., output (no get_attr)
    last_use: dict[fx.Node, int]

    def crossing(self, i: int) -> list[fx.Node]:
        return [n for n in self.order[: i + 1] if self.last_use[n] > i]


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], autowrap: tuple[object, ...]) -> None:
        super().__init__(autowrap_functions=autowrap)  # type: ignore[arg-type]
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)


def trace_backbone(
    net: nn.Module,
    input_shape: Sequence[int],
    normalization: dict[str, list[float]],
    source: str = "network",
    leaf_types: tuple[type, ...] = (),
    autowrap: tuple[object, ...] = (),
) -> BlockBackbone:
    """`net` (a classifier taking normalized (N, *input_shape) images) as a BlockBackbone
    whose blocks end at every clean cut; Normalize runs first, so it takes [0, 1] images."""
    shape = tuple(int(d) for d in input_shape)
    graph = _analyse(_trace(net.eval(), source, leaf_types, autowrap), shape, source)
    cuts = _clean_cuts(graph, net)
    if not cuts:
        raise TraceError(f"{source}: no point in its graph where exactly one tensor crosses: it cannot be cut")
    names, aliases = _names(graph, cuts, net)
    blocks = _pieces(graph, [0, *cuts])
    head = _piece(graph, cuts[-1], len(graph.order) - 2)
    index = {name: k for k, name in enumerate(names)}
    stages = _stages(graph, cuts, net)
    backbone = BlockBackbone(
        Normalize(normalization["mean"], normalization["std"]), blocks, head, names,
        {s: index[names[cuts.index(end)]] for s, (_, end) in stages.items()}, shape, normalization,
        aliases={a: k for k, group in enumerate(aliases) for a in group}, refusals=_refusals(graph, set(cuts)),
        stage_starts={s: sum(c < first for c in cuts) for s, (first, _) in stages.items()},
    )
    _check_same(backbone.eval(), net, normalization, shape, source)
    return backbone


def _trace(net: nn.Module, source: str, leaf_types: tuple[type, ...], autowrap: tuple[object, ...]) -> fx.GraphModule:
    tracer = _Tracer(leaf_types, autowrap)
    try:
        graph = tracer.trace(net, concrete_args=_optional_inputs(net, source))
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"{source}: torch.fx cannot trace it ({type(exc).__name__}: {first}); "
            "data-dependent control flow in forward() must become tensor operations"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(net).__name__)


def _optional_inputs(net: nn.Module, source: str) -> dict[str, object]:
    """forward's arguments after the image, fixed at their defaults (a mask, a flag):
    traced as inputs they would cross every cut."""
    params = list(inspect.signature(net.forward).parameters.values())[1:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise TraceError(f"{source}: forward() needs more than one input ({', '.join(required)}): only image classifiers can be cut")
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _analyse(module: fx.GraphModule, shape: tuple[int, ...], source: str) -> _Graph:
    example = torch.rand(_CHECK_BATCH, *shape)
    try:  # ShapeProp prints a traceback before it raises: the error below says it in one line
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(module).propagate(example)
    except Exception as exc:  # whatever the network raises on a wrong shape
        cause = exc.__cause__ or exc  # ShapeProp wraps it, naming the node
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise TraceError(f"{source} does not take inputs of shape {shape} ({type(cause).__name__}: {first})") from exc
    order = [n for n in module.graph.nodes if n.op not in _FREE_OPS]
    position = {n: i for i, n in enumerate(order)}
    last_use = {n: max((position[u] for u in n.users), default=-1) for n in order}
    output = order[-1]
    result = output.args[0]
    if not isinstance(result, fx.Node) or len(_shape(result) or ()) != 2:
        raise TraceError(f"{source} is not a classifier: its output is not one (batch, classes) tensor")
    return _Graph(module, order, last_use)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape") or not meta.dtype.is_floating_point:
        return None
    return tuple(meta.shape)


def _clean_cuts(graph: _Graph, net: nn.Module) -> list[int]:
    """Positions after which exactly one batch of float features crosses, before the
    node that makes the logits, at a boundary the network's code draws: the output of
    a module that holds others, of a layer directly in a container (`features.3` in a
    VGG), or of an operation in the top-level forward (a flatten). Clean points inside
    a block between two of its operations are left out."""
    final = graph.order.index(graph.order[-1].args[0])  # type: ignore[arg-type]
    boundaries = {node for path, node in _module_ends(graph).items() if _is_boundary(net, path)}
    cuts = []
    for i in range(1, final):
        node = graph.order[i]
        shape = _shape(node)
        at_boundary = node in boundaries or not node.meta.get("nn_module_stack")
        if at_boundary and graph.crossing(i) == [node] and shape is not None and shape[:1] == (_CHECK_BATCH,):
            cuts.append(i)
    return cuts


def _is_boundary(net: nn.Module, path: str) -> bool:
    if any(True for _ in net.get_submodule(path).children()):
        return True
    parent = path.rpartition(".")[0]
    return not parent or type(net.get_submodule(parent)) in _CONTAINERS


def _module_ends(graph: _Graph) -> dict[str, fx.Node]:
    """Module path -> the node that is its output, for modules called once."""
    ends: dict[str, fx.Node] = {}
    calls: Counter[str] = Counter()
    for node in graph.order:
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            if key not in ends:
                calls[path] += 1
            ends[key] = node
    return {key: node for key, node in ends.items() if calls[key] == 1 and key}


def _names(graph: _Graph, cuts: list[int], net: nn.Module) -> tuple[list[str], list[list[str]]]:
    """A name per cut, and every other name it answers to. The name is the outermost
    module ending there that is not a bare container (`layer1.0`, not `layer1`; the
    MBConv `features.2.0`, not its `block`), else the node's own name."""
    ending: dict[fx.Node, list[str]] = {}
    for path, node in _module_ends(graph).items():
        ending.setdefault(node, []).append(path)
    names, aliases = [], []
    for i in cuts:
        node = graph.order[i]
        paths = sorted(ending.get(node, []), key=lambda p: p.count("."))
        own = [p for p in paths if type(net.get_submodule(p)) not in _CONTAINERS]
        names.append((own or paths[::-1] or [node.name])[0])
        aliases.append(sorted(set(paths + [node.name]) - {names[-1]}))
    return names, aliases


def _stages(graph: _Graph, cuts: list[int], net: nn.Module) -> dict[str, tuple[int, int]]:
    """nn.Sequential modules (or subclasses: regnet's AnyStage) of two or more blocks,
    each ending at a cut: the stages (adaptive depth regroups by them). Maps the stage
    to the positions of its first node and of its last cut."""
    ends = _module_ends(graph)
    starts = _module_starts(graph)
    position = {n: i for i, n in enumerate(graph.order)}
    cut_set = set(cuts)
    stages = {}
    for path, module in net.named_modules():
        if not isinstance(module, nn.Sequential) or len(module) < 2 or path not in ends:
            continue
        children = [f"{path}.{name}" for name, _ in module.named_children()]
        if all(c in ends and position[ends[c]] in cut_set for c in children):
            stages[path] = (position[starts[path]], position[ends[path]])
    return stages


def _module_starts(graph: _Graph) -> dict[str, fx.Node]:
    """Module path -> the first node computed inside it."""
    starts: dict[str, fx.Node] = {}
    for node in graph.order:
        for key in node.meta.get("nn_module_stack") or {}:
            starts.setdefault(key, node)
    return starts


def _refusals(graph: _Graph, cuts: set[int]) -> dict[str, str]:
    """Why each module path or node that is not a clean cut is refused."""
    position = {n: i for i, n in enumerate(graph.order)}
    targets = {path: position[node] for path, node in _module_ends(graph).items()}
    targets.update({n.name: position[n] for n in graph.order[1:-1]})
    refusals = {}
    for name, i in targets.items():
        if i in cuts:
            continue
        crossing = graph.crossing(i)
        if len(crossing) > 1:
            refusals[name] = f"{len(crossing)} tensors cross it ({', '.join(_describe(n) for n in crossing)})"
        else:
            refusals[name] = "what crosses it is not one batch of float features (or the logits follow at once)"
    return refusals


def _describe(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    where = next(reversed(stack.values()))[0] if stack else ""
    shape = _shape(node)
    return f"{node.name}" + (f" in {where}" if where else "") + (f" {list(shape[1:])}" if shape else "")


def _pieces(graph: _Graph, bounds: list[int]) -> list[fx.GraphModule]:
    return [_piece(graph, start, end) for start, end in zip(bounds, bounds[1:])]


def _piece(graph: _Graph, start: int, end: int) -> fx.GraphModule:
    """The nodes after position `start` up to `end`, fed by the node at `start`."""
    piece = fx.Graph()
    env: dict[fx.Node, fx.Node] = {graph.order[start]: piece.placeholder("x")}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env and node.op in _FREE_OPS:
            env[node] = piece.node_copy(node)
        return env[node]

    for node in graph.order[start + 1 : end + 1]:
        env[node] = piece.node_copy(node, lookup)
    piece.output(env[graph.order[end]])
    return fx.GraphModule(graph.module, piece)


def _check_same(backbone: BlockBackbone, net: nn.Module, norm: dict[str, list[float]], shape: tuple[int, ...], source: str) -> None:
    x = torch.rand(_CHECK_BATCH, *shape)
    with torch.no_grad():
        expected = net(Normalize(norm["mean"], norm["std"])(x))
        got = backbone(x)
    scale = max(1.0, float(expected.abs().max()))
    if not torch.allclose(got, expected, rtol=0, atol=1e-5 * scale):
        raise TraceError(f"{source}: the traced pieces do not reproduce the network (max diff {float((got - expected).abs().max()):.3g})")
