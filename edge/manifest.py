"""The manifest: the one contract between build time and run time (docs/architecture.md, decision 1).

Schema documented in docs/manifest.md. Loading checks the schema version, the shape of
every entry and the sha256 of every file it names, and fails with a ManifestError
that names the bad file. Paths inside are relative to the manifest's folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.atomic import sha256_file, write_json_atomic
from edge.errors import ManifestError

SCHEMA_VERSION = 5  # 2 added score_outputs, variants, profile; 3 base variants (adaptive depth); 4 static points; 5 per-input depth (and stage_variants)
READABLE_VERSIONS = (1, 2, 3, 4, 5)
CHAIN, STATIC = "chain", "static"  # what an operating point runs: the segment chain, or the static engine
FULL, SKIP, ROUTED = "F", "T", "G"  # a depth configuration's letters: stage runs whole, skips its skippable half, or a gate decides per input
ROUTE_THRESHOLD = 0.5  # a routed stage skips for an input whose gate says skip_next >= this
MANIFEST_NAME = "manifest.json"
DEPTH_VARIANTS, WIDTH_VARIANTS = "depth", "width"  # what a stage's base variant (T) is: its skippable half left out, or its blocks narrow
STAGE_VARIANTS = (DEPTH_VARIANTS, WIDTH_VARIANTS)


def depth_problem(depth: object, stages: Sequence[tuple[str, bool]], routable: Sequence[bool] = ()) -> str | None:
    """Why `depth` is not a depth configuration for `stages` ((name, can skip) each), or
    None: one letter per stage, F (full) or T (skip), T only where a stage can skip, and
    G (a gate decides per input) only where `routable` says the stage before outputs a
    depth gate."""
    letters = {FULL, SKIP, ROUTED} if any(routable) else {FULL, SKIP}
    if not isinstance(depth, str) or len(depth) != len(stages) or set(depth) - letters:
        named = f"{FULL} (full), {SKIP} (skip) and {ROUTED} (a gate decides)" if any(routable) else f"{FULL} (full) and {SKIP} (skip)"
        return f"depth must be {len(stages)} letters of {named}, got {depth!r}"
    fixed = [name for (name, can_skip), letter in zip(stages, depth) if letter != FULL and not can_skip]
    if fixed:
        return f"depth {depth!r}: {', '.join(fixed)} cannot skip (no skippable sub-path, so no base variant)"
    ungated = [name for (name, _), letter, gated in zip(stages, depth, routable) if letter == ROUTED and not gated]
    if ungated:
        return f"depth {depth!r}: no depth gate decides for {', '.join(ungated)} (the stage before it outputs no skip_next)"
    return None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[Any]  # "batch" marks the dynamic batch dimension
    dtype: str = "float32"


@dataclass(frozen=True)
class SegmentInfo:
    """One engine: its file, tensors, and the exit it feeds."""

    name: str
    file: str
    sha256: str
    input: TensorInfo
    features_output: str | None  # None for the last segment
    probs_output: str
    score_output: str  # the entropy: the default criterion's score
    exit_index: int
    outputs: list[TensorInfo] = field(default_factory=list)
    score_outputs: dict[str, str] = field(default_factory=dict)  # criterion -> output; lower = more confident
    variants: dict[str, dict[str, str]] = field(default_factory=dict)  # precision -> {file, sha256}, besides fp32
    base: dict[str, str] | None = None  # adaptive depth: {file, sha256} of the stage with its skippable half left out
    route_output: str | None = None  # per-input depth: the output giving P(the next stage may skip), in both variants

    def __post_init__(self) -> None:
        # Manifests without score_outputs (version 1) name only the entropy output.
        if "entropy" not in self.score_outputs:
            object.__setattr__(self, "score_outputs", {"entropy": self.score_output, **self.score_outputs})

    def file_for(self, precision: str, skip: bool = False) -> str:
        if skip:
            if self.base is None:
                raise ManifestError(f"{self.name} has no base variant (nothing to skip)")
            if precision != "fp32":
                raise ManifestError(f"{self.name}: base variants are fp32 only, not {precision!r}")
            return self.base["file"]
        if precision == "fp32":
            return self.file
        if precision not in self.variants:
            raise ManifestError(f"{self.name} has no {precision!r} engine; it has {sorted(['fp32', *self.variants])}")
        return self.variants[precision]["file"]

    def score_of(self, criterion: str) -> str:
        try:
            return self.score_outputs[criterion]
        except KeyError:
            raise ManifestError(f"{self.name} has no {criterion!r} score; it has {sorted(self.criteria)}") from None

    @property
    def criteria(self) -> set[str]:
        return set(self.score_outputs)


@dataclass(frozen=True)
class ExitInfo:
    index: int
    after: str  # block name, or "final"
    criterion: str = "entropy"
    temperature: float = 1.0


@dataclass(frozen=True)
class OperatingPoint:
    """Exit thresholds (one per non-final exit; None = never exit there) and what was
    measured. `engine` "static" runs the manifest's static model instead of the chain:
    the point to serve where exits do not pay."""

    name: str
    thresholds: list[float | None]
    criterion: str = "entropy"
    precision: str = "fp32"
    depth: str | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    engine: str = CHAIN
    route_threshold: float = ROUTE_THRESHOLD  # for G letters in depth


@dataclass(frozen=True)
class Manifest:
    name: str
    input: TensorInfo
    value_range: list[float]
    normalization: dict[str, Any]
    classes: list[str]
    segments: list[SegmentInfo]
    exits: list[ExitInfo]
    operating_points: list[OperatingPoint]
    default_operating_point: str
    batch: dict[str, int]
    build: dict[str, Any]
    static_model: dict[str, str] | None = None
    # the chain's own network in one engine (fp32, full depth): a point with every exit off
    # runs it instead of the segments, without a boundary between them
    whole_model: dict[str, str] | None = None
    profile: dict[str, Any] | None = None  # latencies measured on the device (calibration.latency)
    tensorrt: dict[str, Any] | None = None  # plans built on a device: version, gpu, compute_capability, plans
    # what the base variants are: "depth" (a stage's skippable half left out) or "width"
    # (its blocks at a fraction of their inner channels); the runtime treats both alike
    stage_variants: str = DEPTH_VARIANTS
    schema_version: int = SCHEMA_VERSION
    root: Path = Path(".")

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    def point(self, name: str) -> OperatingPoint:
        for point in self.operating_points:
            if point.name == name:
                return point
        known = ", ".join(p.name for p in self.operating_points)
        raise ManifestError(f"no operating point {name!r} in the manifest; known: {known}")

    @property
    def adaptive(self) -> bool:
        return any(s.base is not None for s in self.segments)

    def full_depth(self) -> str:
        return FULL * len(self.segments)

    def check_depth(self, depth: str | None) -> str:
        """`depth` as a configuration (one letter per segment, T = skip); None = full depth."""
        if depth is None:
            return self.full_depth()
        routable = [False] + [s.route_output is not None for s in self.segments[:-1]]
        problem = depth_problem(depth, [(s.name, s.base is not None) for s in self.segments], routable)
        if problem:
            raise ManifestError(problem)
        return depth

    def runs_base_only(self, name: str) -> bool:
        """Whether point `name` runs every stage that has a base variant at it (no F, no G there)."""
        point = self.point(name)
        depth = self.check_depth(point.depth)
        return self.adaptive and point.engine == CHAIN and all(letter == SKIP for letter, s in zip(depth, self.segments) if s.base is not None)

    def lacking(self, criterion: str) -> list[str]:
        """Early segments that do not output `criterion`'s score (the final exit needs none)."""
        return [s.name for s in self.segments[:-1] if criterion not in s.criteria]

    def path_of(self, relative: str) -> Path:
        return self.root / relative

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,  # whatever it was read as, it is written as this version
            "name": self.name,
            "input": _tensor_dict(self.input) | {"value_range": self.value_range, "normalization": self.normalization},
            "classes": self.classes,
            "segments": [_segment_dict(s) for s in self.segments],
            "exits": [vars(e).copy() for e in self.exits],
            "operating_points": [_point_dict(p) for p in self.operating_points],
            "default_operating_point": self.default_operating_point,
            "batch": self.batch,
            "build": self.build,
            "static_model": self.static_model,
            "whole_model": self.whole_model,
            "profile": self.profile,
            "tensorrt": self.tensorrt,
            "stage_variants": self.stage_variants,
        }


