"""The TensorRT backend: the manifest's plans, chained with the features kept on the GPU.

Behind the same seam as onnxruntime (edge/backends/base.py), written against TensorRT
10.x/11.x and pycuda (docs/jetson.md, References), imported
only when `load` runs. It uses the device's primary context (so torch and TensorRT can
share the process), pushed around every call because a CUDA context is current per
thread. Each calling thread gets its own lane: a CUDA stream, an execution context per
engine and device buffers sized for the manifest's maximum batch, so concurrent
requests never share a buffer. A segment's features stay in device memory and feed
the next engine; only the exit's probabilities and score are copied, into pinned host
memory. Batch compaction gathers the remaining rows on the device. Every call ends
with its stream synchronized, so a spawned backend (another precision, or the
adaptive-depth base variants) may take the features on its own stream.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from edge.backends.base import Backend, ExitOutput
from edge.errors import BackendError, ManifestError
from edge.manifest import Manifest, SegmentInfo

DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1, "int32": 4, "int64": 8}


class DeviceFeatures(NamedTuple):
    """A feature batch in device memory: its address and shape (float32, C-contiguous)."""

    pointer: int
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * 4


def buffer_bytes(shape: Sequence[Any], max_batch: int, dtype: str = "float32") -> int:
    """Bytes for a tensor at the largest batch ("batch" = max_batch)."""
    dims = [max_batch if d == "batch" else int(d) for d in shape]
    if any(d < 1 for d in dims):
        raise ManifestError(f"tensor shape {list(shape)} has a dimension below 1")
    return int(np.prod(dims)) * DTYPE_BYTES[dtype]


def row_copies(rows: Sequence[int], row_bytes: int) -> list[tuple[int, int, int]]:
    """Device copies (source offset, destination offset, bytes) that gather `rows` to the
    front of a buffer, consecutive rows merged into one copy."""
    copies: list[tuple[int, int, int]] = []
    for dst, row in enumerate(rows):
        src_off, dst_off = row * row_bytes, dst * row_bytes
        if copies and copies[-1][0] + copies[-1][2] == src_off and copies[-1][1] + copies[-1][2] == dst_off:
            src, dst_start, size = copies[-1]
            copies[-1] = (src, dst_start, size + row_bytes)
        else:
            copies.append((src_off, dst_off, row_bytes))
    return copies


def plan_key(onnx_file: str, plan_precision: str) -> str:
    """How the manifest's `tensorrt.plans` names a plan: its ONNX file and the precision
    it was built at (an fp32 ONNX may have an fp32 and an fp16 plan)."""
    return f"{onnx_file}@{plan_precision}"


def plan_precision_for(variant: str, override: str | None) -> str:
    return override or variant


def plan_for(manifest: Manifest, segment: SegmentInfo, precision: str, skip: bool, plan_precision: str | None = None) -> str:
    """The plan file for this segment at the manifest `precision` (and depth)."""
    onnx_file = segment.file_for(precision, skip and segment.base is not None)
    key = plan_key(onnx_file, plan_precision_for(precision, plan_precision))
    plans = (manifest.tensorrt or {}).get("plans", {})
    if key not in plans:
        raise ManifestError(f"no TensorRT plan {key}: build the plans on this device (edge-device-check --build)")
    return str(plans[key]["file"])


def plan_batch_range(manifest: Manifest, files: Sequence[str]) -> tuple[int, int]:
    """(smallest, largest) batch every one of these plans takes: what each recorded when
    built (a DLA plan takes its one batch), else the manifest's range."""
    plans = (manifest.tensorrt or {}).get("plans", {})
    default = {"min": int(manifest.batch.get("min", 1)), "max": int(manifest.batch["max"])}
    ranges = [next((p.get("batch", default) for p in plans.values() if p["file"] == f), default) for f in files]
    low, high = max(int(r["min"]) for r in ranges), min(int(r["max"]) for r in ranges)
    if low > high:
        raise ManifestError(f"the TensorRT plans take no common batch size ({ranges}): rebuild them together")
    return low, high


