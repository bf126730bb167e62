"""The device a TensorRT plan runs on: the lazily imported `tensorrt` module, CUDA's
primary context through pycuda, and the identity plans are recorded and checked with.

Runtime side, so that `edge` needs nothing from `engines`: the plan builder
(engines/tensorrt_build.py) imports these, never the other way round. Every way the
device can be missing is one line: pycuda not installed, pycuda installed but no NVIDIA
driver (`libcuda.so.1` absent), a driver that finds no GPU.
"""

from __future__ import annotations

from typing import Any

from edge.errors import ManifestError, MissingDependencyError, UserError


class NoDeviceError(UserError):
    """There is no usable NVIDIA GPU: no driver, or a driver that sees no device."""


def tensorrt_module() -> Any:
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":
            raise NoDeviceError(f"TensorRT is installed but cannot load ({exc})") from None
        raise MissingDependencyError("TensorRT is not installed: on a Jetson use JetPack's python3-libnvinfer") from None
    except ImportError as exc:  # the bindings are there, their libraries (libnvinfer.so.N) are not
        raise NoDeviceError(f"TensorRT is installed but its libraries cannot load ({exc})") from None
    return tensorrt


def pycuda_driver() -> Any:
    """pycuda.driver, initialised: told apart, pycuda missing and the driver missing."""
    try:
        import pycuda.driver as cuda
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "pycuda":
            raise MissingDependencyError("pycuda is not installed (the 'jetson' extra)") from None
        raise NoDeviceError(f"pycuda cannot load ({exc})") from None
    except ImportError as exc:  # pycuda._driver links libcuda.so.1, which only a driver install provides
        raise NoDeviceError(f"pycuda is installed but the NVIDIA driver is not ({exc}): no GPU can be used here") from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda._driver.Error subclasses (its own RuntimeError, LogicError), not builtins
        raise NoDeviceError(f"CUDA cannot start ({type(exc).__name__}: {exc}): no NVIDIA GPU is visible to this process") from None
    if count == 0:
        raise NoDeviceError("the NVIDIA driver sees no CUDA device")
    return cuda


_PRIMARY: tuple[Any, Any] | None = None


def cuda_context() -> tuple[Any, Any]:
    """(pycuda.driver, device 0's retained primary context): the context torch and
    TensorRT use too. It is current per thread, so callers push and pop it around work."""
    global _PRIMARY
    if _PRIMARY is None:
        cuda = pycuda_driver()
        _PRIMARY = (cuda, cuda.Device(0).retain_primary_context())
    return _PRIMARY


def device_identity() -> tuple[str, str, str]:
    """(TensorRT version, GPU name, compute capability) of this process's device."""
    trt = tensorrt_module()
    cuda, _ = cuda_context()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return trt.__version__, device.name(), f"{major}.{minor}"


def device_record(version: str, gpu: str, compute_capability: str) -> dict[str, str]:
    return {"version": version, "gpu": gpu, "compute_capability": compute_capability}


def check_compatible(recorded: dict[str, Any] | None, version: str, gpu: str, compute_capability: str) -> None:
    """Refuse plans built by another TensorRT or for another GPU, saying which."""
    if not recorded:
        raise ManifestError("the manifest has no TensorRT plans: build them on this device with edge-device-check --build")
    problems = []
    if recorded.get("version") != version:
        problems.append(f"built with TensorRT {recorded.get('version')}, this is {version}")
    if recorded.get("compute_capability") != compute_capability:
        problems.append(f"built for compute capability {recorded.get('compute_capability')}, this GPU is {compute_capability}")
    if recorded.get("gpu") != gpu:
        problems.append(f"built on {recorded.get('gpu')!r}, this GPU is {gpu!r}")
    if problems:
        raise ManifestError("TensorRT plans do not fit this device (" + "; ".join(problems) + "): rebuild them here")
