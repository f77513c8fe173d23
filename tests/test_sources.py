"""Raw layouts (pipeline/modalities/folders.py): ImageNet's class folders, its official flat val/ with LOC_val_solution.csv, and a
seeded held-out fraction of train when there is no val/ at all."""
from __future__ import annotations

import shutil

import pytest

from pipeline.modalities.folders import list_class_layout
from pipeline.errors import UserError
from pipeline.modalities.image import is_candidate


def test_flat_val_is_labelled_by_the_solution_csv(tmp_path, demo_raw):
    root = tmp_path / "imagenet"
    shutil.copytree(demo_raw / "train", root / "train")
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i, src in enumerate(sorted((demo_raw / "val").glob("*/*.JPEG"))):
        image_id = f"ILSVRC2012_val_{i:08d}"
        shutil.copy(src, root / "val" / f"{image_id}.JPEG")
        rows.append(f"{image_id},{src.parent.name} 1 2 30 40 {src.parent.name} 5 6 70 80")
    (root / "val" / "ILSVRC2012_val_99999999.JPEG").write_bytes(b"")  # not in the csv
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")  # beside the root, as on Kaggle
    classes, splits, _ = list_class_layout(str(root), 0.1, 0, is_candidate)
    by_id = {f.path.rsplit("/", 1)[-1].split(".")[0]: f.cond["labels"] for f in splits["val"]}
    expected = {r.split(",")[0]: classes.index(r.split(",")[1].split()[0]) for r in rows[1:]}
    assert {k: v for k, v in by_id.items() if k in expected} == expected
    assert by_id["ILSVRC2012_val_99999999"] == -1  # skipped later, with its reason
    unlabelled = next(f for f in splits["val"] if "99999999" in f.path)
    assert unlabelled.skip.startswith("no class label")
    assert all(f.skip is None for f in splits["val"] if f is not unlabelled)


def test_flat_val_without_csv_is_a_clear_error(tmp_path, demo_raw):
    root = tmp_path / "imagenet"
    shutil.copytree(demo_raw / "train", root / "train")
    (root / "val").mkdir()
    shutil.copy(next((demo_raw / "val").glob("*/*.JPEG")), root / "val" / "x.JPEG")
    with pytest.raises(UserError, match="LOC_val_solution.csv"):
        list_class_layout(str(root), 0.1, 0, is_candidate)


def test_no_val_holds_out_a_seeded_fraction_of_each_class(tmp_path, demo_raw):
    root = tmp_path / "noval"
    shutil.copytree(demo_raw / "train", root / "train")
    classes, a, _ = list_class_layout(str(root), 0.25, 7, is_candidate)
    _, b, _ = list_class_layout(str(root), 0.25, 7, is_candidate)
    _, c, _ = list_class_layout(str(root), 0.25, 8, is_candidate)
    assert a == b and a != c  # seeded
    train, val = {f.path for f in a["train"]}, {f.path for f in a["val"]}
    assert not train & val and len(train | val) == 12 * len(classes)
    for label in range(len(classes)):  # 12 per class, a quarter held out
        assert sum(f.cond["labels"] == label for f in a["val"]) == 3
