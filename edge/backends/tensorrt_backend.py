"""The TensorRT backend: the manifest's plans, chained with the features kept on the GPU.

Behind the same seam as onnxruntime (edge/backends/base.py), written against TensorRT
10.x/11.x and pycuda (../shared/reference/tensorrt-jetson.md, sections 3-5), imported
only when `load` runs. pycuda uses the primary context (pycuda.autoprimaryctx) so torch
and TensorRT can share the process. One CUDA stream; per segment, device buffers sized
for the manifest's maximum batch. A segment's features stay in device memory and feed
the next engine; only the exit's probabilities and score are copied to pinned host
memory. Batch compaction gathers the remaining rows on the device. Every call holds
one lock: one stream and one execution context per engine serve one call at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

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


def plan_for(manifest: Manifest, segment: SegmentInfo, precision: str, skip: bool) -> str:
    """The plan file built from the ONNX file this segment runs at `precision` (and depth)."""
    onnx_file = segment.file_for(precision, skip and segment.base is not None)
    plans = (manifest.tensorrt or {}).get("plans", {})
    if onnx_file not in plans:
        raise ManifestError(f"no TensorRT plan for {onnx_file}: build the plans on this device (edge-device-check --build)")
    return str(plans[onnx_file]["file"])


@dataclass
class _Engine:
    engine: Any
    context: Any
    input_name: str
    features_name: str | None
    outputs: dict[str, Any]  # output name -> device allocation
    host: dict[str, np.ndarray]  # output name -> pinned host array (exit outputs only)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self) -> None:
        self._engines: list[_Engine] = []
        self._fetch: list[dict[str, tuple[str, str]]] = []  # per segment: criterion -> (probs, score)
        self._lock = threading.Lock()
        self._stream: Any = None
        self._cuda: Any = None
        self._input_buffer: Any = None
        self._gather: list[Any] = []  # two scratch buffers per feature size, for compaction
        self._max_batch = 0

    def spawn(self) -> "TensorRTBackend":
        return TensorRTBackend()

    def load(self, manifest: Manifest, precision: str = "fp32", skip: bool = False) -> None:
        from engines.tensorrt_build import _pycuda, _tensorrt, check_compatible, device_identity

        trt, cuda = _tensorrt(), _pycuda()
        check_compatible(manifest.tensorrt, *device_identity())
        self._cuda, self._stream = cuda, cuda.Stream()
        self._max_batch = manifest.batch["max"]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        largest_features = 0
        for segment in manifest.segments:
            path = manifest.path_of(plan_for(manifest, segment, precision, skip))
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ManifestError(f"{path}: TensorRT cannot deserialize this plan")
            self._engines.append(self._prepare(engine, segment, manifest))
            if segment.features_output:
                shape = next(o.shape for o in segment.outputs if o.name == segment.features_output)
                largest_features = max(largest_features, buffer_bytes(shape, self._max_batch))
        # Big enough for any segment's input: images, or features handed in from the host.
        self._input_buffer = cuda.mem_alloc(max(buffer_bytes(manifest.input.shape, self._max_batch), largest_features))
        self._gather = [cuda.mem_alloc(max(largest_features, 4)) for _ in range(2)]
        final = manifest.segments[-1]
        every = set().union(*(s.criteria for s in manifest.segments))
        self._fetch = [{c: (s.probs_output, s.score_of(c)) for c in s.criteria} for s in manifest.segments]
        self._fetch[-1] = {c: (final.probs_output, final.score_of(c if c in final.criteria else "entropy")) for c in every}

    def _prepare(self, engine: Any, segment: SegmentInfo, manifest: Manifest) -> _Engine:
        cuda = self._cuda
        outputs, host = {}, {}
        for info in segment.outputs:
            outputs[info.name] = cuda.mem_alloc(buffer_bytes(info.shape, self._max_batch))
            if info.name != segment.features_output:
                dims = [self._max_batch if d == "batch" else int(d) for d in info.shape]
                host[info.name] = cuda.pagelocked_empty(dims, np.float32)
        return _Engine(engine, engine.create_execution_context(), segment.input.name, segment.features_output, outputs, host)

    def upload(self, images: np.ndarray) -> DeviceFeatures:
        """Host images (or host features, for checks) into device memory."""
        with self._lock:
            self._require()
            self._cuda.memcpy_htod_async(self._input_buffer, np.ascontiguousarray(images), self._stream)
            return DeviceFeatures(int(self._input_buffer), tuple(images.shape))

    def run(self, index: int, features: DeviceFeatures, criterion: str = "entropy") -> ExitOutput:
        with self._lock:
            self._require()
            try:
                probs_name, score_name = self._fetch[index][criterion]
            except KeyError:
                raise BackendError(f"segment {index} has no {criterion!r} score; it has {sorted(self._fetch[index])}") from None
            engine = self._enqueue(index, features)
            n = features.rows
            for name in (probs_name, score_name):
                self._cuda.memcpy_dtoh_async(engine.host[name], engine.outputs[name], self._stream)
            self._stream.synchronize()
            probs = np.array(engine.host[probs_name][:n])
            scores = np.array(engine.host[score_name][:n])
            return ExitOutput(self._features_of(engine, n), probs, scores)

    def advance(self, index: int, features: DeviceFeatures) -> DeviceFeatures:
        """The exit head runs inside the plan anyway; nothing is copied to the host."""
        with self._lock:
            self._require()
            engine = self._enqueue(index, features)
            self._stream.synchronize()
            return self._features_of(engine, features.rows)  # type: ignore[return-value]

    def _enqueue(self, index: int, features: DeviceFeatures) -> _Engine:
        engine = self._engines[index]
        context = engine.context
        if not context.set_input_shape(engine.input_name, features.shape):
            raise BackendError(f"segment {index}: TensorRT refused input shape {features.shape}")
        context.set_tensor_address(engine.input_name, features.pointer)
        for name, buffer in engine.outputs.items():
            context.set_tensor_address(name, int(buffer))
        if not context.execute_async_v3(self._stream.handle):
            raise BackendError(f"segment {index}: TensorRT failed to enqueue the engine")
        return engine

    def _features_of(self, engine: _Engine, n: int) -> DeviceFeatures | None:
        if engine.features_name is None:
            return None
        shape = tuple(engine.context.get_tensor_shape(engine.features_name))
        return DeviceFeatures(int(engine.outputs[engine.features_name]), (n, *shape[1:]))

    def take(self, features: DeviceFeatures, rows: np.ndarray) -> DeviceFeatures:
        """The kept rows gathered on the device into a scratch buffer (alternating two, so
        a gather never overwrites its own source)."""
        with self._lock:
            self._require()
            target = self._gather[0] if int(self._gather[0]) != features.pointer else self._gather[1]
            for src, dst, size in row_copies([int(r) for r in rows], features.row_bytes):
                self._cuda.memcpy_dtod_async(int(target) + dst, features.pointer + src, size, self._stream)
            return DeviceFeatures(int(target), (len(rows), *features.shape[1:]))

    def _require(self) -> None:
        if not self._engines:
            raise BackendError("no engine loaded (backend closed or never loaded)")

    def close(self) -> None:
        with self._lock:
            for engine in self._engines:
                for buffer in engine.outputs.values():
                    buffer.free()
            for buffer in [self._input_buffer, *self._gather]:
                if buffer is not None:
                    buffer.free()
            self._engines, self._gather, self._input_buffer = [], [], None
