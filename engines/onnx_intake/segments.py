"""One ONNX model per segment of a cut classifier, and the check that they chain back
into the whole model."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from edge.errors import EdgeError
from engines.intake.cuts import CutPoint
from engines.onnx_intake.model import OnnxClassifier, open_model_session

TOLERANCE = 1e-4  # largest |chain - model| / max(1, |model|), as for the PyTorch export


class ChainMismatchError(EdgeError):
    """The chained segments do not reproduce the whole model."""


def extract_segments(classifier: OnnxClassifier, cuts: Sequence[CutPoint]) -> list[onnx.ModelProto]:
    """The graph between neighbouring cuts (the input first, the logits last), each with
    the weights it uses and a dynamic batch."""
    model = onnx.ModelProto()
    model.CopyFrom(classifier.model)
    _declare(model, [(c.name, c.shape) for c in cuts])
    extractor = onnx.utils.Extractor(model)
    bounds = [classifier.input_name, *(c.name for c in cuts), classifier.logits]
    return [extractor.extract_model([start], [end]) for start, end in pairwise(bounds)]


def _declare(model: onnx.ModelProto, tensors: Sequence[tuple[str, Sequence[int]]]) -> None:
    """Type and shape of each cut tensor, with "batch" as its first dimension: a segment's
    input and output declare them."""
    names = {name for name, _ in tensors}
    kept = [v for v in model.graph.value_info if v.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    model.graph.value_info.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *s]) for n, s in tensors)


def run_chain(sessions: Sequence[Any], images: np.ndarray, keep_all: bool = False) -> list[np.ndarray]:
    """Feed each session the previous one's output; returns the last output, or with
    `keep_all` every session's input (what it is timed on)."""
    x, inputs = images, []
    for session in sessions:
        inputs.append(x)
        x = session.run(None, {session.get_inputs()[0].name: x})[0]
    return inputs if keep_all else [x]


def check_chain(classifier: OnnxClassifier, segments: Sequence[onnx.ModelProto], images: np.ndarray) -> float:
    """Largest relative difference between the chained segments' logits and the whole
    model's, on `images` and a random batch; raises where it exceeds TOLERANCE."""
    whole = classifier.session()
    sessions = [open_model_session(s, classifier.source) for s in segments]
    random = np.random.default_rng(1).random(images.shape, dtype=np.float32)
    worst = 0.0
    for batch in (np.ascontiguousarray(images, dtype=np.float32), random):
        expected = whole.run(None, {classifier.input_name: batch})[0]
        got = run_chain(sessions, batch)[0]
        worst = max(worst, float(np.max(np.abs(got - expected))) / max(1.0, float(np.max(np.abs(expected)))))
    if not worst <= TOLERANCE:
        raise ChainMismatchError(f"{classifier.source}: the chained segments differ from the model by {worst:.3g} (more than {TOLERANCE})")
    return worst