def save_manifest(manifest: Manifest, path: Path) -> None:
    write_json_atomic(path, manifest.to_dict())


def load_manifest(path: Path | str, verify_files: bool = True) -> Manifest:
    """Read, validate and (by default) hash-check a manifest file or the folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (build one with edge-build-engines)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    manifest = _parse(data, path)
    _check_consistency(manifest, path)
    if verify_files:
        verify_manifest_files(manifest)
    return manifest


def verify_manifest_files(manifest: Manifest) -> None:
    """Every file named exists and has the sha256 recorded at build time."""
    for relative, expected in _named_files(manifest):
        file = manifest.path_of(relative)
        if not file.is_file():
            raise ManifestError(f"{file}: engine file named in the manifest is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ManifestError(
                f"{file}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}... "
                "(file changed or corrupt since build; rebuild with edge-build-engines)"
            )


def _named_files(manifest: Manifest) -> list[tuple[str, str]]:
    files = [(s.file, s.sha256) for s in manifest.segments]
    files += [(v["file"], v["sha256"]) for s in manifest.segments for v in s.variants.values()]
    files += [(s.base["file"], s.base["sha256"]) for s in manifest.segments if s.base is not None]
    if manifest.static_model is not None:
        files.append((manifest.static_model["file"], manifest.static_model["sha256"]))
    if manifest.whole_model is not None and manifest.whole_model != manifest.static_model:
        files.append((manifest.whole_model["file"], manifest.whole_model["sha256"]))
    files += [(p["file"], p["sha256"]) for p in (manifest.tensorrt or {}).get("plans", {}).values()]
    return files


def _parse(data: Any, path: Path) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: manifest must be a JSON object")
    version = data.get("schema_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ManifestError(f"{path}: schema_version {version!r} is not supported (this runtime reads {READABLE_VERSIONS})")
    try:
        inp = data["input"]
        return Manifest(
            name=str(data["name"]),
            input=TensorInfo(inp["name"], list(inp["shape"]), inp["dtype"]),
            value_range=list(inp["value_range"]),
            normalization=dict(inp["normalization"]),
            classes=[str(c) for c in data["classes"]],
            segments=[_parse_segment(s) for s in data["segments"]],
            exits=[ExitInfo(**e) for e in data["exits"]],
            operating_points=[_parse_point(p) for p in data["operating_points"]],
            default_operating_point=str(data["default_operating_point"]),
            batch={k: int(v) for k, v in data["batch"].items()},
            build=dict(data["build"]),
            static_model=_parse_file_entry(data.get("static_model")),
            whole_model=_parse_file_entry(data.get("whole_model")),
            profile=_parse_profile(data.get("profile")),
            tensorrt=_parse_tensorrt(data.get("tensorrt")),
            stage_variants=_parse_stage_variants(data.get("stage_variants", DEPTH_VARIANTS)),
            schema_version=version,
            root=path.parent,
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ManifestError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def _parse_stage_variants(entry: Any) -> str:
    if entry not in STAGE_VARIANTS:
        raise ValueError(f"'stage_variants' must be one of {STAGE_VARIANTS}, got {entry!r}")
    return str(entry)


def _parse_file_entry(entry: Any) -> dict[str, str] | None:
    if entry is None:
        return None
    return {"file": _text(entry["file"], "file"), "sha256": _text(entry["sha256"], "sha256")}


def _parse_variants(entry: Any) -> dict[str, dict[str, str]]:
    if not isinstance(entry, dict):
        raise TypeError(f"'variants' must be an object, got {type(entry).__name__}")
    variants = {}
    for precision, file_entry in entry.items():
        if precision == "fp32" or not isinstance(file_entry, dict):
            raise ValueError(f"variant {precision!r} must be a precision other than fp32 with a file and sha256")
        variants[str(precision)] = {"file": _text(file_entry["file"], "file"), "sha256": _text(file_entry["sha256"], "sha256")}
    return variants


def _parse_profile(entry: Any) -> dict[str, Any] | None:
    if entry is not None and not isinstance(entry, dict):
        raise TypeError(f"'profile' must be an object, got {type(entry).__name__}")
    return entry


def _parse_tensorrt(entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("plans"), dict):
        raise TypeError("'tensorrt' must be an object with 'plans'")
    plans = {str(key): {"file": _text(p["file"], "file"), "sha256": _text(p["sha256"], "sha256"), "precision": str(p.get("precision", "fp32"))}
             for key, p in entry["plans"].items()}
    return {"version": _text(entry["version"], "version"), "gpu": _text(entry["gpu"], "gpu"),
            "compute_capability": _text(entry["compute_capability"], "compute_capability"), "plans": plans}


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _parse_segment(s: dict[str, Any]) -> SegmentInfo:
    return SegmentInfo(
        name=s["name"], file=_text(s["file"], "file"), sha256=_text(s["sha256"], "sha256"),
        input=TensorInfo(**s["input"]),
        features_output=s["features_output"], probs_output=s["probs_output"],
        score_output=s["score_output"], exit_index=int(s["exit_index"]),
        outputs=[TensorInfo(**o) for o in s.get("outputs", [])],
        score_outputs={str(k): _text(v, "score_outputs") for k, v in s.get("score_outputs", {}).items()},
        variants=_parse_variants(s.get("variants", {})),
        base=_parse_file_entry(s.get("base")),
        route_output=None if s.get("route_output") is None else _text(s["route_output"], "route_output"),
    )


def _parse_point(p: dict[str, Any]) -> OperatingPoint:
    thresholds = [None if t is None else float(t) for t in p["thresholds"]]
    return OperatingPoint(
        name=p["name"], thresholds=thresholds, criterion=p.get("criterion", "entropy"),
        precision=p.get("precision", "fp32"), depth=p.get("depth"), measured=dict(p.get("measured", {})),
        engine=str(p.get("engine", CHAIN)), route_threshold=float(p.get("route_threshold", ROUTE_THRESHOLD)),
    )


def _check_consistency(m: Manifest, path: Path) -> None:
    if not m.segments:
        raise ManifestError(f"{path}: no segments")
    if [s.exit_index for s in m.segments] != list(range(len(m.segments))) or len(m.exits) != len(m.segments):
        raise ManifestError(f"{path}: segments and exits must pair up in order")
    if any(s.features_output is None for s in m.segments[:-1]) or m.segments[-1].features_output is not None:
        raise ManifestError(f"{path}: every segment but the last must output features")
    if m.schema_version < 3 and m.adaptive:
        raise ManifestError(f"{path}: base variants need schema version 3, this manifest says {m.schema_version}")
    if m.schema_version < 5 and any(s.route_output is not None for s in m.segments):
        raise ManifestError(f"{path}: depth gates need schema version 5, this manifest says {m.schema_version}")
    for segment in m.segments:
        named = {o.name for o in segment.outputs}
        unknown = [o for o in segment.score_outputs.values() if named and o not in named]
        if unknown:
            raise ManifestError(f"{path}: {segment.name} lists score outputs {unknown} that are not among its outputs")
        widths = [o.shape[1] for o in segment.outputs if o.name == segment.probs_output and len(o.shape) == 2]
        if widths and widths[0] != len(m.classes):
            raise ManifestError(f"{path}: {segment.name} outputs {widths[0]} classes, the manifest lists {len(m.classes)}")
    for point in m.operating_points:
        _check_engine(m, point, path)
        if len(point.thresholds) != len(m.segments) - 1:
            raise ManifestError(
                f"{path}: operating point {point.name!r} has {len(point.thresholds)} thresholds "
                f"for {len(m.segments) - 1} early exits"
            )
        if any(t is not None and math.isnan(t) for t in point.thresholds):
            raise ManifestError(f"{path}: operating point {point.name!r} has a NaN threshold")
        if point.precision != "fp32" and any(point.precision not in s.variants for s in m.segments):
            raise ManifestError(f"{path}: operating point {point.name!r} needs {point.precision!r} engines, which not every segment has")
        try:
            depth = m.check_depth(point.depth)
        except ManifestError as exc:
            raise ManifestError(f"{path}: operating point {point.name!r}: {exc}") from None
        if (SKIP in depth or ROUTED in depth) and point.precision != "fp32":
            raise ManifestError(f"{path}: operating point {point.name!r} skips stages at {point.precision!r}; base variants are fp32 only")
        lacking = m.lacking(point.criterion)
        if lacking:
            raise ManifestError(f"{path}: operating point {point.name!r} uses criterion {point.criterion!r}, which {', '.join(lacking)} do(es) not output")
    m.point(m.default_operating_point)


def _check_engine(m: Manifest, point: OperatingPoint, path: Path) -> None:
    if point.engine not in (CHAIN, STATIC):
        raise ManifestError(f"{path}: operating point {point.name!r} runs engine {point.engine!r}; it must be {CHAIN!r} or {STATIC!r}")
    if point.engine != STATIC:
        return
    if m.schema_version < 4:
        raise ManifestError(f"{path}: static operating points need schema version 4, this manifest says {m.schema_version}")
    if m.static_model is None:
        raise ManifestError(f"{path}: operating point {point.name!r} runs the static engine, which this manifest does not have")
    if any(t is not None for t in point.thresholds) or point.precision != "fp32" or point.depth is not None:
        raise ManifestError(f"{path}: static operating point {point.name!r} can have no thresholds, depth or precision but fp32")


def _tensor_dict(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "shape": t.shape, "dtype": t.dtype}


def _segment_dict(s: SegmentInfo) -> dict[str, Any]:
    return {
        "name": s.name, "file": s.file, "sha256": s.sha256, "input": _tensor_dict(s.input),
        "outputs": [_tensor_dict(o) for o in s.outputs], "features_output": s.features_output,
        "probs_output": s.probs_output, "score_output": s.score_output, "exit_index": s.exit_index,
        "score_outputs": s.score_outputs, "variants": s.variants, "base": s.base, "route_output": s.route_output,
    }


def _point_dict(p: OperatingPoint) -> dict[str, Any]:
    return {
        "name": p.name, "thresholds": p.thresholds, "criterion": p.criterion,
        "precision": p.precision, "depth": p.depth, "measured": p.measured,
    } | ({"engine": p.engine} if p.engine != CHAIN else {}) | ({"route_threshold": p.route_threshold} if ROUTED in (p.depth or "") else {})
