"""Stage 2's reading of the codes (pipeline/formats/codes.py `read_rows`): each rank reads only its
part of a split's Parquet row groups, codes keep their stored integer type until a batch is made,
and batches of arrays of different shapes are padded and masked exactly."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.formats import codes as codeset


def _write_split(folder, split, files: list[list[tuple]], dtype, cond, row_group_size):
    """files: per file, its rows (key, codes array, cond values {name: value})."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    for n, rows in enumerate(files):
        table = codeset.to_table([r[0] for r in rows], [r[1] for r in rows],
                                 {name: [r[2][name] for r in rows] for name in cond}, dtype)
        pq.write_table(table, folder / split / f"part-{n:03d}.parquet", row_group_size=row_group_size)


def _codes_folder(tmp_path, rows_per_file=(700, 90, 900, 7, 450), shape=(32, 32), K=512, seed=0):
    """A finished codes folder of image-like rows (fixed shape, a class label), several files of
    several row groups each; -> (folder, every train row in order)."""
    rng = np.random.default_rng(seed)
    dtype = codeset.code_dtype(K)
    folder = tmp_path / "codes"
    every = {"train": [], "val": []}
    for split, sizes in (("train", rows_per_file), ("val", (40, 3))):
        files = []
        for n in sizes:
            rows = [(f"{split}-{len(every[split]) + i:05d}", rng.integers(0, K, shape), {"labels": int(rng.integers(1000))})
                    for i in range(n)]
            every[split] += rows
            files.append(rows)
        _write_split(folder, split, files, dtype, ["labels"], row_group_size=64)
    (folder / "manifest.json").write_text(json.dumps({
        "format": codeset.FORMAT, "dtype": dtype.name, "codebook_size": K,
        "cond": {"labels": {"kind": "class", "size": 1000}},
        "rows": {s: len(r) for s, r in every.items()},
        "files": {s: [[p.name, pq.read_metadata(p).num_rows] for p in sorted((folder / s).iterdir())]
                  for s in every}}))
    return str(folder), every["train"]


