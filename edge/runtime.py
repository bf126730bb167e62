"""Chain segment engines and stop at the first confident exit (docs/architecture.md, decision 3).

After each exit, samples whose score passes that exit's threshold leave the batch and
the next segment runs only on the rest; results come back in input order. Batch 1,
the common case on a device, takes a path with no index bookkeeping. A switched-off
exit (threshold None) is not computed at all: its segment runs as a trunk.

For an adaptive-depth manifest both variants of every stage stay loaded, and an
operating point's depth configuration ("FTF": T = that stage skips its skippable half)
only picks which engine each segment call goes to: switching depth reloads nothing. A
G letter (per-input depth) lets the previous segment's depth gate choose that stage's
variant per input: the batch splits by the choice, each part runs its variant, and the
results come back in input order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge.backends import Backend, create_backend
from edge.backends.base import RoutedOutput, StaticEngine
from edge.errors import BackendError, InputError, ManifestError
from edge.manifest import FULL, ROUTE_THRESHOLD, ROUTED, SKIP, STATIC, Manifest, load_manifest

log = logging.getLogger(__name__)

_FLOAT32 = np.dtype(np.float32)
NEVER = -math.inf  # no score passes: the exit is switched off and its segment runs as a trunk


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs microseconds per call
class InferenceResult:
    """Per-sample arrays in input order, and what the batch cost."""

    predictions: np.ndarray  # (n,) int64
    probabilities: np.ndarray  # (n, classes) float32
    exits: np.ndarray  # (n,) int64: index of the exit taken (num_exits - 1 = final)
    segment_ms: list[float]  # wall time of each segment run for this batch (0 where not run)
    total_ms: float
    operating_point: str
    depths: list[str] | None = None  # per-input depth (G letters): the letters each sample ran, up to its exit


class _Step(NamedTuple):
    """How one segment is called under an operating point: its engine's run and advance."""

    run: Callable[..., Any]
    advance: Callable[[int, Any], Any]


class _Point(NamedTuple):
    name: str
    limits: list[float]
    criterion: str
    precision: str
    depth: str
    steps: list[_Step]
    static: bool = False  # runs the static engine (the chain's steps serve per-call overrides)
    all_off: bool = False  # every exit off at fp32 and full depth: the whole engine can run it
    route_threshold: float = ROUTE_THRESHOLD  # G letters: a stage skips for inputs whose gate says >= this


