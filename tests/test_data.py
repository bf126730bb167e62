"""Tests for calibration.data, on real files written into tmp_path."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calibration.data import (
    DEFAULT_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    Dataset,
    iterate_batches,
    load_dataset,
    load_digits,
    load_idx_folder,
    load_image_folder,
    read_idx,
)
from edge.errors import DatasetNotFoundError, InputError

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
          np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: Path, array: np.ndarray, big_endian_dtype: str | None = None,
              compress: bool | None = None) -> Path:
    """Write an IDX file the way the MNIST tools do: magic, big-endian dims, data."""
    dtype = np.dtype(big_endian_dtype) if big_endian_dtype else array.dtype
    header = struct.pack(">BBBB", 0, 0, _CODES[dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(dtype).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def make_idx_folder(root: Path, prefix_test: str = "t10k", gz: bool = True,
                    n_train: int = 12, n_test: int = 5, n_classes: int = 10) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    data = {}
    for prefix, n, split in (("train", n_train, "train"), (prefix_test, n_test, "test")):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", pixels)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        data[split] = (pixels, labels)
    return data


def write_png(path: Path, mode: str, size_hw: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, (size_hw[1], size_hw[0]), color).save(path)


def tiny_dataset(n: int = 10) -> Dataset:
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    return Dataset(images, np.arange(n, dtype=np.int64), ("a",), "tiny")


# --- read_idx --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_every_dtype(tmp_path: Path, dtype: str, suffix: str) -> None:
    # Negative values for signed types, values above 127 for uint8.
    values = (np.arange(24).reshape(2, 3, 4) + (110 if dtype == "u1" else -5)).astype(dtype)
    path = write_idx(tmp_path / f"x-idx3-ubyte{suffix}", values, big_endian_dtype=np.dtype(dtype).str)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, values)
    out[0, 0, 0] = 1  # must be a writable copy, not a view on the file bytes


def test_read_idx_sniffs_gzip_regardless_of_suffix(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    path = write_idx(tmp_path / "labels-idx1-ubyte", labels, compress=True)
    np.testing.assert_array_equal(read_idx(path), labels)


def test_read_idx_truncated_data(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a-idx3-ubyte", np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError, match=r"not an IDX file .*need 100 data bytes, found 97"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 4]))  # promises 3 dims, has 1
    with pytest.raises(InputError, match="header truncated"):
        read_idx(path)


@pytest.mark.parametrize("blob", [b"", b"\x00\x00", b"\x01\x00\x08\x01\x00\x00\x00\x00",
                                  b"\x00\x00\x07\x01\x00\x00\x00\x00", b"PNG\x89garbage"])
def test_read_idx_bad_magic(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(blob)
    with pytest.raises(InputError, match=f"{path}: not an IDX file \\(bad magic"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "c-idx1-ubyte.gz", np.arange(100, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InputError, match="corrupt gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such IDX file"):
        read_idx(tmp_path / "nope-idx1-ubyte")


# --- load_idx_folder -------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_folder_scales_and_shapes(tmp_path: Path, gz: bool) -> None:
    data = make_idx_folder(tmp_path / "fm", gz=gz, n_test=10)
    for split, n in (("train", 12), ("test", 10)):
        ds = load_idx_folder(tmp_path / "fm", split)
        pixels, labels = data[split]
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int64 and len(ds) == n
        np.testing.assert_allclose(ds.images[:, 0], pixels / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(ds.labels, labels)
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
        assert ds.classes == FASHION_MNIST_CLASSES and ds.input_shape == (1, 28, 28)


def test_load_idx_folder_test_prefix_and_generic_classes(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "mnist", prefix_test="test", n_test=6, n_classes=3)
    ds = load_idx_folder(tmp_path / "mnist", "test", name="mnist")
    assert len(ds) == 6 and ds.name == "mnist"
    assert ds.classes == ("0", "1", "2")


def test_load_idx_folder_explicit_classes_checked(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "d", n_classes=4)
    assert load_idx_folder(tmp_path / "d", classes=("a", "b", "c", "d")).classes == ("a", "b", "c", "d")
    with pytest.raises(InputError, match="labels must be in"):
        load_idx_folder(tmp_path / "d", classes=("a", "b"))


def test_load_idx_folder_count_mismatch(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(InputError, match="12 images but 11 labels"):
        load_idx_folder(tmp_path / "d")


def test_load_idx_folder_missing_folder_message(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(DatasetNotFoundError) as info:
        load_idx_folder(missing, "test")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(missing) in message and "\n" not in message


def test_load_idx_folder_missing_labels_file(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    load_idx_folder(tmp_path / "d", "train")  # the train split is still complete
    with pytest.raises(DatasetNotFoundError, match="not found in"):
        load_idx_folder(tmp_path / "d", "test")


def test_load_idx_folder_rejects_bad_split(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "d")
    with pytest.raises(InputError, match="'train' or 'test'"):
        load_idx_folder(tmp_path / "d", "validation")


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST.is_dir(),
                    reason=f"Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST} "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_test_split() -> None:
    ds = load_idx_folder(split="test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.classes == FASHION_MNIST_CLASSES
    counts = np.bincount(ds.labels, minlength=10)
    assert len(counts) == 10 and np.all(np.abs(counts - 1000) <= 50)
    assert ds.images.max() == pytest.approx(1.0) and ds.images.min() == 0.0


# --- load_digits -----------------------------------------------------------------------

def test_digits_split_disjoint_complete_deterministic() -> None:
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.25)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.float32
    assert 0.0 <= train.images.min() and train.images.max() == pytest.approx(1.0)
    from sklearn.datasets import load_digits as sk_load_digits
    reference = (sk_load_digits().images / 16.0).astype(np.float32).reshape(1797, -1)
    both = np.concatenate([train.images, test.images]).reshape(1797, -1)
    # Same multiset of rows with 1797 in total: disjoint and complete.
    assert sorted(r.tobytes() for r in both) == sorted(r.tobytes() for r in reference)
    np.testing.assert_array_equal(load_digits("test").images, test.images)  # deterministic
    assert not np.array_equal(load_digits("train", seed=1).labels, train.labels)


def test_dataset_split_sizes_disjoint_and_deterministic() -> None:
    ds = tiny_dataset(10)
    first, second = ds.split(0.3, seed=5)
    assert (len(first), len(second)) == (7, 3)
    ids_a, ids_b = set(first.labels.tolist()), set(second.labels.tolist())
    assert not ids_a & ids_b and ids_a | ids_b == set(range(10))
    again = ds.split(0.3, seed=5)
    np.testing.assert_array_equal(again[1].labels, second.labels)
    assert any(not np.array_equal(ds.split(0.3, seed=s)[1].labels, second.labels) for s in range(6, 12))
    with pytest.raises(InputError):
        ds.split(1.5)


def test_dataset_subset_and_validation() -> None:
    ds = tiny_dataset(6)
    assert ds.subset(slice(2, 4)).labels.tolist() == [2, 3]
    assert ds.subset(np.array([5, 0])).labels.tolist() == [5, 0]
    with pytest.raises(InputError):
        Dataset(np.zeros((3, 1, 2, 2), np.float32), np.zeros(2, np.int64), ("a",), "bad")


# --- load_image_folder -----------------------------------------------------------------

def test_image_folder_grayscale(tmp_path: Path) -> None:
    write_png(tmp_path / "imgs" / "dog" / "a.png", "L", (6, 4), 51)
    write_png(tmp_path / "imgs" / "cat" / "b.PNG", "L", (6, 4), 255)
    write_png(tmp_path / "imgs" / "cat" / "c.png", "L", (6, 4), 0)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path / "imgs")
    assert ds.classes == ("cat", "dog") and ds.name == "imgs"
    assert ds.images.shape == (3, 1, 6, 4) and ds.images.dtype == np.float32
    assert ds.labels.tolist() == [0, 0, 1]
    np.testing.assert_allclose(ds.images[:, 0, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_image_folder_rgb_inferred_and_resized(tmp_path: Path) -> None:
    write_png(tmp_path / "f" / "a" / "1.png", "RGB", (5, 5), 100)
    write_png(tmp_path / "f" / "b" / "2.png", "L", (10, 10), 30)  # mixed -> RGB, resized to 5x5
    ds = load_image_folder(tmp_path / "f")
    assert ds.images.shape == (2, 3, 5, 5) and ds.input_shape == (3, 5, 5)
    np.testing.assert_allclose(ds.images[0, :, 2, 2], [100 / 255, 155 / 255, 7 / 255], atol=1e-6)
    np.testing.assert_allclose(ds.images[1, :, 2, 2], [30 / 255] * 3, atol=1e-6)
    small = load_image_folder(tmp_path / "f", size=(3, 2), grayscale=True)
    assert small.images.shape == (2, 1, 3, 2)


def test_image_folder_undecodable_file_named(tmp_path: Path) -> None:
    write_png(tmp_path / "f" / "a" / "ok.png", "L", (4, 4), 10)
    broken = tmp_path / "f" / "a" / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        load_image_folder(tmp_path / "f")


def test_image_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="<class_name>"):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_folder(tmp_path / "empty")
    assert "no images" in str(info.value) and "\n" not in str(info.value)


# --- load_dataset ----------------------------------------------------------------------

def test_load_dataset_idx_and_bare_idx_folder(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "mnist", prefix_test="test", n_test=10, n_classes=10)
    by_spec = load_dataset(f"idx:{tmp_path / 'mnist'}", "test")
    bare = load_dataset(str(tmp_path / "mnist"), "test")
    assert len(by_spec) == len(bare) == 10 and by_spec.name == "mnist"
    assert by_spec.classes == tuple(str(i) for i in range(10))  # not Fashion names
    np.testing.assert_array_equal(by_spec.images, bare.images)


def test_load_dataset_folder_with_and_without_split(tmp_path: Path) -> None:
    write_png(tmp_path / "s" / "train" / "x" / "1.png", "L", (3, 3), 1)
    write_png(tmp_path / "s" / "train" / "y" / "2.png", "L", (3, 3), 2)
    write_png(tmp_path / "s" / "test" / "x" / "3.png", "L", (3, 3), 3)
    assert len(load_dataset(f"folder:{tmp_path / 's'}", "train")) == 2
    assert len(load_dataset(f"folder:{tmp_path / 's'}", "test")) == 1
    write_png(tmp_path / "flat" / "only" / "1.png", "L", (3, 3), 1)
    flat = load_dataset(str(tmp_path / "flat"), "test")  # no test/ sub-folder: root itself
    assert flat.classes == ("only",) and len(flat) == 1


def test_load_dataset_named_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert len(load_dataset("digits", "test")) == round(1797 * 0.25)
    make_idx_folder(tmp_path / "fm")
    monkeypatch.setattr("calibration.data.DEFAULT_FASHION_MNIST", tmp_path / "fm")
    fm = load_dataset("fashion-mnist", "train")
    assert len(fm) == 12 and fm.classes == FASHION_MNIST_CLASSES


def test_load_dataset_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="'idx:<folder>'.*'folder:<folder>'"):
        load_dataset(str(tmp_path / "no-such-thing"))


# --- iterate_batches -------------------------------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
def test_iterate_batches_covers_everything_once(shuffle: bool) -> None:
    ds = tiny_dataset(10)
    batches = list(iterate_batches(ds, 4, shuffle=shuffle, seed=3))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    seen = np.concatenate([labels for _, labels in batches])
    assert sorted(seen.tolist()) == list(range(10))
    for images, labels in batches:
        np.testing.assert_array_equal(images[:, 0, 0, 0], labels)  # pairs stay aligned
    assert (seen.tolist() == list(range(10))) != shuffle


def test_iterate_batches_rejects_zero_batch() -> None:
    with pytest.raises(InputError):
        next(iterate_batches(tiny_dataset(3), 0))
