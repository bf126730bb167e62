"""The default CPU backend: one onnxruntime session per segment, threads shared.

Measured on a 2-core machine: with default threading every session keeps its own
spinning pool and a chain of sessions ran 2-6.5x slower than one static model. So the
sessions share one process-wide pool (or, where that is already taken, use their own
pools with spinning off).

Each segment but the last also gets a trunk session, its graph pruned to the features
output, for operating points that switch its exit off: onnxruntime runs every node of
a session whatever is fetched, so only a pruned graph skips the exit head. Trunks copy
their segment's weights; `trunks=False` saves that memory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Backend, ExitOutput, Features, RoutedOutput, StaticEngine
from edge.errors import BackendError, ManifestError, MissingDependencyError
from edge.manifest import Manifest, SegmentInfo

log = logging.getLogger(__name__)

_GLOBAL_POOL_LOCK = threading.Lock()
_global_pool_threads: int | None = None


def online_cores() -> int:
    """Cores this process may run on (low-power modes switch cores off)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _use_global_pool(ort: Any, threads: int) -> bool:
    """Size onnxruntime's process-wide pool once; False if it cannot be used here."""
    global _global_pool_threads
    with _GLOBAL_POOL_LOCK:
        if _global_pool_threads is None:
            try:
                ort.set_global_thread_pool_sizes(threads, 1)
            except RuntimeError as exc:  # the environment already exists without it
                log.warning("onnxruntime global thread pool unavailable (%s); using per-session pools", exc)
                _global_pool_threads = 0
                return False
            _global_pool_threads = threads
        elif _global_pool_threads and _global_pool_threads != threads:
            log.info("onnxruntime global pool already has %d threads; keeping it", _global_pool_threads)
        return bool(_global_pool_threads)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        threads: int | None = None,
        shared_threads: bool = True,
        spinning: bool = False,
        optimization: str = "all",
        providers: list[Any] | None = None,
        trunks: bool = True,
    ) -> None:
        self.threads = threads or online_cores()
        self.shared_threads = shared_threads
        self.spinning = spinning
        self.optimization = optimization
        self.providers = providers or ["CPUExecutionProvider"]
        self.trunks = trunks
        self._sessions: list[Any] = []
        self._trunk_runners: list[Callable[[list[str], dict[str, Any], Any], list[np.ndarray]]] = []
        self._runners: list[Callable[[list[str], dict[str, Any], Any], list[np.ndarray]]] = []
        self._feeds: list[str] = []
        self._fetches: list[dict[str, list[str]]] = []  # per segment: criterion -> output names
        self._trunk_fetches: list[list[str]] = []
        self._route_fetches: list[dict[str | None, list[str]]] = []  # per segment: criterion (None: exit off) -> names
        self._route_trunk_runners: dict[int, Callable[[list[str], dict[str, Any], Any], list[np.ndarray]]] = {}

    def spawn(self) -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(self.threads, self.shared_threads, self.spinning, self.optimization, list(self.providers), self.trunks)

    def session_options(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options.graph_optimization_level = levels[self.optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Once the process-wide pool exists onnxruntime refuses per-session pools, so every
        # later session joins it whatever it asked for.
        if _global_pool_threads or (self.shared_threads and _use_global_pool(ort, self.threads)):
            options.use_per_session_threads = False
        else:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return options

    def load(self, manifest: Manifest, precision: str = "fp32", skip: bool = False) -> None:
        options = self.session_options()
        files = [manifest.path_of(s.file_for(precision, skip and s.base is not None)) for s in manifest.segments]
        self._sessions = [self.open_session(path, options) for path in files]
        self._runners = [self.runner(session) for session in self._sessions]
        self._feeds = [s.input.name for s in manifest.segments]
        self._fetches = [{c: _fetch_names(s, c) for c in s.criteria} for s in manifest.segments]
        # The final exit takes whatever reaches it: under any criterion it reads its entropy.
        final = manifest.segments[-1]
        every = set().union(*(s.criteria for s in manifest.segments))
        self._fetches[-1] = {c: _fetch_names(final, c if c in final.criteria else "entropy") for c in every}
        for path, session, feed, fetches in zip(files, self._sessions, self._feeds, self._fetches):
            _check_interface(path, session, feed, fetches)
        self._trunk_fetches = [[s.features_output or ""] for s in manifest.segments[:-1]]  # set on every early segment (the manifest checks)
        self._route_fetches = [_route_fetch_names(s, fetches) for s, fetches in zip(manifest.segments, self._fetches)]
        for path, session, feed, segment in zip(files, self._sessions, self._feeds, manifest.segments):
            if segment.route_output is not None:
                _check_interface(path, session, feed, {"depth gate": [segment.route_output]})
        if self.trunks:
            trunks = [self._trunk_session(path, s, options) for path, s in zip(files, manifest.segments[:-1])]
            self._trunk_runners = [self.runner(session) for session in trunks]
            # a depth-gated segment with its exit off: the features and the gate, no exit head
            self._route_trunk_runners = {
                k: self.runner(self._trunk_session(path, s, options, with_route=True))
                for k, (path, s) in enumerate(zip(files, manifest.segments)) if s.route_output is not None
            }

    def load_static(self, manifest: Manifest) -> StaticEngine:
        return self._load_single(manifest, manifest.static_model, "static")

    def load_whole(self, manifest: Manifest) -> StaticEngine:
        return self._load_single(manifest, manifest.whole_model, "whole")

    def _load_single(self, manifest: Manifest, entry: dict[str, str] | None, what: str) -> StaticEngine:
        """One engine for the whole network: images in, probabilities out."""
        if entry is None:
            raise ManifestError(f"{manifest.name}: no {what} model in the manifest")
        path = manifest.path_of(entry["file"])
        session = self.open_session(path)
        feed = [i.name for i in session.get_inputs()]
        if len(feed) != 1 or "probs" not in {o.name for o in session.get_outputs()}:
            raise ManifestError(f"{path}: the {what} engine must take one input and output 'probs'")
        self._sessions.append(session)  # closed with the rest
        run = self.runner(session)
        return lambda images: run(["probs"], {feed[0]: images}, None)[0]

    def _trunk_session(self, path: Path, segment: SegmentInfo, options: Any, with_route: bool = False) -> Any:
        import onnx
        import onnxruntime as ort

        from edge.backends.onnx_prune import prune_to_outputs

        outputs = [segment.features_output] + ([segment.route_output] if with_route else [])
        try:
            trunk = prune_to_outputs(onnx.load(str(path)), outputs)  # type: ignore[arg-type]
            return ort.InferenceSession(trunk.SerializeToString(), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ManifestError(f"{path}: onnxruntime cannot load this engine without its exit ({exc})") from exc

    def runner(self, session: Any) -> Callable[[list[str], dict[str, Any], Any], list[np.ndarray]]:
        """The session's run. On the CPU provider, the compiled session's own run: the Python
        wrapper re-validates input names and handles GPU provider fallback on every call,
        several microseconds per segment that a 0.1 ms segment notices."""
        compiled = getattr(session, "_sess", None)
        if self.providers == ["CPUExecutionProvider"] and compiled is not None:
            return compiled.run
        return session.run

    def open_session(self, path: Path | bytes, options: Any | None = None) -> Any:
        """An InferenceSession with this backend's options, on a file or a serialized model.
        Every session in a process that uses the shared pool must be made this way:
        onnxruntime refuses per-session pools then."""
        import onnxruntime as ort

        options = options or self.session_options()
        self._check_providers(ort)
        where = "a serialized model" if isinstance(path, bytes) else str(path)
        try:
            model = path if isinstance(path, bytes) else str(path)
            session = ort.InferenceSession(model, sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ManifestError(f"{where}: onnxruntime cannot load this engine ({exc})") from exc
        wanted = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
        if session.get_providers()[0] != wanted:  # onnxruntime fell back after the provider failed
            raise BackendError(f"{where}: {wanted} could not take this engine; onnxruntime would run it on {session.get_providers()}")
        return session

    def _check_providers(self, ort: Any) -> None:
        """onnxruntime silently falls back to the CPU for a provider it lacks: say so instead."""
        names = [p[0] if isinstance(p, tuple) else p for p in self.providers]
        missing = [n for n in names if n not in ort.get_available_providers()]
        if missing:
            raise MissingDependencyError(
                f"this onnxruntime has no {missing}; it has {ort.get_available_providers()} "
                "(the GPU providers need onnxruntime-gpu, built with TensorRT for the TensorRT one)"
            )

    def upload(self, images: np.ndarray) -> Features:
        return images

    def run(self, index: int, features: Features, criterion: str = "entropy") -> ExitOutput:
        try:
            fetch = self._fetches[index][criterion]
        except IndexError:
            raise BackendError(f"segment {index}: no engine loaded (backend closed or never loaded)") from None
        except KeyError:
            raise BackendError(f"segment {index} has no {criterion!r} score; it has {sorted(self._fetches[index])}") from None
        outputs = self._call(self._runners[index], index, fetch, features)
        if len(outputs) == 3:
            return ExitOutput(outputs[0], outputs[1], outputs[2])
        return ExitOutput(None, outputs[0], outputs[1])

    def advance(self, index: int, features: Features) -> Features:
        if not self._trunk_runners:  # trunks off, or closed: run() says which
            return super().advance(index, features)
        try:
            return self._trunk_runners[index](self._trunk_fetches[index], {self._feeds[index]: features}, None)[0]
        except Exception as exc:  # onnxruntime's errors are untyped
            raise BackendError(f"segment {index} (exit off) failed in onnxruntime: {exc}") from exc

    def run_routed(self, index: int, features: Features, criterion: str | None) -> RoutedOutput:
        try:
            fetch = self._route_fetches[index][criterion]
        except IndexError:
            raise BackendError(f"segment {index}: no engine loaded (backend closed or never loaded)") from None
        except KeyError:
            raise BackendError(f"segment {index} has no depth gate (skip_next) under {criterion!r}") from None
        run = self._route_trunk_runners.get(index, self._runners[index]) if criterion is None else self._runners[index]
        outputs = self._call(run, index, fetch, features)
        if criterion is None:
            return RoutedOutput(outputs[0], None, None, outputs[1])
        return RoutedOutput(outputs[0], outputs[1], outputs[2], outputs[3])

    def _call(self, run: Callable[[list[str], dict[str, Any], Any], list[np.ndarray]], index: int, fetch: list[str], features: Features) -> list[np.ndarray]:
        try:
            return run(fetch, {self._feeds[index]: features}, None)
        except Exception as exc:  # onnxruntime's errors are untyped
            raise BackendError(f"segment {index} failed in onnxruntime: {exc}") from exc

    def take(self, features: Features, rows: np.ndarray) -> Features:
        return np.ascontiguousarray(features[rows])

    def close(self) -> None:
        self._sessions, self._runners, self._trunk_runners = [], [], []
        self._fetches, self._trunk_fetches, self._feeds, self._route_fetches = [], [], [], []
        self._route_trunk_runners = {}


def _check_interface(path: Path, session: Any, feed: str, fetches: dict[str, list[str]]) -> None:
    """The engine has the input and outputs the manifest names (a wrong file fails here, not mid-request)."""
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [feed]:
        raise ManifestError(f"{path}: the engine takes {inputs}, the manifest says {[feed]}")
    outputs = {o.name for o in session.get_outputs()}
    missing = sorted({name for names in fetches.values() for name in names} - outputs)
    if missing:
        raise ManifestError(f"{path}: the engine lacks outputs {missing} that the manifest names; it has {sorted(outputs)}")


def _route_fetch_names(segment: SegmentInfo, fetches: dict[str, list[str]]) -> dict[str | None, list[str]]:
    """A depth-gated segment's fetches with skip_next last, per criterion and with the exit off."""
    if segment.route_output is None or segment.features_output is None:
        return {}
    routed: dict[str | None, list[str]] = {c: [*names, segment.route_output] for c, names in fetches.items()}
    routed[None] = [segment.features_output, segment.route_output]
    return routed


def _fetch_names(segment: SegmentInfo, criterion: str) -> list[str]:
    names = [segment.probs_output, segment.score_of(criterion)]
    return [segment.features_output, *names] if segment.features_output else names


def gpu_providers(
    kind: str = "tensorrt", cache_dir: str | None = None, fp16: bool = False, int8: bool = False, dla_core: int | None = None,
) -> list[Any]:
    """onnxruntime's TensorRT or CUDA execution provider as a `providers` list (most
    preferred first, the CPU last for what they cannot run), for OnnxRuntimeBackend or
    `Runtime(..., providers=...)`. INT8 here means the graph's own Q/DQ nodes."""
    if kind == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind != "tensorrt":
        raise ValueError(f"GPU provider must be 'tensorrt' or 'cuda', got {kind!r}")
    options: dict[str, Any] = {"trt_fp16_enable": fp16, "trt_int8_enable": int8}
    if cache_dir is not None:
        options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir, "trt_timing_cache_enable": True}
    if dla_core is not None:
        options |= {"trt_dla_enable": True, "trt_dla_core": dla_core}
    return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]