class Runtime:
    """Loads a manifest and runs batches through its segment chain. Thread-safe."""

    def __init__(
        self,
        manifest: Manifest | Path | str,
        backend: Backend | str = "onnxruntime",
        operating_point: str | None = None,
        precisions: Sequence[str] | None = None,
        **backend_options: Any,
    ) -> None:
        """`precisions`: the engine sets to load besides fp32 (default: every one all
        segments have; each costs its engines' memory again)."""
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.backend = create_backend(backend, **backend_options) if isinstance(backend, str) else backend
        self.backend.load(self.manifest)
        self._backends: dict[tuple[str, bool], Backend] = {("fp32", False): self.backend}  # (precision, skip)
        self._input_shape = tuple(self.manifest.input.shape[1:])
        self._max_batch = self.manifest.batch.get("max", 0)
        self._batch_limit = self._max_batch or math.inf
        self.num_exits = self.manifest.num_exits
        self._exit_ids = [_read_only(np.array([k])) for k in range(self.num_exits)]  # batch-1 results share these
        self._point_cache: dict[str, _Point] = {}
        try:
            for precision in self._extra_precisions(precisions):
                self._backends[(precision, False)] = self._load_variant(precision, False)
            self._variants = {FULL: self.backend}  # per-input depth: the engine a routed group runs, by its letter
            if self.manifest.adaptive:  # base variants are fp32 only
                self._backends[("fp32", True)] = self._variants[SKIP] = self._load_variant("fp32", True)
            self._static, self._no_static = self._load_static()
            self._whole = self._load_whole()
            self._point = self._resolved(operating_point or self._default_point())
        except Exception:
            self.close()  # nothing half-loaded stays open
            raise

    @property
    def operating_point(self) -> str:
        return self._point.name

    @property
    def has_whole(self) -> bool:
        """Whether points with every exit off (fp32, full depth) run as one engine."""
        return self._whole is not None

    def runnable_points(self) -> list[str]:
        """The manifest's points this runtime can run (a static point needs the static engine)."""
        return [p.name for p in self.manifest.operating_points if p.engine != STATIC or self._static is not None]

    def set_operating_point(self, name: str) -> None:
        """Switch between requests: one reference swap, so a running call keeps its point."""
        self._point = self._resolved(name)

    @property
    def criterion(self) -> str:
        return self._point.criterion

    @property
    def precision(self) -> str:
        return self._point.precision

    @property
    def depth(self) -> str:
        return self._point.depth

    def _extra_precisions(self, asked: Sequence[str] | None) -> list[str]:
        available = set.intersection(*(set(s.variants) for s in self.manifest.segments))
        if asked is None:
            return sorted(p for p in available if self.backend.supports(self.manifest, p))
        missing = [p for p in asked if p != "fp32" and p not in available]
        if missing:
            raise ManifestError(f"{self.manifest.name}: no {missing} engines for every segment; available: {sorted(available)}")
        return [p for p in dict.fromkeys(asked) if p != "fp32"]

    def _load_variant(self, precision: str, skip: bool) -> Backend:
        backend = self.backend.spawn()
        backend.load(self.manifest, precision, skip)
        return backend

    def _resolved(self, name: str) -> _Point:
        """A manifest point, resolved once (resolving builds its step list): a governor
        switching back and forth, or a request naming a point, rebuilds nothing."""
        cached = self._point_cache.get(name)
        if cached is None:
            cached = self._point_cache[name] = self._resolve(name)
        return cached

    def _resolve(self, name: str) -> _Point:
        point = self.manifest.point(name)
        depth = self.manifest.check_depth(point.depth)
        if point.engine == STATIC and self._static is None:
            raise ManifestError(f"operating point {name!r} runs the static engine: {self._no_static}")
        steps = self._steps(point.precision, depth)
        limits = exit_limits(point.thresholds)
        return _Point(name, limits, point.criterion, point.precision, depth, steps, point.engine == STATIC,
                      self._all_off(limits, point.precision, depth), point.route_threshold)

    def _load_static(self) -> tuple[StaticEngine | None, str]:
        """The static engine, where a point runs it; else why not (a backend without one)."""
        if not any(p.engine == STATIC for p in self.manifest.operating_points):
            return None, "this manifest has no static operating point"
        try:
            return self.backend.load_static(self.manifest), ""
        except BackendError as exc:
            return None, str(exc)

    def _load_whole(self) -> StaticEngine | None:
        """The chain's network in one engine, where the manifest has one and the backend runs it."""
        whole = self.manifest.whole_model
        if whole is None:
            return None
        if whole == self.manifest.static_model and self._static is not None:
            return self._static  # the same file: one session
        try:
            return self.backend.load_whole(self.manifest)
        except BackendError as exc:
            log.info("points with every exit off run through the segments: %s", exc)
            return None

    def _default_point(self) -> str:
        """The manifest's default, unless it runs the static engine this backend lacks:
        then the fastest measured chain point, said in the log."""
        default = self.manifest.point(self.manifest.default_operating_point)
        if default.engine != STATIC or self._static is not None:
            return default.name
        chain = [p for p in self.manifest.operating_points if p.engine != STATIC]
        fallback = min(chain, key=lambda p: p.measured.get("mean_ms", math.inf)).name
        log.warning("default point %r runs the static engine (%s); starting at %r", default.name, self._no_static, fallback)
        return fallback

    def _steps(self, precision: str, depth: str) -> list[_Step]:
        """Each segment's engine under `precision` and `depth`; refuses engines not loaded.
        Spawned backends share one feature space (the same device), so a segment may hand
        its features to another backend's engine and upload/take go through the first."""
        if (SKIP in depth or ROUTED in depth) and precision != "fp32":
            raise InputError(f"depth {depth!r} skips stages and base variants are fp32 only; ask for fp32, or a depth of {FULL} only")
        steps = []
        for letter in depth:
            backend = self.backend_for(precision, letter == SKIP)
            steps.append(_Step(backend.run, backend.advance))
        return steps

    def infer(
        self, images: np.ndarray, thresholds: Sequence[float | None] | None = None, criterion: str | None = None,
        precision: str | None = None, depth: str | None = None, point_name: str | None = None, whole: bool = True,
    ) -> InferenceResult:
        """Classify a (n, C, H, W) float32 batch at the current operating point, or at
        `point_name` for this call only. `thresholds`, `criterion`, `precision` and
        `depth` override the point's. With every exit off at fp32 and full depth the call
        runs the manifest's whole engine, where it has one (`whole=False`: through the
        segments, e.g. to time them)."""
        self.check_input(images)
        point = self._point  # one read: a concurrent switch does not split this call
        if point_name is not None and point_name != point.name:
            try:
                point = self._resolved(point_name)
            except ManifestError as exc:  # a request's point name is the caller's input
                raise InputError(str(exc)) from None
        name, limits, point_criterion, steps = point.name, point.limits, point.criterion, point.steps
        if thresholds is not None:
            name, limits = "custom", self._custom_thresholds(thresholds)
        if criterion is not None and criterion != point_criterion:
            name, point_criterion = "custom", self._check_criterion(criterion)
        if (precision is not None and precision != point.precision) or (depth is not None and depth != point.depth):
            name, steps = "custom", self._custom_steps(precision or point.precision, depth or point.depth)
        start = time.perf_counter()
        single = self._one_engine(point, name, limits, precision or point.precision, depth or point.depth, whole)
        depths = None
        if ROUTED in (depth or point.depth):
            routed = self._infer_routed_one if len(images) == 1 else self._infer_routed
            probs, exits, segment_ms, depths = routed(depth or point.depth, images, limits, point_criterion, point.route_threshold)
        elif single is not None:
            probs, exits, segment_ms = self._infer_single(single, images)
        elif len(images) == 1:
            probs, exits, segment_ms = self._infer_one(steps, images, limits, point_criterion)
        else:
            probs, exits, segment_ms = self._infer_batch(steps, images, limits, point_criterion)
        total_ms = (time.perf_counter() - start) * 1e3
        return InferenceResult(probs.argmax(axis=1), probs, exits, segment_ms, total_ms, name, depths)

    def backend_for(self, precision: str, skip: bool = False) -> Backend:
        backend = self._backends.get((precision, skip))
        if backend is None:
            if skip:
                raise InputError(f"no base variants at {precision!r}: skipping stages needs an adaptive-depth manifest, at fp32")
            loaded = sorted({p for p, _ in self._backends})
            raise InputError(f"precision {precision!r} is not loaded; this runtime has {loaded}")
        return backend

    def _custom_steps(self, precision: str, depth: str) -> list[_Step]:
        try:
            depth = self.manifest.check_depth(depth)
        except ManifestError as exc:
            raise InputError(str(exc)) from None
        return self._steps(precision, depth)

    def _one_engine(self, point: _Point, name: str, limits: list[float], precision: str, depth: str, whole: bool) -> StaticEngine | None:
        """The one engine that serves this call, if any: the static engine for a static
        point, the whole engine for every exit off at fp32 and full depth."""
        if name == point.name:  # the point's own settings: decided when it was resolved
            if point.static:
                return self._static
            return self._whole if whole and point.all_off else None
        return self._whole if whole and self._all_off(limits, precision, depth) else None

    @staticmethod
    def _all_off(limits: list[float], precision: str, depth: str) -> bool:
        return precision == "fp32" and SKIP not in depth and ROUTED not in depth and all(limit == NEVER for limit in limits[:-1])

    def _infer_single(self, engine: StaticEngine, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """The whole network in one engine: every sample leaves at the final exit."""
        start = time.perf_counter()
        probs = engine(images)
        segment_ms = [0.0] * (self.num_exits - 1) + [(time.perf_counter() - start) * 1e3]
        exits = self._exit_ids[-1] if len(images) == 1 else np.full(len(images), self.num_exits - 1, dtype=np.int64)
        return probs, exits, segment_ms

    def _infer_one(self, steps: list[_Step], image: np.ndarray, limits: list[float], criterion: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
        segment_ms = [0.0] * self.num_exits
        features = self.backend.upload(image)
        clock = time.perf_counter
        last = self.num_exits - 1
        before = clock()
        for k, limit in enumerate(limits):
            if limit == NEVER:
                features = steps[k].advance(k, features)
                now = clock()
                segment_ms[k], before = (now - before) * 1e3, now
                continue
            features, probs, scores = steps[k].run(k, features, criterion)
            now = clock()
            segment_ms[k], before = (now - before) * 1e3, now
            if k == last or float(scores[0]) <= limit:  # compared in float64; NaN exits only at the end
                return probs, self._exit_ids[k], segment_ms
        raise AssertionError("unreachable: the final exit always returns")

    def _infer_batch(self, steps: list[_Step], images: np.ndarray, limits: list[float], criterion: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
        n = len(images)
        all_probs = np.empty((n, len(self.manifest.classes)), dtype=np.float32)
        exits = np.empty(n, dtype=np.int64)
        segment_ms = [0.0] * self.num_exits
        remaining = np.arange(n)
        features = self.backend.upload(images)
        last = self.num_exits - 1
        for k, limit in enumerate(limits):
            t0 = time.perf_counter()
            if limit == NEVER:
                features = steps[k].advance(k, features)
                segment_ms[k] = (time.perf_counter() - t0) * 1e3
                continue
            features, probs, scores = steps[k].run(k, features, criterion)
            segment_ms[k] = (time.perf_counter() - t0) * 1e3
            leave = np.ones(len(remaining), dtype=bool) if k == last else scores <= np.float64(limit)
            all_probs[remaining[leave]] = probs[leave]
            exits[remaining[leave]] = k
            if leave.all():
                break
            if leave.any():
                stay = np.flatnonzero(~leave)
                features = self.backend.take(features, stay)
                remaining = remaining[stay]
        return all_probs, exits, segment_ms

    def _infer_routed(
        self, depth: str, images: np.ndarray, limits: list[float], criterion: str, threshold: float,
    ) -> tuple[np.ndarray, np.ndarray, list[float], list[str]]:
        """Per-input depth: a group of rows runs each segment in one variant; where the
        next letter is G the group splits by its depth gate (skip when skip_next >= threshold)."""
        n = len(images)
        all_probs = np.empty((n, len(self.manifest.classes)), dtype=np.float32)
        exits = np.empty(n, dtype=np.int64)
        taken = np.empty(n, dtype=object)
        segment_ms = [0.0] * self.num_exits
        variants = self._variants  # a G letter passed check_depth, so the base variants are loaded
        groups = [_Group(np.arange(n), self.backend.upload(images), SKIP if depth[0] == SKIP else FULL, "")]
        last = self.num_exits - 1
        for k, limit in enumerate(limits):
            start = time.perf_counter()
            following: list[_Group] = []
            for group in groups:
                backend = variants[group.letter]
                path = group.path + group.letter
                out = self._run_variant(backend, k, group.features, None if limit == NEVER else criterion, k < last and depth[k + 1] == ROUTED)
                rows, features, skip_next = group.rows, out.features, out.skip_next
                if out.scores is not None:
                    leave = np.ones(len(rows), dtype=bool) if k == last else out.scores <= np.float64(limit)
                    all_probs[rows[leave]] = out.probs[leave]  # type: ignore[index]
                    exits[rows[leave]] = k
                    taken[rows[leave]] = path
                    if leave.all():
                        continue
                    if leave.any():
                        stay = np.flatnonzero(~leave)
                        rows, features = rows[stay], backend.take(features, stay)
                        skip_next = None if skip_next is None else skip_next[stay]
                following += _split(backend, rows, features, path, depth[k + 1], skip_next, threshold)
            segment_ms[k] = (time.perf_counter() - start) * 1e3
            groups = following
        return all_probs, exits, segment_ms, taken.tolist()

    def _infer_routed_one(
        self, depth: str, image: np.ndarray, limits: list[float], criterion: str, threshold: float,
    ) -> tuple[np.ndarray, np.ndarray, list[float], list[str]]:
        """Per-input depth at batch 1: no groups, the gate's choice read as one float."""
        segment_ms = [0.0] * self.num_exits
        variants = self._variants
        features = self.backend.upload(image)
        letter, path, last = SKIP if depth[0] == SKIP else FULL, "", self.num_exits - 1
        clock = time.perf_counter
        before = clock()
        for k, limit in enumerate(limits):
            path += letter
            routed_next = k < last and depth[k + 1] == ROUTED
            features, probs, scores, skip_next = self._run_variant(variants[letter], k, features, None if limit == NEVER else criterion, routed_next)
            now = clock()
            segment_ms[k], before = (now - before) * 1e3, now
            if scores is not None and (k == last or float(scores[0]) <= limit):
                return probs, self._exit_ids[k], segment_ms, [path]  # type: ignore[return-value]
            if routed_next:
                letter = SKIP if float(skip_next[0]) >= threshold else FULL
            elif k < last:
                letter = SKIP if depth[k + 1] == SKIP else FULL
        raise AssertionError("unreachable: the final exit always returns")

    @staticmethod
    def _run_variant(backend: Backend, k: int, features: Any, criterion: str | None, routed_next: bool) -> RoutedOutput:
        if routed_next:
            return backend.run_routed(k, features, criterion)
        if criterion is None:
            return RoutedOutput(backend.advance(k, features), None, None, None)  # type: ignore[arg-type]
        features, probs, scores = backend.run(k, features, criterion)
        return RoutedOutput(features, probs, scores, None)  # type: ignore[arg-type]

    def check_input(self, images: Any) -> None:
        """Raise InputError unless `images` is a float32 (n, C, H, W) array the engines accept."""
        # One test for the common good input: every call pays for this, on a 0.5 ms network
        # a few microseconds are a percent.
        if (
            type(images) is np.ndarray and images.dtype is _FLOAT32 and images.shape[1:] == self._input_shape
            and 0 < len(images) <= self._batch_limit and images.flags.c_contiguous
        ):
            return
        self._explain_bad_input(images)

    def _explain_bad_input(self, images: Any) -> None:
        if not isinstance(images, np.ndarray):
            raise InputError(f"input must be a numpy array, got {type(images).__name__}")
        if images.dtype != np.float32:
            raise InputError(f"input dtype must be float32 (images scaled to {self.manifest.value_range}), got {images.dtype}")
        if images.ndim != 4 or tuple(images.shape[1:]) != self._input_shape:
            expected = ("n", *self._input_shape)
            raise InputError(f"input shape must be {expected}, got {tuple(images.shape)}")
        if len(images) == 0:
            raise InputError("input batch is empty")
        if self._max_batch and len(images) > self._max_batch:
            raise InputError(f"batch of {len(images)} exceeds the manifest's maximum batch {self._max_batch}")
        if not images.flags.c_contiguous:
            raise InputError("input must be C-contiguous (use np.ascontiguousarray)")

    def _custom_thresholds(self, thresholds: Sequence[float | None]) -> list[float]:
        if len(thresholds) != self.num_exits - 1:
            raise InputError(f"need {self.num_exits - 1} thresholds (one per early exit), got {len(thresholds)}")
        return exit_limits(thresholds)

    def _check_criterion(self, criterion: str) -> str:
        lacking = self.manifest.lacking(criterion)
        if lacking:
            raise InputError(f"criterion {criterion!r} is not in the engines ({', '.join(lacking)} lack it)")
        return criterion

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        # the one-engine paths hold their sessions too: a closed runtime runs nothing
        self._static = self._whole = None


class _Group(NamedTuple):
    """Rows of a per-input-depth batch that run the next segment in one variant."""

    rows: np.ndarray
    features: Any
    letter: str  # the variant they run next: F or T
    path: str  # the letters they ran so far


def _split(backend: Backend, rows: np.ndarray, features: Any, path: str, letter: str, skip_next: np.ndarray | None, threshold: float) -> list[_Group]:
    """The rows going on, by the variant each runs next: the depth's letter, or the gate's choice for G."""
    if letter != ROUTED or skip_next is None:
        return [_Group(rows, features, SKIP if letter == SKIP else FULL, path)]
    to_base = skip_next >= threshold
    groups = []
    for choice, part in ((FULL, ~to_base), (SKIP, to_base)):
        if part.all():
            return [_Group(rows, features, choice, path)]
        if part.any():
            keep = np.flatnonzero(part)
            groups.append(_Group(rows[keep], backend.take(features, keep), choice, path))
    return groups


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def exit_limits(thresholds: Sequence[float | None]) -> list[float]:
    """Per-exit limits, plus +inf for the final exit (which takes everything left).
    Plain floats, so the batch-1 path compares without numpy overhead."""
    return [NEVER if t is None else float(t) for t in thresholds] + [math.inf]
