"""pipeline.tracking against a real MLflow SQLite store in tmp_path: log, register, promote, load."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline import tracking
from pipeline.errors import UserError
from pipeline.models.pixelcnn import GatedPixelCNN
from pipeline.models.vqvae import VQVAE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite store under tmp_path; the process runs elsewhere so a stray ./mlruns shows."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    before = mlflow.get_tracking_uri()
    exp_id = tracking.setup_tracking(f"sqlite:///{tmp_path}/db/mlflow.db", "t")
    yield exp_id
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(before)
    assert not any(cwd.iterdir()), f"files left in the working directory: {list(cwd.iterdir())}"
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ


@pytest.fixture(autouse=True, scope="module")
def repo_stays_clean():
    before = {p for p in ("mlruns", "mlflow.db", "mlartifacts") if (REPO / p).exists()}
    yield
    after = {p for p in ("mlruns", "mlflow.db", "mlartifacts") if (REPO / p).exists()}
    assert after <= before, f"tests left {after - before} in the repo"


def small_vqvae(seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(hidden=16, codebook_size=8, code_dim=4, num_res_blocks=1).eval()


def small_prior(seed: int = 0) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(codebook_size=8, num_classes=3, hidden=8, num_layers=2).eval()


def log_and_register(exp_id, model, name, value, metadata=None, tags=None):
    with tracking.start_run(exp_id, f"{name}-{value}") as run:
        uri = tracking.log_model(model, metadata=metadata)
    version, promoted = tracking.register_model(run.info.run_id, "model", name, "val_mse", value, tags=tags)
    return run.info.run_id, uri, version, promoted


def test_vqvae_roundtrip_through_the_registry(store):
    model = small_vqvae()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    run_id, uri, version, promoted = log_and_register(
        store, model, "vqvae-t", 0.5, metadata={"shards": "/data/t"}, tags={"dataset": "t"}
    )
    assert (version, promoted) == ("1", True)
    with torch.no_grad():
        want = model(x)
        for model_uri in ("models:/vqvae-t@champion", "models:/vqvae-t/1", f"runs:/{run_id}/model", uri):
            loaded = tracking.load_vqvae(model_uri)
            assert isinstance(loaded, VQVAE) and not loaded.training
            got = loaded(x)
            assert torch.equal(got.recon, want.recon), model_uri
            assert torch.equal(got.vq.indices, want.vq.indices)
            assert torch.equal(loaded.encode(x), model.encode(x))

    info = tracking.resolve("models:/vqvae-t@champion")
    assert info["version"] == "1" and info["run_id"] == run_id and info["aliases"] == ["champion"]
    assert info["tags"]["metric.val_mse"] == "0.5" and info["tags"]["dataset"] == "t"
    meta = tracking.model_metadata("models:/vqvae-t/1")
    assert meta["class"] == "VQVAE" and meta["config"] == model.config and meta["shards"] == "/data/t"

    # The files: weights + JSON config, nothing pickled, no MLmodel.
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "model")}
    assert files == {"model/weights.safetensors", "model/config.json"}
    assert uri.startswith(Path(mlflow.get_tracking_uri()[len("sqlite:///"):]).parent.joinpath("mlartifacts").as_uri())
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pt", ".pth", ".pickle") or p.name == "MLmodel"]
    assert json.loads((local / "config.json").read_text())["class"] == "VQVAE"
    assert tracking.load_vqvae(str(local)).config == model.config  # a plain local folder loads too


def test_prior_roundtrip_and_class_checks(store):
    prior = small_prior()
    log_and_register(store, prior, "prior-t", 2.0)
    codes = torch.randint(0, 8, (2, 6, 6), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2])
    loaded = tracking.load_prior("models:/prior-t@champion")
    with torch.no_grad():
        assert torch.equal(loaded.logits(codes, {"labels": labels}), prior.logits(codes, {"labels": labels}))
    with pytest.raises(UserError, match="models:/prior-t@champion is a GatedPixelCNN, not a VQ-VAE"):
        tracking.load_vqvae("models:/prior-t@champion")


def test_models_registered_before_the_modality_seam_still_load(store, tmp_path):
    """Files as stage 1 and stage 2 wrote them until 2026-11-26 (format 1, no format key): a VQ-VAE
    with the unused `code_counts` buffer, a prior whose config says `num_codes`. The one converter
    of pipeline/formats/models.py reads them; a format newer than this pipeline's is refused."""
    from safetensors.torch import load_file, save_file

    vqvae, prior = small_vqvae(), small_prior()
    for model, name, extra in ((vqvae, "VQVAE", {"vq.code_counts": torch.zeros(8, dtype=torch.long)}),
                               (prior, "GatedPixelCNN", {})):
        folder = tmp_path / name
        tracking.save_model_files(model, folder)
        weights = {**load_file(folder / tracking.WEIGHTS_FILE), **extra}
        save_file(weights, folder / tracking.WEIGHTS_FILE, metadata={"class": name})
        config = json.loads((folder / tracking.CONFIG_FILE).read_text())
        assert config.pop("format") == 2
        if name == "GatedPixelCNN":
            config["config"]["num_codes"] = config["config"].pop("codebook_size")
            config["config"].pop("cond_key")
        (folder / tracking.CONFIG_FILE).write_text(json.dumps(config))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tracking.load_vqvae(str(tmp_path / "VQVAE")).encode(x), vqvae.encode(x))
        codes = torch.randint(0, 8, (1, 4, 4))
        old = tracking.load_prior(str(tmp_path / "GatedPixelCNN"))
        assert torch.equal(old.logits(codes, {"labels": torch.tensor([1])}),
                           prior.logits(codes, {"labels": torch.tensor([1])}))
    assert tracking.model_metadata(str(tmp_path / "GatedPixelCNN"))["config"]["codebook_size"] == 8
    newer = tmp_path / "newer"
    tracking.save_model_files(prior, newer)
    (newer / tracking.CONFIG_FILE).write_text(json.dumps({**json.loads((newer / tracking.CONFIG_FILE).read_text()),
                                                          "format": 3}))
    with pytest.raises(UserError, match=r"config.json is of format 3, newer than this pipeline reads \(2\)"):
        tracking.load_prior(str(newer))


