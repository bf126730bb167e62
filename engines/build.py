"""Build engines and the manifest from a multi-exit network.

export each segment -> check it against torch on random and real inputs -> hash ->
write manifest.json. On the CPU the "engine" is the ONNX file that onnxruntime loads.
"""

from __future__ import annotations

import contextlib
import datetime
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch

from edge.atomic import sha256_file
from edge.errors import EdgeError
from edge.manifest import (
    DEPTH_VARIANTS,
    MANIFEST_NAME,
    ExitInfo,
    Manifest,
    OperatingPoint,
    SegmentInfo,
    TensorInfo,
    save_manifest,
)
from engines.adaptive import AdaptiveBackbone
from engines.export import (
    CRITERIA,
    ENTROPY,
    FEATURES,
    PROBS,
    SKIP_NEXT,
    ExportableSegment,
    ExportableStatic,
    ExportedGraph,
    export_segments,
    export_static,
    exportable_segments,
    max_abs_diff_vs_torch,
)
from engines.partition import MultiExitNetwork
from engines.slimmable import dense_copy

TOLERANCE = 1e-4


class ExportMismatchError(EdgeError):
    """An exported engine does not reproduce torch within tolerance."""


@dataclass(frozen=True)
class BuildOptions:
    name: str = "model"
    max_batch: int = 64
    opt_batch: int = 1
    include_static: bool = True
    random_check_batches: int = 2


def build_engines(
    net: MultiExitNetwork,
    out_dir: Path,
    classes: Sequence[str],
    real_inputs: np.ndarray,
    points: Sequence[OperatingPoint] = (),
    options: BuildOptions = BuildOptions(),
    static_backbone: torch.nn.Module | None = None,
    temperatures: Sequence[float] | None = None,
    gates: Sequence[torch.nn.Module] | None = None,
    routers: Sequence[torch.nn.Module | None] | None = None,
) -> Manifest:
    """Export, verify and describe every segment; returns the manifest written to out_dir.
    `temperatures` (one per exit) scale the logits in the graph; `gates` (one per early
    exit) add the learned-gate score; `routers` (a depth gate or None per segment, for
    per-input depth) add the next stage's skip probability to both variants."""
    out_dir = Path(out_dir)
    net = net.eval()
    example = torch.from_numpy(real_inputs[:2].astype(np.float32))
    base_graphs = _export_base_variants(net, out_dir, example, temperatures, gates, real_inputs, options, routers)
    with _at_depth(net, "super"):  # the full engines (and a static model from this backbone), whatever depth it was left at
        graphs = export_segments(net, out_dir, example, temperatures, gates, routers=routers)
        check_segments(net, exportable_segments(net, temperatures, gates, routers), graphs, real_inputs, options.random_check_batches)
        static = whole = None
        if options.include_static:
            backbone = static_backbone if static_backbone is not None else net.backbone
            static = _export_whole(backbone, out_dir / "static.onnx", example, real_inputs, options)
            whole = static if backbone is net.backbone else _export_chain_whole(net.backbone, static, out_dir, example, real_inputs, options)
    manifest = describe(net, [g for g in graphs if g is not None], classes, points, options, static, out_dir, temperatures, base_graphs)  # all exported
    manifest = replace(manifest, whole_model=whole)
    save_manifest(manifest, out_dir / MANIFEST_NAME)
    return manifest


def _export_base_variants(
    net: MultiExitNetwork, out_dir: Path, example: torch.Tensor, temperatures: Sequence[float] | None,
    gates: Sequence[torch.nn.Module] | None, real_inputs: np.ndarray, options: BuildOptions,
    routers: Sequence[torch.nn.Module | None] | None = None,
) -> list[ExportedGraph | None]:
    """For an adaptive-depth backbone, segment_{k}.base.onnx: stage k with its skippable
    half left out and its skip-aware BNs (checked against torch at the base-net depth)."""
    backbone = net.backbone
    if not isinstance(backbone, AdaptiveBackbone):
        return [None] * net.num_exits
    if net.splits != list(range(len(backbone.stages) - 1)):
        raise ValueError("an adaptive-depth network needs an exit after every stage but the last (one segment per stage)")
    with _at_depth(net, "base"):
        skipping = {k for k, n in enumerate(backbone.skippable) if n}
        source = net if backbone.variant_kind == "depth" else cast(MultiExitNetwork, dense_copy(net))  # narrow stages as dense layers
        graphs = export_segments(source, out_dir, example, temperatures, gates, suffix=".base", only=skipping, routers=routers)
        check_segments(source, exportable_segments(source, temperatures, gates, routers), graphs, real_inputs, options.random_check_batches)
    return graphs


@contextlib.contextmanager
def _at_depth(net: MultiExitNetwork, which: str) -> Iterator[None]:
    """An adaptive backbone at its super- or base-net depth for the block, then as it was."""
    backbone = net.backbone
    if not isinstance(backbone, AdaptiveBackbone):
        yield
        return
    restore = backbone.depth
    backbone.set_depth(backbone.super_depth() if which == "super" else backbone.base_depth())
    try:
        yield
    finally:
        backbone.set_depth(restore)


