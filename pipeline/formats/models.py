"""A logged model's files: two plain files in its run's artifacts, never a pickle.

    <run artifacts>/<artifact_path>/weights.safetensors   the state_dict (safetensors)
    <run artifacts>/<artifact_path>/config.json           {"format", "class", "config", **metadata}

`config` is the model's constructor arguments; the metadata is the lineage the stage logged
with it (a prior's `cond` table and `latent_shape`, the VQ-VAE version whose codes it learnt).

Format 2. Models logged before the `format` key (2026-11-26 to 2026-12-06) are format 2 without
saying so; those before 2026-11-26 are format 1: a Gated PixelCNN's `num_codes` (now
`codebook_size`), a prior's `grid_shape` (now `latent_shape`) and class ids under its
`cond_key` with no `cond` table, and an unused `code_counts` buffer in the quantizer's weights.
`upgrade_config` and `upgrade_weights` read every model without a `format` key into format 2.
"""
from __future__ import annotations

from pipeline.errors import UserError
from pipeline.formats import CondSpec

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT = 2


def upgrade_config(meta: dict, where: str) -> dict:
    """config.json of any format as format 2; a newer format is refused in one line."""
    found = meta.get("format")
    if found == FORMAT:
        return meta
    if found is not None:
        raise UserError(f"model {where}: {CONFIG_FILE} is of format {found}, newer than this pipeline reads "
                        f"({FORMAT}): update the pipeline")
    meta = {**meta, "config": dict(meta["config"]), "format": FORMAT}
    config = meta["config"]
    if "num_codes" in config:
        config["codebook_size"] = config.pop("num_codes")
    if "grid_shape" in meta and "latent_shape" not in meta:
        meta["latent_shape"] = meta.pop("grid_shape")
    if "cond" not in meta and meta.get("class") == "GatedPixelCNN":  # class ids only, under its cond_key
        size = int(config.get("num_classes", 0))
        meta["cond"] = {config.get("cond_key", "labels"): CondSpec("class", size).to_json()} if size else {}
    return meta


def upgrade_weights(state: dict) -> dict:
    """The weights of a model without a `format` key, as format 2 loads them."""
    return {k: v for k, v in state.items() if not k.endswith("code_counts")}
