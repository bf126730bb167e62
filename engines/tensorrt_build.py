"""TensorRT plans from the segment ONNX files, for TensorRT 10.x (JetPack 6) and 11.x.

Written against TensorRT's Python API (docs/jetson.md, References);
`tensorrt` is imported only when a plan is built, on the device that will run it
(plans do not move across TensorRT versions or GPUs). Per engine file of the manifest
(each segment, its precision variants and its base variant): an optimization profile
for the dynamic batch (min/opt/max from the manifest), a workspace limit, one timing
cache shared by every build, and the precision:

  fp32  as exported
  fp16  an FP16 ONNX variant ("fp16") where the manifest has one, as a strongly typed
        network; else the FP16 builder flag on the fp32 ONNX, which 10.x has and 11.x
        removed (the plan is recorded as the fp32 file's "fp16" plan)
  int8  the explicit Q/DQ variant ("int8"), symmetric (zero points 0), as TensorRT
        requires; never the implicit calibrators (removed in 11.x)

Optional DLA (FP16/INT8 only, static shapes: the plan serves the manifest's opt batch)
with GPU fallback. The manifest gains a `tensorrt`
section: version, GPU name, compute capability and a plan per ONNX file, hashed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.atomic import atomic_path, sha256_file
from edge.backends.tensorrt_backend import plan_key
from edge.backends.tensorrt_device import device_identity, device_record, tensorrt_module
from edge.errors import EdgeError, ManifestError, UserError
from edge.manifest import MANIFEST_NAME, Manifest, SegmentInfo, save_manifest

PRECISIONS = ("fp32", "fp16", "int8")
log = logging.getLogger(__name__)


class TensorRTBuildError(EdgeError):
    """TensorRT could not parse or build a segment."""


@dataclass(frozen=True)
class TrtBuildOptions:
    precision: str = "fp32"
    workspace_mb: int = 1024
    dla_core: int | None = None  # a DLA core (Orin AGX/NX), with GPU fallback for what it cannot run
    timing_cache: Path | None = None  # read if present, written after the builds

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dla_core is not None and self.precision == "fp32":
            raise UserError("DLA runs FP16 or INT8 only: ask for --precision fp16 or int8 with a DLA core")


@dataclass(frozen=True)
class PrecisionPlan:
    """How a precision is reached on a TensorRT version: which ONNX variant to parse and
    which builder flags to set."""

    variant: str  # "fp32" (the exported file) or a manifest variant name
    flags: tuple[str, ...]  # BuilderFlag names


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read a TensorRT version from {version!r}") from None


def precision_plan(precision: str, version: str, flags_available: Sequence[str], variants: Sequence[str]) -> PrecisionPlan:
    """Feature-detected: `flags_available` are the BuilderFlag names this TensorRT has,
    `variants` the precision variants every segment of the manifest has."""
    if precision == "fp32":
        return PrecisionPlan("fp32", ())
    if precision == "fp16":
        if "fp16" in variants:
            return PrecisionPlan("fp16", ())  # typed in the graph: works on 10.x and 11.x
        if "FP16" in flags_available:
            return PrecisionPlan("fp32", ("FP16",))
        raise UserError(
            f"TensorRT {version} has no FP16 builder flag (removed in 11.x): give the manifest an FP16 ONNX "
            "variant of every segment first"
        )
    if "int8" not in variants:
        raise UserError("INT8 needs a symmetric Q/DQ variant of every segment (edge-calibrate's, made for the CPU, are asymmetric); "
                        "TensorRT's implicit calibrators are removed in 11.x and not used")
    # Weakly typed 10.x networks need the INT8 flag to honour Q/DQ; 11.x is strongly typed.
    return PrecisionPlan("int8", ("INT8",) if "INT8" in flags_available and trt_major(version) < 11 else ())


def profile_shapes(input_shape: Sequence[Any], batch: dict[str, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes for an input whose dynamic dimension is "batch"."""
    dims = list(input_shape)
    if dims.count("batch") != 1 or any(not isinstance(d, int) for d in dims if d != "batch"):
        raise ManifestError(f"input shape {dims} needs exactly one 'batch' dimension and integers elsewhere")
    low, opt, high = int(batch.get("min", 1)), int(batch.get("opt", 1)), int(batch["max"])
    if not 1 <= low <= opt <= high:
        raise ManifestError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {low}, {opt}, {high}")

    def shape(n: int) -> tuple[int, ...]:
        return tuple(n if d == "batch" else int(d) for d in dims)

    return shape(low), shape(opt), shape(high)


def plan_batch(batch: dict[str, int], options: TrtBuildOptions) -> dict[str, int]:
    """The batch sizes a plan serves: the manifest's range, or on DLA (static shapes only)
    its opt batch alone. Recorded with the plan, so callers feed it only what it takes."""
    if options.dla_core is None:
        return {"min": int(batch.get("min", 1)), "opt": int(batch.get("opt", 1)), "max": int(batch["max"])}
    opt = int(batch.get("opt", 1))
    return {"min": opt, "opt": opt, "max": opt}