def test_champion_moves_only_to_a_better_version(store):
    got = [log_and_register(store, small_vqvae(i), "vqvae-t", v)[2:] for i, v in enumerate((0.5, 0.7, 0.3))]
    assert got == [("1", True), ("2", False), ("3", True)]
    assert tracking.resolve("models:/vqvae-t@champion")["version"] == "3"
    assert tracking.resolve("models:/vqvae-t/2")["aliases"] == []
    assert tracking.resolve("models:/vqvae-t/latest")["version"] == "3"
    # higher-is-better metrics and a NaN (never promoted)
    with tracking.start_run(store, "acc") as run:
        tracking.log_model(small_vqvae())
    assert tracking.register_model(run.info.run_id, "model", "vqvae-t", "val_mse", float("nan"))[1] is False
    tracking.set_alias("vqvae-t", "staging", "2")
    assert tracking.resolve("models:/vqvae-t@staging")["version"] == "2"
    assert tracking.resolve("models:/vqvae-t@champion")["version"] == "3"


def test_versions_whose_metric_scores_another_signal_are_not_compared(store):
    """Speech bits per sample of a linear predictor's excitation are not the samples' bits: a
    champion that scored another signal (or does not say) is replaced, whatever the numbers."""
    from pipeline.tracking.registry import METRIC_SCALE_TAG

    plain, lpc = {METRIC_SCALE_TAG: "lpc_order=0"}, {METRIC_SCALE_TAG: "lpc_order=16"}
    got = [log_and_register(store, small_vqvae(i), "vqvae-s", value, tags=tags)[2:]
           for i, (value, tags) in enumerate([(5.5, None), (6.2, plain), (6.0, plain), (6.3, lpc), (6.4, lpc),
                                              (6.1, lpc)])]
    # untagged holder -> replaced; plain 6.0 beats plain 6.2; lpc replaces plain although higher;
    # then lpc versions compare among themselves
    assert got == [("1", True), ("2", True), ("3", True), ("4", True), ("5", False), ("6", True)]
    assert tracking.resolve("models:/vqvae-s@champion")["version"] == "6"


def test_child_runs_nest_under_their_parent(store):
    with tracking.start_run(store, "pipeline") as parent:
        with tracking.start_run(store, "stage1", parent_run_id=parent.info.run_id, tags={"k": 1}) as child:
            pass
    run = mlflow.MlflowClient().get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["k"] == "1"
    assert run.info.experiment_id == store and run.info.run_name == "stage1"
    assert tracking.setup_tracking(mlflow.get_tracking_uri(), "t") == store  # get, not create


def test_missing_models_are_user_errors(store, tmp_path):
    for uri in ("models:/nope@champion", "models:/nope/1", str(tmp_path / "no-such-folder")):
        with pytest.raises(UserError, match=re.escape(uri)):
            tracking.load_model(uri)
    log_and_register(store, small_vqvae(), "vqvae-t", 0.5)
    with pytest.raises(UserError, match="models:/vqvae-t@nope"):
        tracking.resolve("models:/vqvae-t@nope")
    with pytest.raises(UserError, match="models:/vqvae-t/9"):
        tracking.model_metadata("models:/vqvae-t/9")


def test_unreachable_server_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        before = mlflow.get_tracking_uri()
        start = time.monotonic()
        with pytest.raises(UserError, match=f"unreachable at http://127.0.0.1:{port}"):
            tracking.setup_tracking(f"http://127.0.0.1:{port}", "x")
        assert time.monotonic() - start < 10
    assert mlflow.get_tracking_uri() == before  # checked before anything else


def test_setup_tracking_leaves_the_environment_alone(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second workdir in the same process
    must not inherit the first one's store through it."""
    import os

    from pipeline.tracking import setup_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    setup_tracking(f"sqlite:///{tmp_path}/a/mlflow.db", "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/b/mlflow.db")
    setup_tracking(f"sqlite:///{tmp_path}/c/mlflow.db", "c")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/b/mlflow.db"
