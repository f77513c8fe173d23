"""Model files: a model is logged as two plain files in its run's artifacts, never a pickle or an
MLmodel (their format: pipeline/formats/models.py):

    <run artifacts>/<artifact_path>/weights.safetensors   the state_dict (safetensors)
    <run artifacts>/<artifact_path>/config.json           {"format", "class", "config", **metadata}

Loading rebuilds the module from this project's code (the model classes of pipeline.models and of
the modalities, looked up by the name in config.json; nothing is imported by a name read from a
file) and reads the weights with safetensors, so loading a model never runs code from the store.
A model of an older format is read through the format's one converter.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is saved or loaded: `models list` needs none of it
    import torch
    from torch import nn

from pipeline.errors import UserError
from pipeline.formats.models import CONFIG_FILE, FORMAT, WEIGHTS_FILE, upgrade_config, upgrade_weights
from pipeline.tracking.registry import resolve


def _model_classes() -> dict[str, type[nn.Module]]:
    from pipeline import modalities

    return modalities.model_classes()


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP / DataParallel / torch.compile wrappers."""
    from torch import nn

    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_model_files(model: nn.Module, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write weights.safetensors and config.json of `model` into `folder`."""
    from safetensors.torch import save_model

    model = _unwrap(model)
    name = type(model).__name__
    if name not in _model_classes():
        raise ValueError(f"cannot log a {name}: only {sorted(_model_classes())} can be loaded back")
    metadata = dict(metadata or {})
    clash = {"format", "class", "config"} & metadata.keys()
    if clash:
        raise ValueError(f"metadata may not set {sorted(clash)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) drops aliases of shared tensors and makes tensors contiguous.
    save_model(model, str(folder / WEIGHTS_FILE), metadata={"class": name})
    config = {"format": FORMAT, "class": name, "config": dict(model.config), **metadata}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def log_model(model: nn.Module, artifact_path: str = "model", metadata: dict | None = None) -> str:
    """Log the model's files under `artifact_path` of the active run; returns their artifact URI."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_model needs an active MLflow run (use start_run)")
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        save_model_files(model, tmp, metadata)
        mlflow.log_artifacts(tmp, artifact_path=artifact_path)
    return mlflow.get_artifact_uri(artifact_path)


def _download(uri: str, files: tuple[str, ...], dst: str) -> Path:
    """Fetch `files` of the model at `uri` (models:/, runs:/, any artifact URI or a local folder)
    into `dst`; returns the folder holding them."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri):  # no scheme: a local folder
        local = Path(uri).expanduser()
        if not local.is_dir():
            raise UserError(f"model {uri}: no such folder")
        missing = [f for f in files if not (local / f).is_file()]
        if missing:
            raise UserError(f"model {uri}: missing {', '.join(missing)}")
        return local
    base = uri.rstrip("/")
    if uri.startswith("models:"):
        info = resolve(uri)  # UserError when the name/alias/version does not exist
        base = f"models:/{info['name']}/{info['version']}"  # pinned: the alias may move meanwhile
    for f in files:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{f}", dst_path=dst)
        except (MlflowException, OSError) as e:
            msg = getattr(e, "message", None) or str(e)
            raise UserError(f"model {uri}: cannot download {f}: {msg.splitlines()[0]}") from None
    return Path(dst)


def model_metadata(uri: str) -> dict:
    """config.json of the model at `uri` (in this format): class, config and the lineage logged
    with it."""
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        folder = _download(uri, (CONFIG_FILE,), tmp)
        return upgrade_config(_read_config(uri, folder), uri)


def weights_digest(uri: str) -> str:
    """sha256 of the model's weights file: what makes two models the same, whatever their
    version numbers (which restart in another MLflow store)."""
    import hashlib

    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        folder = _download(uri, (WEIGHTS_FILE,), tmp)
        digest = hashlib.sha256()
        with open(folder / WEIGHTS_FILE, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def _read_config(uri: str, folder: Path) -> dict:
    """config.json as logged (`upgrade_config` reads it into this format)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"model {uri}: unreadable {CONFIG_FILE}: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UserError(f"model {uri}: {CONFIG_FILE} has no 'config' object")
    return config


def load_model(uri: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model at `uri` from its config.json and safetensors weights, in eval mode."""
    from safetensors.torch import load_file
    from safetensors.torch import load_model as load_weights

    where = uri  # what errors name: the version too, not only the alias that led to it
    if uri.startswith("models:"):
        info = resolve(uri)
        pinned = f"models:/{info['name']}/{info['version']}"
        where = uri if uri == pinned else f"{uri} ({pinned})"
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        folder = _download(uri, (CONFIG_FILE, WEIGHTS_FILE), tmp)
        logged = _read_config(where, folder)
        meta = upgrade_config(logged, where)
        cls = _model_classes().get(meta.get("class"))
        if cls is None:
            raise UserError(f"model {where}: unknown class {meta.get('class')!r}")
        try:
            model = cls.from_config(meta["config"])
        except (TypeError, ValueError) as e:
            raise UserError(f"model {where}: {CONFIG_FILE} does not build a {cls.__name__}: "
                            f"{str(e).splitlines()[0]}") from None
        try:
            if logged.get("format") == FORMAT:
                load_weights(model, str(folder / WEIGHTS_FILE), strict=True)  # copies into params
            else:
                model.load_state_dict(upgrade_weights(load_file(str(folder / WEIGHTS_FILE))), strict=True)
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, shape or key mismatches
            raise UserError(f"model {where}: {WEIGHTS_FILE} is not the weights of its {CONFIG_FILE}: "
                            f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return model.to(device).eval()


def _load_checked(uri: str, role: str, device) -> nn.Module:
    model = load_model(uri, device)
    if getattr(model, "role", None) != role:
        raise UserError(f"model {uri} is a {type(model).__name__}, not a {'VQ-VAE' if role == 'autoencoder' else role}")
    return model


def load_vqvae(uri: str, device: str | torch.device = "cpu") -> nn.Module:
    """The VQ-VAE (of any modality) at `uri`, in eval mode."""
    return _load_checked(uri, "autoencoder", device)


def load_prior(uri: str, device: str | torch.device = "cpu") -> nn.Module:
    """The prior over codes at `uri`, in eval mode."""
    return _load_checked(uri, "prior", device)