def check_segments(
    net: MultiExitNetwork, wrapped: Sequence[ExportableSegment], graphs: Sequence[ExportedGraph | None],
    real_inputs: np.ndarray, random_batches: int,
) -> None:
    """Each engine fed with the previous torch segment's features must match torch."""
    batches = _check_batches(real_inputs, random_batches)
    for segment, module, graph in zip(net.segments, wrapped, graphs):
        if graph is not None:
            _check(module, graph, batches)
        with torch.no_grad():
            batches = [segment(torch.from_numpy(b))[0].numpy() for b in batches]


def _check_batches(real_inputs: np.ndarray, random_batches: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    real = np.ascontiguousarray(real_inputs[:8], dtype=np.float32)
    randoms = [rng.random(real.shape, dtype=np.float32) for _ in range(random_batches)]
    return [real, real[:1].copy(), *randoms]


def _check(module: torch.nn.Module, graph: ExportedGraph, batches: list[np.ndarray]) -> None:
    diff = max_abs_diff_vs_torch(module, graph, batches, relative=True)
    if not diff <= TOLERANCE:
        raise ExportMismatchError(f"{graph.path}: max |onnx - torch| / max(1, |torch|) = {diff:.3g} exceeds {TOLERANCE}")


def _export_whole(backbone: torch.nn.Module, path: Path, example: torch.Tensor, real_inputs: np.ndarray, options: BuildOptions) -> dict[str, str]:
    """A whole network in one engine, checked against torch: the static model, or the chain's own."""
    graph = export_static(backbone, path, example)
    _check(ExportableStatic(backbone), graph, _check_batches(real_inputs, options.random_check_batches))
    return {"file": graph.path.name, "sha256": sha256_file(graph.path)}


def _export_chain_whole(
    backbone: torch.nn.Module, static: dict[str, str], out_dir: Path, example: torch.Tensor, real_inputs: np.ndarray, options: BuildOptions,
) -> dict[str, str]:
    """The chain's own network in one engine; the static entry where the export is the
    same bytes (exits trained on a frozen copy of the static backbone): one file, and one
    session in the runtime."""
    whole = _export_whole(backbone, out_dir / "whole.onnx", example, real_inputs, options)
    if whole["sha256"] != static["sha256"]:
        return whole
    (out_dir / whole["file"]).unlink()
    return static


def describe(
    net: MultiExitNetwork,
    graphs: Sequence[ExportedGraph],
    classes: Sequence[str],
    points: Sequence[OperatingPoint],
    options: BuildOptions,
    static: dict[str, str] | None,
    out_dir: Path,
    temperatures: Sequence[float] | None = None,
    base_graphs: Sequence[ExportedGraph | None] | None = None,
) -> Manifest:
    backbone = net.backbone
    bases = list(base_graphs) if base_graphs is not None else [None] * len(graphs)
    segments = [segment_info(k, g, b) for k, (g, b) in enumerate(zip(graphs, bases))]
    temps = list(temperatures) if temperatures is not None else [1.0] * net.num_exits
    exits = [ExitInfo(k, name, temperature=float(t)) for k, (name, t) in enumerate(zip(net.exit_names(), temps))]
    points = list(points) or [OperatingPoint("full", [None] * (net.num_exits - 1))]
    return Manifest(
        name=options.name,
        input=TensorInfo(graphs[0].inputs[0].name, ["batch", *backbone.input_shape]),
        value_range=[0.0, 1.0],
        normalization={**backbone.normalization, "applied": "in_graph"},
        classes=list(classes),
        segments=segments,
        exits=exits,
        operating_points=points,
        default_operating_point=points[0].name,
        batch={"min": 1, "opt": options.opt_batch, "max": options.max_batch},
        build=build_info(),
        static_model=static,
        stage_variants=backbone.variant_kind if isinstance(backbone, AdaptiveBackbone) else DEPTH_VARIANTS,
        root=out_dir,
    )


def segment_info(index: int, graph: ExportedGraph | None, base: ExportedGraph | None = None) -> SegmentInfo:
    assert graph is not None, "every segment has a full variant"
    names = [o.name for o in graph.outputs]
    return SegmentInfo(
        name=f"segment_{index}",
        file=graph.path.name,
        sha256=sha256_file(graph.path),
        input=TensorInfo(graph.inputs[0].name, graph.inputs[0].shape),
        features_output=FEATURES if FEATURES in names else None,
        probs_output=PROBS,
        score_output=ENTROPY,
        score_outputs={c: c for c in CRITERIA if c in names},
        route_output=SKIP_NEXT if SKIP_NEXT in names else None,
        exit_index=index,
        outputs=[TensorInfo(o.name, o.shape) for o in graph.outputs],
        base=None if base is None else {"file": base.path.name, "sha256": sha256_file(base.path)},
    )


def build_info() -> dict[str, object]:
    import onnx
    import onnxruntime

    return {
        "backend": "onnxruntime",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "device": platform.processor() or platform.machine(),
        "host": platform.node(),
    }
