"""edge.manifest: round trip, validation, and hash checks that name the bad file."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.atomic import sha256_file
from edge.errors import ManifestError
from edge.manifest import MANIFEST_NAME, SCHEMA_VERSION, OperatingPoint, SegmentInfo, TensorInfo, depth_problem, load_manifest, save_manifest
from tests.helpers import read_manifest_json, write_manifest_json


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_load_round_trip(built, tmp_path: Path) -> None:
    manifest, folder = built
    loaded = load_manifest(folder / MANIFEST_NAME)
    assert loaded == manifest
    assert load_manifest(folder) == loaded  # a folder works too
    assert loaded.root == folder and loaded.path_of("segment_1.onnx") == folder / "segment_1.onnx"
    assert loaded.num_exits == 3 and loaded.schema_version == SCHEMA_VERSION
    # to_dict is what is on disk, and saving a loaded manifest gives the same manifest back.
    assert loaded.to_dict() == read_manifest_json(folder)
    save_manifest(loaded, tmp_path / "copy" / MANIFEST_NAME)
    resaved = load_manifest(tmp_path / "copy", verify_files=False)
    assert replace(resaved, root=folder) == loaded
    assert [p.name for p in loaded.operating_points] == ["full", "eager", "late"]
    assert loaded.point("late").thresholds == [None, 1e9]


def test_hashes_in_manifest_are_the_files(built) -> None:
    manifest, folder = built
    for segment in manifest.segments:
        assert segment.sha256 == sha256_file(folder / segment.file)
    assert manifest.static_model["sha256"] == sha256_file(folder / manifest.static_model["file"])


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found") as info:
        load_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(info.value)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nowhere" / "manifest.json")


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_invalid_json(built_copy: Path, text: str) -> None:
    path = built_copy / MANIFEST_NAME
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestError, match="not valid JSON") as info:
        load_manifest(built_copy)
    assert str(path) in str(info.value)


def test_json_that_is_not_an_object(built_copy: Path) -> None:
    (built_copy / MANIFEST_NAME).write_text("[1, 2, 3]")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        load_manifest(built_copy)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", None])
def test_wrong_schema_version(built_copy: Path, version) -> None:
    data = read_manifest_json(built_copy)
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="schema_version .* is not supported"):
        load_manifest(built_copy)


def test_a_version_1_manifest_still_loads_and_is_written_as_the_current_version(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["schema_version"] = 1
    for segment in data["segments"]:
        del segment["score_outputs"], segment["variants"]
    del data["profile"]
    write_manifest_json(built_copy, data)
    manifest = load_manifest(built_copy)
    assert manifest.schema_version == 1 and manifest.segments[0].criteria == {"entropy"}
    save_manifest(manifest, built_copy / MANIFEST_NAME)
    assert read_manifest_json(built_copy)["schema_version"] == SCHEMA_VERSION == 5


@pytest.mark.parametrize(
    ("variants", "message"),
    [(None, "'variants' must be an object"), ({"int8": None}, "variant 'int8' must be"),
     ({"fp32": {"file": "segment_0.onnx", "sha256": "0" * 64}}, "variant 'fp32' must be")],
)
def test_malformed_variants_are_manifest_errors(built_copy: Path, variants, message: str) -> None:
    data = read_manifest_json(built_copy)
    data["segments"][0]["variants"] = variants
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match=message):
        load_manifest(built_copy)


def test_a_score_output_the_engine_lacks_is_named(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["segments"][1]["score_outputs"]["maxprob"] = "confidence"
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="segment_1 lists score outputs \\['confidence'\\]"):
        load_manifest(built_copy)


@pytest.mark.parametrize("key", ["classes", "segments", "input", "batch"])
def test_missing_key_is_a_manifest_error(built_copy: Path, key: str) -> None:
    data = read_manifest_json(built_copy)
    del data[key]
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="malformed manifest"):
        load_manifest(built_copy)


@pytest.mark.parametrize("name", ["segment_0.onnx", "segment_1.onnx", "segment_2.onnx", "static.onnx"])
def test_tampered_file_is_named(built_copy: Path, name: str) -> None:
    flip_byte(built_copy / name)
    with pytest.raises(ManifestError, match="sha256") as info:
        load_manifest(built_copy)
    message = str(info.value)
    assert str(built_copy / name) in message
    others = {"segment_0.onnx", "segment_1.onnx", "segment_2.onnx", "static.onnx"} - {name}
    assert not any(other in message for other in others)


@pytest.mark.parametrize("name", ["segment_2.onnx", "static.onnx"])
def test_missing_file_is_named(built_copy: Path, name: str) -> None:
    (built_copy / name).unlink()
    with pytest.raises(ManifestError, match="missing") as info:
        load_manifest(built_copy)
    assert str(built_copy / name) in str(info.value)


def test_verify_files_false_skips_hashing(built_copy: Path) -> None:
    flip_byte(built_copy / "segment_1.onnx")
    (built_copy / "static.onnx").unlink()
    manifest = load_manifest(built_copy, verify_files=False)
    assert manifest.num_exits == 3
    with pytest.raises(ManifestError):  # and the same folder fails when hashes are checked
        load_manifest(built_copy)


@pytest.mark.parametrize("thresholds", [[1.0], [1.0, 2.0, 3.0], []])
def test_operating_point_with_wrong_threshold_count(built_copy: Path, thresholds) -> None:
    data = read_manifest_json(built_copy)
    data["operating_points"].append({"name": "broken", "thresholds": thresholds})
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match=rf"'broken' has {len(thresholds)} thresholds for 2 early exits"):
        load_manifest(built_copy)


def test_operating_point_with_nan_threshold(built_copy: Path) -> None:
    path = built_copy / MANIFEST_NAME
    data = read_manifest_json(built_copy)
    data["operating_points"].append({"name": "nan", "thresholds": [0.5, None]})
    path.write_text(json.dumps(data).replace("[0.5, null]", "[NaN, null]"))
    with pytest.raises(ManifestError, match="'nan' has a NaN threshold"):
        load_manifest(built_copy)


def test_operating_point_defaults_filled_in(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["operating_points"].append({"name": "minimal", "thresholds": [0.25, None]})
    write_manifest_json(built_copy, data)
    point = load_manifest(built_copy).point("minimal")
    assert point.thresholds == [0.25, None]
    assert (point.criterion, point.precision, point.depth, point.measured) == ("entropy", "fp32", None, {})


def test_unknown_operating_point_name(built) -> None:
    manifest, _ = built
    with pytest.raises(ManifestError, match="no operating point 'turbo'") as info:
        manifest.point("turbo")
    assert "full, eager, late" in str(info.value)


def test_unknown_default_operating_point(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["default_operating_point"] = "turbo"
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="no operating point 'turbo'"):
        load_manifest(built_copy)


def test_segments_and_exits_must_pair_up(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["exits"] = data["exits"][:2]
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="pair up"):
        load_manifest(built_copy)


def test_last_segment_must_not_output_features(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["segments"][-1]["features_output"] = "features"
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="every segment but the last must output features"):
        load_manifest(built_copy)


def test_corrupt_onnx_with_updated_hash_fails_in_the_backend(built_copy: Path) -> None:
    from edge.runtime import Runtime

    bad = built_copy / "segment_1.onnx"
    bad.write_bytes(b"this is not an onnx model" * 10)
    data = read_manifest_json(built_copy)
    data["segments"][1]["sha256"] = sha256_file(bad)
    write_manifest_json(built_copy, data)
    load_manifest(built_copy)  # hashes agree now: the manifest alone looks fine
    with pytest.raises(ManifestError, match="onnxruntime cannot load this engine") as info:
        Runtime(built_copy)
    assert str(bad) in str(info.value)
    assert "segment_0.onnx" not in str(info.value) and "segment_2.onnx" not in str(info.value)


def test_artifacts_get_normal_file_permissions(built_copy: Path, tmp_path: Path) -> None:
    """Atomic writes give what a plain write gives (mkstemp alone would leave 0600)."""
    old = os.umask(0o022)
    try:
        manifest = load_manifest(built_copy)
        save_manifest(manifest, tmp_path / "out" / MANIFEST_NAME)
        plain = tmp_path / "out" / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    mode = (tmp_path / "out" / MANIFEST_NAME).stat().st_mode & 0o777
    assert mode == plain.stat().st_mode & 0o777 == 0o644


def test_manifest_without_segments(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["segments"], data["exits"], data["operating_points"] = [], [], [{"name": "full", "thresholds": []}]
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="no segments"):
        load_manifest(built_copy)


def test_static_model_file_is_checked_like_a_segment(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["static_model"] = {"file": "elsewhere.onnx", "sha256": data["static_model"]["sha256"]}
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="elsewhere.onnx.*missing"):
        load_manifest(built_copy)


MALFORMED = {
    "static_without_sha256": ("static_model", {"file": "static.onnx"}),
    "static_without_file": ("static_model", {"sha256": "00"}),
    "static_as_string": ("static_model", "static.onnx"),
    "static_sha256_number": ("static_model", {"file": "static.onnx", "sha256": 5}),
    "segment_sha256_number": ("segments.1.sha256", 5),
    "segment_file_number": ("segments.1.file", 5),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_entry_is_a_manifest_error(built_copy: Path, case: str) -> None:
    where, value = MALFORMED[case]
    data = read_manifest_json(built_copy)
    if where == "static_model":
        data["static_model"] = value
    else:
        _, index, key = where.split(".")
        data["segments"][int(index)][key] = value
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError):
        load_manifest(built_copy)


def test_class_count_must_match_engine_outputs(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["classes"] = data["classes"][:-1]
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="classes"):
        load_manifest(built_copy)


def test_every_field_set_away_from_its_default_survives_a_save_under_its_documented_key(adaptive_built: Path, tmp_path: Path) -> None:
    """The round trip above holds default values only; a key written under another name
    would read back as its default there. Here nothing is at its default."""
    manifest = load_manifest(adaptive_built)
    point = OperatingPoint("odd", [0.25, None], criterion="maxprob", depth="TFT", measured={"mean_ms": 1.5, "accuracy": 0.9})
    plans = {"segment_0.onnx@fp16": {"file": "a.plan", "sha256": "0" * 64, "precision": "fp16"}}
    tensorrt = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "plans": plans}
    profile = {"device": "cpu", "threads": 2, "fp32": {"1": {"segments": [{"mean_ms": 0.1}]}}}
    odd = replace(manifest, operating_points=[*manifest.operating_points, point], tensorrt=tensorrt, profile=profile,
                  input=replace(manifest.input, dtype="float16"))
    save_manifest(odd, tmp_path / MANIFEST_NAME)
    written = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert written["tensorrt"] == tensorrt and written["profile"] == profile
    last = written["operating_points"][-1]
    assert {k: last[k] for k in ("name", "thresholds", "criterion", "precision", "depth", "measured")} == {
        "name": "odd", "thresholds": [0.25, None], "criterion": "maxprob", "precision": "fp32", "depth": "TFT",
        "measured": {"mean_ms": 1.5, "accuracy": 0.9},
    }
    assert [s["base"] for s in written["segments"]] == [s.base for s in manifest.segments]
    reread = load_manifest(tmp_path, verify_files=False)
    assert replace(reread, root=manifest.root) == odd


def test_the_engine_lookups_name_what_is_missing_exactly() -> None:
    segment = SegmentInfo(
        name="segment_0", file="segment_0.onnx", sha256="0" * 64, input=TensorInfo("input", ["batch", 1, 8, 8]),
        features_output="features", probs_output="probs", score_output="entropy", exit_index=0,
        variants={"int8": {"file": "segment_0.int8.onnx", "sha256": "1" * 64}}, base={"file": "segment_0.base.onnx", "sha256": "2" * 64},
    )
    assert segment.file_for("int8") == "segment_0.int8.onnx" and segment.file_for("fp32", skip=True) == "segment_0.base.onnx"
    with pytest.raises(ManifestError, match=re.escape("segment_0: base variants are fp32 only, not 'int8'")):
        segment.file_for("int8", skip=True)
    with pytest.raises(ManifestError, match=re.escape("segment_0 has no 'fp16' engine; it has ['fp32', 'int8']")):
        segment.file_for("fp16")
    problem = depth_problem("TTF", [("layer1", False), ("layer2", False), ("layer3", True)])
    assert problem == "depth 'TTF': layer1, layer2 cannot skip (no skippable sub-path, so no base variant)"
    with pytest.raises(ManifestError, match=re.escape("segment_0 has no 'gate' score; it has ['entropy']")):
        segment.score_of("gate")


def test_a_whole_engine_of_its_own_is_hash_checked_and_errors_say_which_file_and_manifest(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    whole = built_copy / "whole.onnx"
    whole.write_bytes((built_copy / data["static_model"]["file"]).read_bytes() + b"\0")  # a file of its own
    data["whole_model"] = {"file": "whole.onnx", "sha256": sha256_file(whole)}
    write_manifest_json(built_copy, data)
    assert load_manifest(built_copy).whole_model == data["whole_model"]
    whole.write_bytes(whole.read_bytes() + b"\0")
    actual, expected = sha256_file(whole), data["whole_model"]["sha256"]
    message = (f"{whole}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}... "
               "(file changed or corrupt since build; rebuild with edge-build-engines)")
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(built_copy)
    data["whole_model"] = None  # a static model and no whole engine: only the static file is checked
    write_manifest_json(built_copy, data)
    assert load_manifest(built_copy).whole_model is None
    data["exits"] = data["exits"][:-1]
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match=re.escape(f"{built_copy / MANIFEST_NAME}: segments and exits must pair up in order")):
        load_manifest(built_copy)


TYPE_ERRORS = {  # what a wrong type reads as: the key and the type it got
    "static file": (lambda d: d.update(static_model={"file": 5, "sha256": "00"}), "'file' must be a string, got int"),
    "static sha256": (lambda d: d.update(static_model={"file": "static.onnx", "sha256": 5.0}), "'sha256' must be a string, got float"),
    "variants": (lambda d: d["segments"][0].update(variants=[]), "'variants' must be an object, got list"),
    "variant file": (lambda d: d["segments"][0].update(variants={"int8": {"file": 5, "sha256": "00"}}), "'file' must be a string, got int"),
    "variant sha256": (lambda d: d["segments"][0].update(variants={"int8": {"file": "a.onnx", "sha256": None}}), "'sha256' must be a string, got NoneType"),
    "profile": (lambda d: d.update(profile=[]), "'profile' must be an object, got list"),
    "tensorrt list": (lambda d: d.update(tensorrt=[]), "'tensorrt' must be an object with 'plans'"),
    "tensorrt plans": (lambda d: d.update(tensorrt={"plans": 5}), "'tensorrt' must be an object with 'plans'"),
    "plan file": (lambda d: d.update(tensorrt={"version": "10", "gpu": "Orin", "compute_capability": "8.7", "plans": {"p": {"file": 5, "sha256": "00"}}}),
                  "'file' must be a string, got int"),
    "trt version": (lambda d: d.update(tensorrt={"version": 10, "gpu": "Orin", "compute_capability": "8.7", "plans": {}}), "'version' must be a string, got int"),
    "trt gpu": (lambda d: d.update(tensorrt={"version": "10", "gpu": 1, "compute_capability": "8.7", "plans": {}}), "'gpu' must be a string, got int"),
    "trt capability": (lambda d: d.update(tensorrt={"version": "10", "gpu": "Orin", "compute_capability": 8.7, "plans": {}}),
                       "'compute_capability' must be a string, got float"),
    "segment file": (lambda d: d["segments"][1].update(file=5), "'file' must be a string, got int"),
    "segment sha256": (lambda d: d["segments"][1].update(sha256=[]), "'sha256' must be a string, got list"),
    "segment score": (lambda d: d["segments"][0].update(score_outputs={"entropy": 3}), "'score_outputs' must be a string, got int"),
    "plan sha256": (lambda d: d.update(tensorrt={"version": "10", "gpu": "Orin", "compute_capability": "8.7", "plans": {"p": {"file": "p.plan", "sha256": 5}}}),
                    "'sha256' must be a string, got int"),
}


def edit_manifest_json(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    data = read_manifest_json(folder)
    edit(data)
    write_manifest_json(folder, data)


@pytest.mark.parametrize("case", sorted(TYPE_ERRORS))
def test_a_value_of_the_wrong_type_is_named_with_its_key_and_type(built_copy: Path, case: str) -> None:
    edit, expected = TYPE_ERRORS[case]
    edit_manifest_json(built_copy, edit)
    with pytest.raises(ManifestError, match=re.escape(f"{built_copy / MANIFEST_NAME}: malformed manifest (TypeError: {expected})")):
        load_manifest(built_copy)


def test_a_plan_without_a_precision_is_fp32_and_a_segment_without_outputs_lists_none(built_copy: Path) -> None:
    data = read_manifest_json(built_copy)
    data["tensorrt"] = {"version": "10", "gpu": "Orin", "compute_capability": "8.7", "plans": {"p": {"file": "p.plan", "sha256": "0" * 64}}}
    del data["segments"][1]["outputs"]
    write_manifest_json(built_copy, data)
    manifest = load_manifest(built_copy, verify_files=False)
    assert manifest.tensorrt["plans"]["p"]["precision"] == "fp32" and manifest.segments[1].outputs == []  # type: ignore[index]


CONSISTENCY = {  # a manifest edit, and the error it must give
    "middle segment without features": (lambda d: d["segments"][1].update(features_output=None), "every segment but the last must output features"),
    "criterion no segment has": (lambda d: d["operating_points"][0].update(criterion="gate"),
                                 "operating point 'full' uses criterion 'gate', which segment_0, segment_1 do(es) not output"),
    "unknown engine": (lambda d: d["operating_points"][0].update(engine="gpu"), "operating point 'full' runs engine 'gpu'; it must be 'chain' or 'static'"),
    "static point without a static model": (lambda d: d.update(static_model=None, whole_model=None) or d["operating_points"][0].update(engine="static"),
                                            "operating point 'full' runs the static engine, which this manifest does not have"),
    "static point at int8": (lambda d: d["operating_points"][0].update(engine="static", precision="int8"),
                             "static operating point 'full' can have no thresholds, depth or precision but fp32"),
}


@pytest.mark.parametrize("case", sorted(CONSISTENCY))
def test_an_inconsistent_manifest_says_exactly_what_is_wrong(built_copy: Path, case: str) -> None:
    edit, expected = CONSISTENCY[case]
    edit_manifest_json(built_copy, edit)
    with pytest.raises(ManifestError, match=re.escape(f"{built_copy / MANIFEST_NAME}: {expected}")):
        load_manifest(built_copy, verify_files=False)


def test_base_variants_are_read_from_schema_version_3_on(adaptive_built: Path, tmp_path: Path) -> None:
    data = json.loads((adaptive_built / MANIFEST_NAME).read_text())
    data["schema_version"] = 3
    data["operating_points"] = [p for p in data["operating_points"] if p.get("engine") != "static"]
    data["default_operating_point"] = data["operating_points"][0]["name"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    assert load_manifest(tmp_path, verify_files=False).adaptive
    data["schema_version"] = 2
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="base variants need schema version 3, this manifest says 2"):
        load_manifest(tmp_path, verify_files=False)
