"""The codes dataset: what the codes stage writes and stage 2 reads.

    <workdir>/codes/<dataset>/v<version>-<run id>/{train,val}/*.parquet
    <workdir>/codes/<dataset>/v<version>-<run id>/manifest.json

One row per sample: `key` (string), `codes` (the code array flattened in C order, the smallest
integer type that holds K), `shape` (its shape: (h, w) for an image, (t,) for speech, (t, h, w)
for video) and one column per conditioning input (`cond` in the manifest): an int32 for a class
id, a list of int32 for a per-step sequence. Shapes may differ from row to row; stage 2 pads
them in a batch and masks the padding. The manifest is written last: a folder without one is
unfinished.

Reading (`read_rows`): a split's rows are its files' rows in file-name order (the manifest's
`files` lists each file's rows); rank r of `world` opens only the files, and in them reads only
the row groups, that hold its contiguous r-th part, one row group at a time, and keeps codes in
their stored type in one flat array (`Ragged`) until a batch is drawn: a stage-2 worker holds
N / world rows at 1 byte a code for K <= 256 (2 bytes up to 32768), never the split, never int64.

Format 2 (2026-11-26 on). Format 1 (fixed-size grids and a `label` column, in `v<version>/`
folders) is never read: a folder without a manifest of this format is unfinished to every stage,
and the codes job writes it again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError


MANIFEST = "manifest.json"
FORMAT = 2
SPLITS = ("train", "val")


def code_dtype(codebook_size: int) -> np.dtype:
    """The smallest integer type that holds every index below codebook_size."""
    if codebook_size <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16) if codebook_size <= 32768 else np.dtype(np.int32)


def load_manifest(folder: str, fs=None) -> dict | None:
    """The manifest of a finished codes folder in this format, else None. `fs`: the pyarrow
    filesystem `folder` is a path of (default: the one its URI names)."""
    from pipeline.fs import exists, filesystem, read_bytes

    fs, base = (fs, folder) if fs is not None else filesystem(folder)
    if not exists(fs, f"{base}/{MANIFEST}"):
        return None
    manifest = json.loads(read_bytes(fs, f"{base}/{MANIFEST}"))
    return manifest if manifest.get("format") == FORMAT else None


def to_table(keys: list[str], codes: list[np.ndarray], cond: dict[str, list], dtype: np.dtype):
    """Rows of one batch as an Arrow table (plain list columns: any parquet reader opens them)."""
    import pyarrow as pa

    flat = [np.ascontiguousarray(c).reshape(-1).astype(dtype) for c in codes]
    offsets = np.cumsum([0, *(len(f) for f in flat)]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0, dtype)
    columns = {
        "key": pa.array(keys, pa.string()),
        "codes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        "shape": pa.array([list(c.shape) for c in codes], pa.list_(pa.int32())),
    }
    for name, values in cond.items():
        if values and np.ndim(values[0]) > 0:
            columns[name] = pa.array([np.asarray(v, dtype=np.int32).tolist() for v in values], pa.list_(pa.int32()))
        else:
            columns[name] = pa.array(np.asarray(values, dtype=np.int32), pa.int32())
    return pa.table(columns)


@dataclass
class Ragged:
    """Arrays of one integer type and rank but different shapes, stored as one flat array:
    row i is values[offsets[i]:offsets[i + 1]].reshape(shapes[i])."""
    values: np.ndarray
    offsets: np.ndarray  # int64, len(rows) + 1
    shapes: np.ndarray  # int64, (rows, ndim)

    def __post_init__(self) -> None:
        self.uniform = len(self.shapes) == 0 or bool((self.shapes == self.shapes[0]).all())

    def __len__(self) -> int:
        return len(self.shapes)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    def gather(self, idx: np.ndarray):
        """-> (rows idx as one int64 tensor (len(idx), *max shape), zero-padded; the mask of real
        entries, or None when every row has one shape)."""
        import torch

        if self.uniform:  # a view of the flat array: one gather, no per-row work
            grid = self.values.reshape(len(self), *self.shapes[0]) if len(self) else self.values
            return torch.from_numpy(grid[idx].astype(np.int64)), None
        shape = tuple(int(n) for n in self.shapes[idx].max(axis=0))
        out = torch.zeros(len(idx), *shape, dtype=torch.long)
        mask = torch.zeros(out.shape, dtype=torch.bool)
        for j, i in enumerate(idx):
            where = (j, *(slice(0, int(n)) for n in self.shapes[i]))
            out[where] = torch.from_numpy(self.row(i).astype(np.int64))
            mask[where] = True
        return out, mask

    @staticmethod
    def concat(parts: list["Ragged"], dtype) -> "Ragged":
        if not parts:
            return Ragged(np.zeros(0, dtype), np.zeros(1, np.int64), np.zeros((0, 1), np.int64))
        starts = np.cumsum([0, *(len(p.values) for p in parts[:-1])])
        offsets = np.concatenate([np.zeros(1, np.int64), *(p.offsets[1:] + s for p, s in zip(parts, starts))])
        return Ragged(np.concatenate([p.values for p in parts]).astype(dtype, copy=False), offsets,
                      np.concatenate([p.shapes for p in parts]))


@dataclass
class CodeRows:
    """Rows of a split, or of one rank's share of it. Codes stay in their stored integer type
    (uint8 for K <= 256: 1 byte a code) in one flat array until a batch is made; conditioning is
    an int32 array per class input, a Ragged per sequence input; keys only when asked for."""
    codes: Ragged
    cond: dict[str, "np.ndarray | Ragged"]
    keys: list[str] | None = None

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        arrays = [self.codes.values, self.codes.offsets, self.codes.shapes]
        for c in self.cond.values():
            arrays += [c.values, c.offsets, c.shapes] if isinstance(c, Ragged) else [c]
        return sum(a.nbytes for a in arrays)

    def batch(self, idx: np.ndarray):
        """-> (codes (B, *max shape) int64, cond {name: (B,) or (B, T) int64}, mask or None) of rows
        idx. Shorter arrays are padded with code 0 at their ends and masked out."""
        import torch

        idx = np.asarray(idx, dtype=np.int64)
        codes, mask = self.codes.gather(idx)
        cond = {name: c.gather(idx)[0] if isinstance(c, Ragged) else torch.from_numpy(c[idx].astype(np.int64))
                for name, c in self.cond.items()}
        return codes, cond, mask


def split_files(folder: str, split: str, fs=None, manifest: dict | None = None) -> list[tuple[str, int]]:
    """(path, rows) of each of a split's Parquet files, in name order: the split's row order. From
    the manifest's `files` when it lists them (written 2026-12-06 on), else from every file's footer."""
    import pyarrow.parquet as pq
    from pyarrow.fs import FileSelector, FileType

    from pipeline.fs import filesystem

    fs, base = (fs, folder) if fs is not None else filesystem(folder)
    listed = (manifest or {}).get("files", {}).get(split)
    if listed is not None:
        return [(f"{base}/{split}/{name}", rows) for name, rows in listed]
    infos = fs.get_file_info(FileSelector(f"{base}/{split}", allow_not_found=True))
    files = []
    for info in sorted((i for i in infos if i.type == FileType.File and i.base_name.endswith(".parquet")),
                       key=lambda i: i.base_name):
        with fs.open_input_file(info.path) as f:
            files.append((info.path, pq.ParquetFile(f).metadata.num_rows))
    return files


def rank_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """The rows [start, end) of rank `rank` of `world`: contiguous, sizes differing by at most 1."""
    return total * rank // world, total * (rank + 1) // world


def read_rows(folder: str, split: str, rank: int = 0, world: int = 1, keys: bool = False, fs=None) -> CodeRows:
    """The rows of rank `rank` of `world` of a finished codes split (all of it by default): the
    split's rows in order (`split_files`), cut into `world` contiguous parts. Only the files and,
    in them, the row groups that hold this rank's part are read, one row group at a time, so a
    rank's memory is its share of the split, never the whole of it; codes keep their stored type."""
    import pyarrow.parquet as pq

    from pipeline.fs import filesystem

    fs, base = (fs, folder) if fs is not None else filesystem(folder)
    manifest = load_manifest(base, fs)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no finished codes (manifest.json of format {FORMAT})")
    files = split_files(base, split, fs, manifest)
    total, expected = sum(rows for _, rows in files), manifest["rows"][split]
    if total != expected:
        raise UserError(f"{folder}/{split}: the Parquet files hold {total} rows, the manifest {expected}: "
                         f"the folder was changed after it was written; dump the codes again")
    start, end = rank_range(total, rank, world)
    names = list(manifest.get("cond", {}))
    columns = ["codes", "shape", *names, *(["key"] if keys else [])]
    parts, conds, key_list = [], {name: [] for name in names}, [] if keys else None
    first = 0  # the split's row number of the current file's (then row group's) first row
    for path, rows in files:
        if first >= end or first + rows <= start:
            first += rows
            continue
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            if parquet.metadata.num_rows != rows:
                raise UserError(f"{path}: {parquet.metadata.num_rows} rows, the manifest says {rows}: "
                                 f"the folder was changed after it was written; dump the codes again")
            for group in range(parquet.metadata.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                lo, hi = max(start, first) - first, min(end, first + size) - first
                first += size
                if lo >= hi:
                    continue
                table = parquet.read_row_group(group, columns=columns).slice(lo, hi - lo)
                parts.append(_ragged(table.column("codes"), table.column("shape")))
                for name in names:
                    column = table.column(name).combine_chunks()
                    conds[name].append(_ragged(column, None) if _is_list(column)
                                       else column.to_numpy().astype(np.int32))
                if keys:
                    key_list += table.column("key").to_pylist()
    cond = {}
    for name, pieces in conds.items():
        if pieces and isinstance(pieces[0], Ragged):
            cond[name] = Ragged.concat(pieces, np.int32)
        else:
            cond[name] = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return CodeRows(Ragged.concat(parts, np.dtype(manifest["dtype"])), cond, key_list)


def _is_list(column) -> bool:
    import pyarrow as pa

    return pa.types.is_list(column.type) or pa.types.is_large_list(column.type)


def _ragged(column, shape_column) -> Ragged:
    """A list column (codes, a sequence input) as a Ragged, its values in their stored type; the
    shapes from `shape_column` (a list of ints per row), else each list's length."""
    import pyarrow.compute as pc

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    if shape_column is None:
        shapes = lengths[:, None]
    else:
        shape_column = shape_column.combine_chunks()
        ndim = int(pc.list_value_length(shape_column).to_numpy(zero_copy_only=False)[0]) if len(lengths) else 1
        shapes = shape_column.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, ndim)
    # a copy of just these rows: a view would keep the whole row group's buffer alive
    return Ragged(np.array(values, copy=True), offsets, shapes)
