"""Listing raw dataset folders, local or on a pyarrow filesystem, and the class-folder layout
that images (and any modality of class folders) read: which files are the inputs of each split,
and their class labels.

The class-folder layout (ImageNet's, UCF-101's): `<root>/train/<class>/*` and either
`<root>/val/<class>/*` or ImageNet's official flat `<root>/val/*` labelled by
`LOC_val_solution.csv` (in the root or its parent). With no `val/` at all, a seeded
`val_fraction` of each class of train is held out.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random

import pyarrow.fs as pafs

from pipeline.errors import UserError
from pipeline.fs import filesystem
from pipeline.modalities import RawItem
from pipeline.modalities.common import hold_out, sample_key, stem

VAL_CSV = "LOC_val_solution.csv"
NO_CLASS = "no class label (not a train class, or not in the labels file)"


def _item(path: str, label: int, class_name: str, cond_key: str) -> RawItem:
    return RawItem(key=sample_key(f"{class_name}-{stem(path)}"), path=path, cond={cond_key: label},
                   skip=None if label >= 0 else NO_CLASS)


def _shown(path: str) -> str:
    """A path as text, whatever bytes its name holds (undecodable bytes as \\xNN escapes)."""
    try:
        return path.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _list_local(path: str, is_candidate) -> tuple[list[str], list[str], list[dict]]:
    """(candidate files, subfolders, skipped {path, reason}) of one local folder. Names that are
    not UTF-8, dangling links and links that loop back are skipped with a reason, not dropped."""
    files, dirs, skipped = [], [], []
    try:
        entries = sorted(os.scandir(path), key=lambda e: os.fsencode(e.path))
    except FileNotFoundError:
        return [], [], []
    except OSError as e:
        return [], [], [{"path": _shown(path), "reason": f"unreadable folder: {e.strerror}"}]
    here = os.path.realpath(path)
    for entry in entries:
        p, shown = entry.path, _shown(entry.path)
        candidate = is_candidate(entry.name)
        if shown != p:
            skipped.append({"path": shown, "reason": "name is not valid UTF-8: it cannot be kept as a sample key"})
            continue
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError as e:
            skipped.append({"path": p, "reason": f"unreadable: {e.strerror}"})
            continue
        if entry.is_symlink() and not os.path.exists(p):
            skipped.append({"path": p, "reason": "dangling link"})
        elif is_dir and entry.is_symlink() and (here + os.sep).startswith(os.path.realpath(p) + os.sep):
            skipped.append({"path": p, "reason": f"link loop: points to {os.path.realpath(p)}, a folder above it"})
        elif is_dir:
            dirs.append(p)
        elif is_file and candidate:
            files.append(p)
        elif candidate:
            skipped.append({"path": p, "reason": "not a regular file"})
    return files, dirs, skipped


def list_dir(fs: pafs.FileSystem, path: str, is_candidate) -> tuple[list[str], list[str], list[dict]]:
    """(candidate files, subfolders, skipped {path, reason}) of one folder."""
    if isinstance(fs, pafs.LocalFileSystem):
        return _list_local(path, is_candidate)
    files, dirs = [], []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory:
            dirs.append(info.path)
        elif info.type == pafs.FileType.File and is_candidate(info.base_name):
            files.append(info.path)
    return sorted(files), sorted(dirs), []


def _list_class_dir(fs, path: str, is_candidate) -> tuple[list[str], list[dict]]:
    """The inputs of one class folder; folders in it named like inputs are skipped with a reason."""
    files, dirs, skipped = list_dir(fs, path, is_candidate)
    skipped += [{"path": d, "reason": "a folder, not a file"} for d in dirs if is_candidate(d.rsplit("/", 1)[-1])]
    return files, skipped


def _list_class_dirs(fs, jobs, is_candidate) -> dict[tuple[str, str], tuple[list[str], list[dict]]]:
    """List many class folders at once with Ray Data (one task per folder) when there are many."""
    if len(jobs) <= 64:  # a local listing of a few folders beats starting tasks
        return {(s, c): _list_class_dir(fs, d, is_candidate) for s, c, d in jobs}
    import ray

    def list_one(row: dict) -> dict:
        files, skipped = _list_class_dir(fs, row["dir"], is_candidate)
        return {"split": row["split"], "cls": row["cls"], "files": files, "skipped": json.dumps(skipped)}

    rows = [{"split": s, "cls": c, "dir": d} for s, c, d in jobs]
    listed = ray.data.from_items(rows, override_num_blocks=min(len(rows), 200)).map(list_one).take_all()
    return {(r["split"], r["cls"]): (list(r["files"]), json.loads(r["skipped"])) for r in listed}


def _read_val_csv(fs, root: str) -> dict[str, str]:
    parent = root.rsplit("/", 1)[0]
    for folder in (root, parent):
        path = f"{folder}/{VAL_CSV}"
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as f:
                rows = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"))
                try:
                    return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}
                except (KeyError, IndexError):
                    raise UserError(f"{path}: expected columns ImageId,PredictionString") from None
    raise UserError(f"{root}/val holds inputs but no class folders, and no {VAL_CSV} labels them")


def check_root(root: str) -> None:
    """Fail fast, before any cluster work, on a root that is not a class-folder layout."""
    fs, base = filesystem(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise UserError(f"data.root does not exist or is not a folder: {root}")
    if fs.get_file_info(f"{base}/train").type != pafs.FileType.Directory:
        raise UserError(f"data.root has no train/ folder (expected <root>/train/<class>/*): {root}")


def list_class_layout(root: str, val_fraction: float, seed: int, is_candidate, cond_key: str = "labels"):
    """-> (classes, {"train": [RawItem], "val": [RawItem]}, skipped [{path, reason}]), each item's
    class id under `cond_key`; `skipped`: what the listing itself could not take (odd names,
    links, folders named like inputs)."""
    check_root(root)
    fs, base = filesystem(root)
    _, train_dirs, skipped = list_dir(fs, f"{base}/train", is_candidate)
    if not train_dirs:
        raise UserError(f"data.root has no train/<class>/ folders: {root}")
    classes = [d.rsplit("/", 1)[-1] for d in train_dirs]
    index = {c: i for i, c in enumerate(classes)}
    val_files, val_dirs, val_skipped = list_dir(fs, f"{base}/val", is_candidate)
    skipped += val_skipped

    jobs = [("train", c, d) for c, d in zip(classes, train_dirs)]
    jobs += [("val", d.rsplit("/", 1)[-1], d) for d in val_dirs]
    found = _list_class_dirs(fs, jobs, is_candidate)
    listed = {k: files for k, (files, _) in found.items()}
    skipped += [s for _, folder_skipped in found.values() for s in folder_skipped]

    splits: dict[str, list[RawItem]] = {"train": [], "val": []}
    rng = random.Random(seed)
    have_val = bool(val_files or val_dirs)
    for c in classes:
        files = listed[("train", c)]
        if not have_val:  # hold out a seeded fraction of every class
            val, files = hold_out(files, val_fraction, rng)
            splits["val"] += [_item(p, index[c], c, cond_key) for p in val]
        splits["train"] += [_item(p, index[c], c, cond_key) for p in files]
    for d in val_dirs:
        c = d.rsplit("/", 1)[-1]
        splits["val"] += [_item(p, index.get(c, -1), c, cond_key) for p in listed[("val", c)]]
    if val_files:
        labels = _read_val_csv(fs, base)
        for p in val_files:
            c = labels.get(stem(p), "")
            splits["val"].append(_item(p, index.get(c, -1), c or "unlabelled", cond_key))
    if not any(splits.values()):
        raise UserError(f"data.root holds no input files of this modality: {root}")
    return classes, splits, sorted(skipped, key=lambda s: s["path"])