class _Counting(pafs.FileSystemHandler):
    """The local disk, counting the bytes read through it (a real filesystem, instrumented)."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()
        self.read = 0

    def _wrap(self, path):
        outer = self

        class Reader(io.RawIOBase):
            def __init__(self):
                self.f = open(path, "rb")

            def readable(self):
                return True

            def seekable(self):
                return True

            def seek(self, offset, whence=0):
                return self.f.seek(offset, whence)

            def tell(self):
                return self.f.tell()

            def readinto(self, buffer):
                n = self.f.readinto(buffer)
                outer.read += n
                return n

            def close(self):
                self.f.close()
                super().close()

        return pa.PythonFile(Reader(), mode="r")

    def open_input_file(self, path):
        return self._wrap(path)

    def open_input_stream(self, path):
        return self._wrap(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def get_type_name(self):
        return "counting"

    def equals(self, other):
        return self is other

    def normalize_path(self, path):
        return path

    def _read_only(self, *args):
        raise NotImplementedError("a reader writes nothing")

    copy_file = create_dir = delete_dir = delete_dir_contents = delete_file = _read_only
    delete_root_dir_contents = move = open_append_stream = open_output_stream = _read_only


def test_each_rank_reads_only_its_part_and_together_they_read_the_split(tmp_path):
    folder, train = _codes_folder(tmp_path)
    total_bytes = sum(p.stat().st_size for p in (tmp_path / "codes" / "train").iterdir())
    world = 4
    seen = []
    for rank in range(world):
        handler = _Counting()
        rows = codeset.read_rows(folder, "train", rank, world, keys=True, fs=pafs.PyFileSystem(handler))
        # a contiguous quarter of the split, in order, sizes within one row of each other
        start, end = codeset.rank_range(len(train), rank, world)
        assert rows.keys == [r[0] for r in train[start:end]]
        assert abs(len(rows) - len(train) / world) < 1
        seen += rows.keys
        # codes and labels exactly as written, codes still in their stored type (int16 for K=512)
        assert rows.codes.values.dtype == np.int16
        codes, cond, mask = rows.batch(np.arange(len(rows)))
        assert mask is None and codes.dtype.is_floating_point is False
        assert np.array_equal(codes.numpy(), np.stack([r[1] for r in train[start:end]]))
        assert cond["labels"].tolist() == [r[2]["labels"] for r in train[start:end]]
        # what it holds is its share (2 bytes a code), and what it read from disk is its share of
        # the files plus the footers of the files it opened (parquet reads the last 64 KiB) and
        # at most two row groups cut at its boundaries
        assert rows.nbytes < 1.1 * len(rows) * 32 * 32 * 2 + 10_000
        opened = sum(1 for n0, n1 in _file_ranges(folder) if n0 < end and n1 > start)
        assert handler.read < total_bytes / world + 2 * 64 * 32 * 32 * 2 * 1.1 + opened * 65536, (rank, handler.read)
    assert seen == [r[0] for r in train]  # together: every row once, in the split's order


def _file_ranges(folder):
    ranges, first = [], 0
    for _, rows in json.loads(open(f"{folder}/manifest.json").read())["files"]["train"]:
        ranges.append((first, first + rows))
        first += rows
    return ranges


def test_without_a_file_list_the_footers_say_the_rows(tmp_path):
    """Codes dumped before the manifest listed its files are read the same (from the footers)."""
    folder, train = _codes_folder(tmp_path, rows_per_file=(30, 20, 25))
    listed = codeset.read_rows(folder, "train", 1, 3, keys=True)
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    del manifest["files"]
    (tmp_path / "codes" / "manifest.json").write_text(json.dumps(manifest))
    assert codeset.read_rows(folder, "train", 1, 3, keys=True).keys == listed.keys == [r[0] for r in train[25:50]]


def test_a_rank_beyond_the_rows_gets_none_and_a_changed_folder_is_refused(tmp_path):
    folder, _ = _codes_folder(tmp_path, rows_per_file=(3,))
    assert [len(codeset.read_rows(folder, "train", r, 4)) for r in range(4)] == [0, 1, 1, 1]
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    manifest["rows"]["train"] = 4
    del manifest["files"]
    (tmp_path / "codes" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"codes/train: the Parquet files hold 3 rows, the manifest 4"):
        codeset.read_rows(folder, "train")


def test_rows_of_different_shapes_are_padded_and_masked_with_sequence_conditioning(tmp_path):
    """Speech-like rows: (t,) codes of varying length and a per-step sequence input; K=256: uint8."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(50):
        t = int(rng.integers(3, 30))
        rows.append((f"u{i:03d}", rng.integers(0, 256, (t,)), {"speaker": int(rng.integers(9)),
                                                              "steps": rng.integers(0, 7, t).tolist()}))
    folder = tmp_path / "codes"
    for split in ("train", "val"):
        _write_split(folder, split, [rows[:20], rows[20:]], np.dtype(np.uint8), ["speaker", "steps"], 16)
    (folder / "manifest.json").write_text(json.dumps({
        "format": codeset.FORMAT, "dtype": "uint8", "codebook_size": 256,
        "cond": {"speaker": {}, "steps": {}}, "rows": {"train": 50, "val": 50}}))
    got = codeset.read_rows(str(folder), "train", 1, 2)
    assert got.codes.values.dtype == np.uint8 and len(got) == 25
    idx = np.array([3, 0, 17, 3])
    codes, cond, mask = got.batch(idx)
    mine = rows[25:]
    longest = max(len(mine[i][1]) for i in idx)
    assert codes.shape == mask.shape == (4, longest) and cond["steps"].shape == (4, longest)
    for j, i in enumerate(idx):
        t = len(mine[i][1])
        assert codes[j, :t].tolist() == mine[i][1].tolist() and mask[j].sum() == t
        assert codes[j, t:].eq(0).all() and cond["steps"][j, :t].tolist() == mine[i][2]["steps"]
        assert cond["speaker"][j] == mine[i][2]["speaker"]


def test_encoder_actors_scale_to_the_cluster_unless_the_setting_says_how_many():
    from pipeline.stages.codes import encoder_actors

    assert encoder_actors(None, {"CPU": 64.0, "GPU": 8.0}, gpu=True) == 8  # one per GPU
    assert encoder_actors(None, {"CPU": 16.0}, gpu=False) == 8  # half the CPUs: the rest decode
    assert encoder_actors(None, {"CPU": 4.0}, gpu=False) == 2
    assert encoder_actors(None, {"CPU": 1.0}, gpu=False) == 1 and encoder_actors(None, {"CPU": 8.0}, gpu=True) == 1
    assert encoder_actors(3, {"CPU": 64.0, "GPU": 8.0}, gpu=True) == 3  # the setting caps them
