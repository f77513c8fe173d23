"""The codes dataset: what the codes stage writes and stage 2 reads.

    <workdir>/codes/<dataset>/v<version>-<run id>/{train,val}/*.parquet
    <workdir>/codes/<dataset>/v<version>-<run id>/manifest.json

One row per sample: `key` (string), `codes` (the code array flattened in C order, the smallest
integer type that holds K), `shape` (its shape: (h, w) for an image, (t,) for speech, (t, h, w)
for video) and one column per conditioning input (`cond` in the manifest): an int32 for a class
id, a list of int32 for a per-step sequence. Shapes may differ from row to row; stage 2 pads
them in a batch and masks the padding. The manifest is written last: a folder without one is
unfinished.

Format 2 (2026-11-26 on). Format 1 (fixed-size grids and a `label` column, in `v<version>/`
folders) is never read: a folder without a manifest of this format is unfinished to every stage,
and the codes job writes it again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np


MANIFEST = "manifest.json"
FORMAT = 2
SPLITS = ("train", "val")


def code_dtype(codebook_size: int) -> np.dtype:
    """The smallest integer type that holds every index below codebook_size."""
    if codebook_size <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16) if codebook_size <= 32768 else np.dtype(np.int32)


def load_manifest(folder: str) -> dict | None:
    """The manifest of a finished codes folder in this format, else None."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        manifest = json.load(f)
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
class CodeSet:
    """One split, rows sorted by key: each row's code array (int64) and conditioning."""
    keys: list[str]
    codes: list[np.ndarray]
    cond: dict[str, list]

    def __len__(self) -> int:
        return len(self.keys)

    def same_shape(self) -> bool:
        return len({c.shape for c in self.codes}) <= 1

    def subset(self, rows) -> "CodeSet":
        rows = list(rows)
        return CodeSet([self.keys[i] for i in rows], [self.codes[i] for i in rows],
                       {k: [v[i] for i in rows] for k, v in self.cond.items()})


def read_split(folder: str, split: str) -> CodeSet:
    import pyarrow.parquet as pq

    manifest = load_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no finished codes (manifest.json of format {FORMAT})")
    names = list(manifest.get("cond", {}))
    table = pq.read_table(os.path.join(folder, split), columns=["key", "codes", "shape", *names])
    keys = table.column("key").to_pylist()
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    column = table.column("codes").combine_chunks()
    values = column.flatten().to_numpy().astype(np.int64)
    offsets = column.offsets.to_numpy()
    shapes = table.column("shape").to_pylist()
    codes = [values[offsets[i]:offsets[i + 1]].reshape(shapes[i]) for i in range(len(keys))]
    cond = {}
    for name in names:
        col = table.column(name).to_pylist()
        cond[name] = [col[i] if not isinstance(col[i], list) else np.asarray(col[i], np.int64) for i in order]
    return CodeSet([keys[i] for i in order], [codes[i] for i in order], cond)


def collate(codes: list[np.ndarray], cond: dict[str, list]):
    """-> (codes (B, *max shape) int64, cond {name: (B,) or (B, T)}, mask (B, *max shape) or None).
    Shorter arrays are padded with code 0 at their ends and masked out."""
    import torch

    shapes = {c.shape for c in codes}
    cond_t = {k: _stack_padded([np.asarray(v) for v in vs]) for k, vs in cond.items()}
    if len(shapes) == 1:
        return torch.from_numpy(np.stack(codes)), cond_t, None
    batch = _stack_padded(codes)
    mask = torch.zeros(batch.shape, dtype=torch.bool)
    for i, c in enumerate(codes):
        mask[(i, *(slice(0, n) for n in c.shape))] = True
    return batch, cond_t, mask


def _stack_padded(arrays: list[np.ndarray]):
    import torch

    if not arrays[0].shape:
        return torch.as_tensor(np.asarray(arrays, dtype=np.int64))
    shape = tuple(max(sizes) for sizes in zip(*(a.shape for a in arrays)))
    out = torch.zeros(len(arrays), *shape, dtype=torch.long)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = torch.from_numpy(np.asarray(a, dtype=np.int64))
    return out