@dataclass
class _Lane:
    """One thread's stream, execution contexts and buffers."""

    stream: Any
    contexts: list[Any]
    inputs: Any  # device buffer for whatever is uploaded (images, or host features)
    staging: np.ndarray  # pinned host buffer uploads go through
    outputs: list[dict[str, Any]]  # per segment: output name -> device buffer
    host: list[dict[str, np.ndarray]]  # per segment: exit output name -> pinned host array
    gather: list[Any] = field(default_factory=list)  # two scratch buffers for compaction


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, plan_precision: str | None = None) -> None:
        """`plan_precision`: load plans built at this precision (e.g. "fp16" plans of the
        fp32 ONNX); default: the precision of the ONNX variant."""
        self.plan_precision = plan_precision
        self._engines: list[Any] = []
        self._segments: list[SegmentInfo] = []
        self._fetch: list[dict[str, tuple[str, str]]] = []  # per segment: criterion -> (probs, score)
        self._lanes: dict[int, _Lane] = {}
        self._lanes_lock = threading.Lock()
        self._cuda: Any = None
        self._context: Any = None
        self._max_batch = 0
        self.batch_range = (0, 0)  # (smallest, largest) batch the loaded plans take
        self._input_bytes = 0
        self._feature_bytes = 4

    def spawn(self) -> TensorRTBackend:
        return TensorRTBackend(self.plan_precision)

    def supports(self, manifest: Manifest, precision: str) -> bool:
        try:
            for segment in manifest.segments:
                plan_for(manifest, segment, precision, False, self.plan_precision)
        except ManifestError:
            return False
        return True

    def load(self, manifest: Manifest, precision: str = "fp32", skip: bool = False) -> None:
        from edge.backends.tensorrt_device import check_compatible, cuda_context, device_identity, tensorrt_module

        trt = tensorrt_module()
        self._cuda, self._context = cuda_context()
        check_compatible(manifest.tensorrt, *device_identity())
        try:
            with self._current():
                self._load(trt, manifest, precision, skip)
        except Exception:
            self.close()  # nothing half-loaded stays allocated
            raise

    def _load(self, trt: Any, manifest: Manifest, precision: str, skip: bool) -> None:
        files = [plan_for(manifest, segment, precision, skip, self.plan_precision) for segment in manifest.segments]
        self.batch_range = plan_batch_range(manifest, files)
        self._max_batch = self.batch_range[1]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        for segment, plan_file in zip(manifest.segments, files):
            path = manifest.path_of(plan_file)
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ManifestError(f"{path}: TensorRT cannot deserialize this plan")
            _check_io(trt, engine, segment, path)
            self._engines.append(engine)
            self._segments.append(segment)
            if segment.features_output:
                shape = next(o.shape for o in segment.outputs if o.name == segment.features_output)
                self._feature_bytes = max(self._feature_bytes, buffer_bytes(shape, self._max_batch))
        # Any segment's input fits: images, or features handed in from the host.
        self._input_bytes = max(buffer_bytes(manifest.input.shape, self._max_batch), self._feature_bytes)
        final = manifest.segments[-1]
        every = set().union(*(s.criteria for s in manifest.segments))
        self._fetch = [{c: (s.probs_output, s.score_of(c)) for c in s.criteria} for s in manifest.segments]
        self._fetch[-1] = {c: (final.probs_output, final.score_of(c if c in final.criteria else "entropy")) for c in every}

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """The primary context current on this thread for the call."""
        if self._context is None:
            raise BackendError("no engine loaded (backend closed or never loaded)")
        self._context.push()
        try:
            yield
        finally:
            self._context.pop()

    def _lane(self) -> _Lane:
        """This thread's lane, made on its first call."""
        if not self._engines:
            raise BackendError("no engine loaded (backend closed or never loaded)")
        key = threading.get_ident()
        lane = self._lanes.get(key)
        if lane is not None:
            return lane
        cuda = self._cuda
        outputs, host = [], []
        for segment in self._segments:
            outputs.append({o.name: cuda.mem_alloc(buffer_bytes(o.shape, self._max_batch)) for o in segment.outputs})
            host.append({
                o.name: cuda.pagelocked_empty([self._max_batch if d == "batch" else int(d) for d in o.shape], np.float32)
                for o in segment.outputs if o.name != segment.features_output
            })
        lane = _Lane(
            cuda.Stream(), [engine.create_execution_context() for engine in self._engines], cuda.mem_alloc(self._input_bytes),
            cuda.pagelocked_empty(self._input_bytes // 4, np.float32), outputs, host,
            [cuda.mem_alloc(self._feature_bytes) for _ in range(2)],
        )
        with self._lanes_lock:
            self._lanes[key] = lane
        return lane

    def upload(self, images: np.ndarray) -> DeviceFeatures:
        """Host images (or host features, for checks) into this lane's device buffer."""
        with self._current():
            lane = self._lane()
            if images.nbytes > self._input_bytes:
                raise BackendError(f"upload of {images.shape} exceeds the buffers sized for batch {self._max_batch}")
            staged = lane.staging[: images.size]
            staged[:] = np.ascontiguousarray(images, dtype=np.float32).ravel()
            self._cuda.memcpy_htod_async(lane.inputs, staged, lane.stream)
            lane.stream.synchronize()
            return DeviceFeatures(int(lane.inputs), tuple(images.shape))

    def run(self, index: int, features: DeviceFeatures, criterion: str = "entropy") -> ExitOutput:
        with self._current():
            lane = self._lane()
            try:
                probs_name, score_name = self._fetch[index][criterion]
            except KeyError:
                raise BackendError(f"segment {index} has no {criterion!r} score; it has {sorted(self._fetch[index])}") from None
            self._enqueue(lane, index, features)
            n = features.rows
            for name in (probs_name, score_name):
                self._cuda.memcpy_dtoh_async(lane.host[index][name][:n], lane.outputs[index][name], lane.stream)
            lane.stream.synchronize()
            probs = np.array(lane.host[index][probs_name][:n])
            scores = np.array(lane.host[index][score_name][:n])
            return ExitOutput(self._features_of(lane, index, n), probs, scores)

    def advance(self, index: int, features: DeviceFeatures) -> DeviceFeatures:
        """The exit head runs inside the plan anyway; nothing is copied to the host."""
        with self._current():
            lane = self._lane()
            self._enqueue(lane, index, features)
            lane.stream.synchronize()
            return self._features_of(lane, index, features.rows)  # type: ignore[return-value]

    def _enqueue(self, lane: _Lane, index: int, features: DeviceFeatures) -> None:
        low, high = self.batch_range
        if not low <= features.rows <= high:
            raise BackendError(f"segment {index}: these plans take batches of {low} to {high} (a DLA plan takes one size), got {features.rows}")
        context, segment = lane.contexts[index], self._segments[index]
        if not context.set_input_shape(segment.input.name, features.shape):
            raise BackendError(f"segment {index}: TensorRT refused input shape {features.shape} (the plan's profile does not cover it)")
        addresses = {segment.input.name: features.pointer} | {name: int(b) for name, b in lane.outputs[index].items()}
        for name, address in addresses.items():
            if not context.set_tensor_address(name, address):
                raise BackendError(f"segment {index}: TensorRT refused the address of {name!r}")
        if not context.execute_async_v3(lane.stream.handle):
            raise BackendError(f"segment {index}: TensorRT failed to enqueue the engine")

    def _features_of(self, lane: _Lane, index: int, n: int) -> DeviceFeatures | None:
        name = self._segments[index].features_output
        if name is None:
            return None
        context = lane.contexts[index]
        shape = tuple(context.get_tensor_shape(name))
        return DeviceFeatures(int(lane.outputs[index][name]), (n, *shape[1:]))

    def take(self, features: DeviceFeatures, rows: np.ndarray) -> DeviceFeatures:
        """The kept rows gathered on the device into a scratch buffer (alternating two, so
        a gather never overwrites its own source)."""
        with self._current():
            lane = self._lane()
            target = lane.gather[0] if int(lane.gather[0]) != features.pointer else lane.gather[1]
            for src, dst, size in row_copies([int(r) for r in rows], features.row_bytes):
                self._cuda.memcpy_dtod_async(int(target) + dst, features.pointer + src, size, lane.stream)
            lane.stream.synchronize()
            return DeviceFeatures(int(target), (len(rows), *features.shape[1:]))

    def close(self) -> None:
        if self._context is None:
            return
        with self._lanes_lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        self._context.push()
        try:
            for lane in lanes:
                for buffer in [lane.inputs, *lane.gather, *(b for outs in lane.outputs for b in outs.values())]:
                    buffer.free()
        finally:
            self._context.pop()
        self._engines, self._segments = [], []
        self._context = None


def _check_io(trt: Any, engine: Any, segment: SegmentInfo, path: Any) -> None:
    """The plan takes and gives what the manifest says, all float32 (the buffers are)."""
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    expected = {segment.input.name} | {o.name for o in segment.outputs}
    if names != expected:
        raise ManifestError(f"{path}: the plan's tensors {sorted(names)} are not the manifest's {sorted(expected)}")
    for name in names:
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise ManifestError(f"{path}: tensor {name!r} is {engine.get_tensor_dtype(name)}, this backend moves float32 only")
