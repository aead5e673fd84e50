"""Content digests of the evaluated data: files read once and remembered by size and times, read again when
replaced, generated samples by their generator, plain loaders by their tensors."""

from __future__ import annotations

import os

import torch

from eroseg_at.data import ShapesDataset
from eroseg_at.data.folder import folder
from eroseg_at.evaluation import digests
from eroseg_at.evaluation.digests import FileDigests, source_digests, tensor_digests
from tests.evaluation.conftest import write_folder


def test_the_data_layer_names_each_samples_files(tmp_path):
    source = folder(write_folder(tmp_path / "data"), num_classes=3, split="val", split_list="val.txt")
    image, mask = source.sample_files(1)
    assert (image.name, image.parent.name, mask.name, mask.parent.name) == (
        "1.png",
        "images",
        "1.png",
        "masks",
    )
    assert ShapesDataset(num_images=2, image_size=(16, 16)).sample_files(0) == ()


def test_files_are_read_once_and_again_when_replaced_in_place(tmp_path, monkeypatch):
    source = folder(write_folder(tmp_path / "data"), num_classes=3, split="val", split_list="val.txt")
    read = []
    real = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda path: read.append(path.name) or real(path))
    first = source_digests(source, range(4), tmp_path / "cache")
    assert len(read) == 8 and len(set(first)) == 4
    read.clear()
    assert source_digests(source, range(4), tmp_path / "cache") == first and read == []
    # Replaced under its own name with the same size and modification time, as `cp -p` or `rsync -t` would leave
    # a file of the same size: only its status-change time tells.
    path = source.sample_files(2)[0]
    status = path.stat()
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (status.st_size, status.st_mtime_ns)
    again = source_digests(source, range(4), tmp_path / "cache")
    assert read == ["2.png"]
    assert again[2] != first[2] and again[:2] == first[:2] and again[3] == first[3]


def test_an_unreadable_cache_file_is_rebuilt(tmp_path):
    cache = tmp_path / "digests.json"
    cache.write_text("{not json")
    files = FileDigests(cache)
    (tmp_path / "a").write_bytes(b"a")
    value = files.digest(tmp_path / "a")
    files.save()
    assert FileDigests(cache).entries[str((tmp_path / "a").resolve())]["sha256"] == value


def test_generated_samples_are_digested_by_their_generator(tmp_path):
    shapes = ShapesDataset(num_images=3, image_size=(16, 16), seed=1)
    same = source_digests(ShapesDataset(num_images=3, image_size=(16, 16), seed=1), range(3), tmp_path)
    assert source_digests(shapes, range(3), tmp_path) == same and len(set(same)) == 3
    assert (
        source_digests(ShapesDataset(num_images=3, image_size=(16, 16), seed=2), range(3), tmp_path) != same
    )


def test_tensors_are_digested_by_their_values():
    images, labels = torch.rand(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.int64)
    first = tensor_digests(images, labels)
    changed = labels.clone()
    changed[1, 0, 0] = 1
    assert first[0] != first[1] and tensor_digests(images, changed) == [
        first[0],
        tensor_digests(images, changed)[1],
    ]
    assert tensor_digests(images, changed)[1] != first[1]
