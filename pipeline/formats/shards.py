"""The shards' manifest: what the shard stage writes last and every later stage reads first.

    <workdir>/shards/<dataset>/{train,val}/<split>-NNNNNN.tar   webdataset tars
    <workdir>/shards/<dataset>/manifest.json

The manifest holds `format`, the dataset and modality, per split the samples and every tar's
path, sample count and sha256, the conditioning table (`cond`: a CondSpec per name), what the
shards were made from (`source`: the raw listing's digest and the data config), the inputs
skipped and why, and the modality's own fields. Its sha256 is the shards' identity.

Format 2 (2026-11-26 on; manifests of that time carry no `format` key and are read as 2): the
conditioning table under `cond` and the source identity. Format 1 manifests (class folders only,
no `cond`, no `source`) are refused: re-shard.
"""
from __future__ import annotations

import hashlib
import json

from pipeline import fs as fsx
from pipeline.errors import UserError
from pipeline.formats import CondSpec, cond_specs

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
FORMAT = 2
RESHARD = "re-run jobs/shard.py with --set overwrite=true"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def read_manifest(shards_dir: str) -> dict | None:
    """The manifest as written, of any format; None when there is none (unfinished or never run)."""
    fs, base = fsx.filesystem(shards_dir)
    path = f"{base}/{MANIFEST}"
    return json.loads(fsx.read_bytes(fs, path)) if fsx.exists(fs, path) else None


def format_of(manifest: dict) -> int:
    if "format" in manifest:
        return int(manifest["format"])
    return FORMAT if "cond" in manifest and "source" in manifest else 1


def check_format(manifest: dict, shards_dir: str) -> dict:
    """The manifest when it is of this format; else one line saying what to do."""
    found = format_of(manifest)
    if found < FORMAT:
        raise UserError(f"the shards at {shards_dir} are of format {found}, written before 2026-11-26 "
                        f"(no conditioning table or source record): {RESHARD}")
    if found > FORMAT:
        raise UserError(f"the shards at {shards_dir} are of format {found}, newer than this pipeline reads "
                        f"({FORMAT}): update it, or {RESHARD}")
    return manifest


def load_manifest(shards_dir: str) -> dict | None:
    """The manifest of finished shards in this format; None when there are none; a UserError
    for another format."""
    manifest = read_manifest(shards_dir)
    return None if manifest is None else check_format(manifest, shards_dir)


def manifest_digest(manifest: dict) -> str:
    """The shards' identity: the sha256 of their manifest (which holds every tar's sha256)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def shard_cond(manifest: dict) -> dict[str, CondSpec]:
    """The conditioning the shards carry."""
    return cond_specs(manifest["cond"])