def qdq_problems(model: Any) -> list[str]:
    """Why TensorRT would refuse an explicitly quantized ONNX: it takes symmetric INT8
    Q/DQ only (zero points 0 of type int8)."""
    from onnx import numpy_helper

    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero = initializers.get(node.input[2])
        if zero is None:
            continue
        if zero.dtype.name != "int8":
            problems.append(f"{node.name or node.op_type}: zero point of type {zero.dtype.name}, TensorRT needs int8")
        elif zero.any():
            problems.append(f"{node.name or node.op_type}: nonzero zero point (asymmetric), TensorRT needs symmetric")
    return problems


def engine_files(manifest: Manifest, plan: PrecisionPlan) -> list[tuple[str, SegmentInfo]]:
    """Every ONNX file a plan is built from, with its segment: each segment's file at the
    plan's variant, and each base variant (fp32 only, as the manifest allows)."""
    files = [(s.file_for(plan.variant), s) for s in manifest.segments]
    files += [(s.base["file"], s) for s in manifest.segments if s.base is not None and plan.variant == "fp32"]
    return files


def plan_name(onnx_file: str, precision: str) -> str:
    return f"{Path(onnx_file).stem}.{precision}.plan"


def build_tensorrt_engines(manifest: Manifest, options: TrtBuildOptions = TrtBuildOptions()) -> Manifest:
    """Build every plan on this device and record them in the manifest (saved)."""
    trt = tensorrt_module()
    plan = precision_plan(options.precision, trt.__version__, [f for f in dir(trt.BuilderFlag) if not f.startswith("_")],
                          sorted(set.intersection(*(set(s.variants) for s in manifest.segments))))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache = _timing_cache(builder, options.timing_cache)
    files = engine_files(manifest, plan)
    if plan.variant == "int8":  # every graph checked before any plan is built
        for onnx_file, _ in files:
            _refuse_asymmetric(manifest.path_of(onnx_file))
    plans = {}
    for onnx_file, segment in files:
        batch = plan_batch(manifest.batch, options)
        shapes = profile_shapes(segment.input.shape, batch)
        data = build_plan(trt, builder, logger, manifest.path_of(onnx_file), segment.input.name, shapes, plan, options, cache)
        target = manifest.root / plan_name(onnx_file, options.precision)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        plans[plan_key(onnx_file, options.precision)] = {
            "file": target.name, "sha256": sha256_file(target), "precision": options.precision, "batch": batch,
        }
    if options.timing_cache is not None:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    identity = device_record(*device_identity())
    previous = manifest.tensorrt or {}
    # Plans of another TensorRT or GPU are dropped: they would only fail to load.
    kept = previous.get("plans", {}) if all(previous.get(k) == v for k, v in identity.items()) else {}
    record = identity | {"plans": {**kept, **plans}}
    updated = dataclasses.replace(manifest, tensorrt=record)
    save_manifest(updated, manifest.root / MANIFEST_NAME)
    return updated


def build_plan(
    trt: Any, builder: Any, logger: Any, onnx_path: Path, input_name: str, shapes: tuple[tuple[int, ...], ...],
    plan: PrecisionPlan, options: TrtBuildOptions, cache: Any,
) -> bytes:
    flags = 0  # explicit batch is the only mode since 10.0
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan.variant == "fp16" and typed is not None:
        flags |= 1 << int(typed)  # the graph's own FP16 types, honoured (always so on 11.x)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    config.set_timing_cache(cache, ignore_mismatch=False)  # _timing_cache made sure it is this device's
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, min=shapes[0], opt=shapes[1], max=shapes[2])
    config.add_optimization_profile(profile)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if options.dla_core is not None:
        if builder.num_DLA_cores <= options.dla_core:
            raise TensorRTBuildError(f"DLA core {options.dla_core} asked for; this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT failed to build a plan (see its log above)")
    return bytes(serialized)


def _timing_cache(builder: Any, path: Path | None) -> Any:
    """The cache at `path` if it was made on this device and TensorRT, else a new one: a
    cache from another device can give wrong results (TensorRT's own warning)."""
    config = builder.create_builder_config()
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if data and not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("%s: timing cache from another device or TensorRT version, not used; a new one replaces it", path)
        cache = config.create_timing_cache(b"")
    return cache


def _refuse_asymmetric(path: Path) -> None:
    import onnx

    problems = qdq_problems(onnx.load(str(path)))
    if problems:
        raise UserError(f"{path}: not a TensorRT INT8 graph ({problems[0]}; {len(problems)} such nodes). "
                        "Quantize with symmetric int8 activations and weights")
