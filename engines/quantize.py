"""INT8 engines for the CPU: static QDQ quantization of each segment with onnxruntime.

Only the convolutions are quantized (weights per channel, activations per tensor,
ranges from calibration data that each segment really sees: the fp32 chain's features
on calibration images). Pooling, classifiers, softmax and the scores stay fp32 (a conv
inside an exit head is quantized like the backbone's).

onnxruntime's calibrator opens sessions with default threading, which a process that
already runs on the shared thread pool refuses; so quantization runs in a fresh child
process.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.atomic import atomic_path
from edge.errors import UserError

ACTIVATION_TYPES = ("uint8", "int8")


class QuantizationError(UserError, ValueError):
    """A quantization request that cannot be met (activation type, symmetry)."""


@dataclass(frozen=True)
class QuantJob:
    source: Path
    target: Path
    input_name: str
    calibration: np.ndarray  # the segment's real inputs
    activation: str = "uint8"
    batch: int = 32
    symmetric: bool = False  # zero points 0 (int8 activations): what TensorRT takes


def quantize_segments(jobs: Sequence[QuantJob]) -> None:
    """Write every job's INT8 engine; raises RuntimeError naming the segment that failed."""
    for job in jobs:
        if job.activation not in ACTIVATION_TYPES:
            raise QuantizationError(f"activation type must be one of {ACTIVATION_TYPES}, got {job.activation!r}")
        if job.symmetric and job.activation != "int8":
            raise QuantizationError("symmetric quantization needs int8 activations (uint8 centres on 128)")
    context = multiprocessing.get_context("spawn")
    # An executor, not a Pool: a child killed outright (out of memory) raises
    # BrokenProcessPool here instead of leaving the parent waiting forever.
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        for job in jobs:
            try:
                error = pool.submit(_quantize_one, job).result()
            except BrokenProcessPool as exc:
                raise RuntimeError(f"{job.source}: INT8 quantization died ({exc})") from exc
            if error:
                raise RuntimeError(f"{job.source}: INT8 quantization failed: {error}")


def _quantize_one(job: QuantJob) -> str:
    """Runs in the child process; returns an error message, or "" on success."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types
            def __init__(self) -> None:
                self._batches = iter(
                    {job.input_name: np.ascontiguousarray(job.calibration[i : i + job.batch])}
                    for i in range(0, len(job.calibration), job.batch)
                )

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._batches, None)

        activation = QuantType.QUInt8 if job.activation == "uint8" else QuantType.QInt8
        with atomic_path(job.target) as tmp:
            quantize_static(
                str(job.source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                per_channel=True, activation_type=activation, weight_type=QuantType.QInt8,
                # TensorRT takes a float bias and quantizes it itself; an int32 Q/DQ bias it refuses
                extra_options={"ActivationSymmetric": job.symmetric, "WeightSymmetric": True, "QuantizeBias": not job.symmetric},
            )
        return ""
    except Exception as exc:  # reported in the parent with the segment's name
        return f"{type(exc).__name__}: {exc}"

