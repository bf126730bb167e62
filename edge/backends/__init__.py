"""Backends by name; device-only ones are imported only when asked for."""

from __future__ import annotations

from typing import Any

from edge.backends.base import Backend, ExitOutput

BACKENDS = ("onnxruntime", "tensorrt")


def create_backend(name: str = "onnxruntime", **options: Any) -> Backend:
    if name == "onnxruntime":
        from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(**options)
    if name == "tensorrt":
        from edge.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(**options)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "ExitOutput", "create_backend"]
