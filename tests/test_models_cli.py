"""jobs/models.py (pipeline/stages/models.py) against a real MLflow SQLite store holding tiny real models
registered the way stage 1 and stage 2 register theirs: list, show, promote, their one-line
errors, and the two models:/ URI forms every job that takes a model accepts."""
from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import REPO, run_job, write_config
from pipeline import tracking
from pipeline.config import load_settings
from pipeline.errors import UserError
from pipeline.models.pixelcnn import GatedPixelCNN
from pipeline.models.vqvae import VQVAE
from pipeline.stages import models as registry
from pipeline.stages.sample import sample

SHA = "0123456789abcdef" * 4
VQVAE_LINEAGE = {"shards": "/data/shards/demo", "shards_manifest_sha256": SHA, "dataset": "demo",
                 "modality": "image", "image_size": 16}
PRIOR_LINEAGE = {"vqvae_name": "vqvae-demo", "vqvae_version": "2", "vqvae_run_id": "r", "codes": "/w/codes/demo/v2",
                 "dataset": "demo"}


def tiny_vqvae(seed: int) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(hidden=16, codebook_size=8, code_dim=4, num_res_blocks=1).eval()


def tiny_prior(seed: int) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(codebook_size=8, num_classes=3, hidden=8, num_layers=2).eval()


def register(exp_id: str, model, name: str, metric: str, value: float, history: dict[int, dict],
             lineage: dict, metadata: dict | None = None, old: bool = False) -> str:
    """Log `history` ({step: metrics}) and the model in one run, register it as stage 1/2 do.
    `old`: its config.json as a version registered before 2026-11-26 has it (format 1: no format
    key, `grid_shape` for `latent_shape`, no conditioning table)."""
    with tracking.start_run(exp_id, f"{name}-{value}") as run:
        for step, metrics in history.items():
            mlflow.log_metrics(metrics, step=step)
        with tempfile.TemporaryDirectory() as folder:
            tracking.save_model_files(model, folder, {**lineage, **(metadata or {})})
            if old:
                config = json.loads((Path(folder) / "config.json").read_text())
                config.pop("format")
                config["grid_shape"] = config.pop("latent_shape")
                (Path(folder) / "config.json").write_text(json.dumps(config))
            mlflow.log_artifacts(folder, "model")
    version, _ = tracking.register_model(run.info.run_id, "model", name, metric, value,
                                         tags={k: str(v) for k, v in lineage.items()})
    return version


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """vqvae-demo v1 (val_mse 0.5) and v2 (0.25, champion); prior-demo v1 on vqvae-demo v2,
    registered on its best step (20), not its last (30)."""
    root = tmp_path_factory.mktemp("registry")
    before = mlflow.get_tracking_uri()
    exp_id = tracking.setup_tracking(f"sqlite:///{root}/mlflow.db", "demo")
    for seed, mse in ((1, 0.5), (2, 0.25)):
        register(exp_id, tiny_vqvae(seed), "vqvae-demo", "val_mse", mse,
                 {30: {"val_mse": mse, "val_psnr": -10 * torch.tensor(mse).log10().item(), "perplexity": 5.0 + seed,
                       "codebook_usage": 0.5 + seed / 8}}, VQVAE_LINEAGE, {"stage": "stage1"})
    # the prior's lineage names the real run of vqvae-demo v2: sampling checks it
    PRIOR_LINEAGE["vqvae_run_id"] = tracking.resolve("models:/vqvae-demo/2")["run_id"]
    nll = {10: 2.9, 20: 2.5, 30: 2.7}
    bpd = {10: 0.5, 20: 0.4, 30: 0.45}
    register(exp_id, tiny_prior(3), "prior-demo", "val_nll_bits_per_code", 2.5,
             {s: {"val_nll_bits_per_code": nll[s], "val_bits_per_dim": bpd[s], "uniform_bits_per_code": 3.0}
              for s in nll}, PRIOR_LINEAGE, {"stage": "stage2", "latent_shape": [4, 4]}, old=True)
    mlflow.set_tracking_uri(before)
    return root / "mlflow.db"


@pytest.fixture
def store(built, tmp_path) -> str:
    """A private copy of the built store (artifacts stay shared, read-only), MLflow pointed at it."""
    db = tmp_path / "mlflow.db"
    shutil.copy(built, db)
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{db}"
    registry.open_store(uri)
    yield uri
    mlflow.set_tracking_uri(before)


def models(*args: str, env: dict | None = None):
    """jobs/models.py as its own process: what a user runs, exit code and streams included."""
    return run_job("models.py", *args, timeout=60, env=env)


@pytest.fixture
def cli(capsys, monkeypatch):
    """jobs/models.py's main run in this process (argv, environment, exit code and streams as the
    process would have them): each run as a process of its own costs a Python start that imports
    MLflow, ~8 s on 2 loaded cores. `models` above runs the real process where that is the subject."""
    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", ["jobs/models.py", *args])
        monkeypatch.syspath_prepend(str(REPO / "jobs"))  # as Python runs a script: its folder first
        capsys.readouterr()
        before = mlflow.get_tracking_uri()
        try:
            runpy.run_path(str(REPO / "jobs" / "models.py"), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1  # as the interpreter maps it
        finally:
            mlflow.set_tracking_uri(before)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["jobs/models.py", *args], code, out, err)
    return run


def aliases(name: str) -> dict[str, str]:
    """The registry's own record, read past pipeline.stages.models (the SQL store gives ints)."""
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_list_shows_versions_aliases_metrics_and_lineage(store):
    proc = models("list", env={"MLFLOW_TRACKING_URI": store})
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split() == ["MODEL", "VERSION", "ALIASES", "METRICS", "LINEAGE", "CREATED"]
    assert [row.split()[:3] for row in rows] == [["prior-demo", "1", "champion"], ["vqvae-demo", "1", "-"],
                                                 ["vqvae-demo", "2", "champion"]]
    prior, v1, v2 = rows
    # the prior's run metrics at its registered (best) step 20, not the last ones of step 30
    assert "val_nll_bits_per_code=2.5 val_bits_per_dim=0.4 uniform_bits_per_code=3 " in prior
    assert "codes of vqvae-demo v2" in prior
    assert "val_mse=0.25 val_psnr=6.021 perplexity=7 codebook_usage=0.75 " in v2
    assert "val_mse=0.5 val_psnr=3.01 perplexity=6 codebook_usage=0.625 " in v1
    assert "shards /data/shards/demo (sha256 0123456789ab)" in v1
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d$", v2)


def test_list_of_one_model_as_json(store, cli):
    proc = cli("list", "prior-demo", "--json", "--tracking-uri", store)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert (row["name"], row["version"], row["aliases"], row["step"]) == ("prior-demo", "1", ["champion"], 20)
    assert row["registered_metric"] == {"val_nll_bits_per_code": 2.5}
    assert row["metrics"] == {"val_bits_per_dim": 0.4, "uniform_bits_per_code": 3.0}
    assert row["lineage"] == PRIOR_LINEAGE
    assert row["run_id"] == MlflowClient().get_model_version("prior-demo", "1").run_id


def test_show_prints_tags_config_and_run_metrics(store, cli):
    proc = cli("show", "models:/vqvae-demo@champion", "--tracking-uri", store)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    run_id = MlflowClient().get_model_version("vqvae-demo", "2").run_id
    assert out.startswith("vqvae-demo v2  [champion]\n")
    assert f"  run: {run_id}\n" in out and f"/{run_id}/artifacts/model" in out
    assert re.search(r"metric\.val_mse\s+0\.25\n", out) and re.search(rf"shards_manifest_sha256\s+{SHA}\n", out)
    assert re.search(r"metrics at the registered step 30:\n(    .*\n)*    perplexity\s+7\n", out)
    assert '"codebook_size": 8' in out and '"class": "VQVAE"' in out and '"stage": "stage1"' in out


def test_show_takes_every_uri_form_and_a_bare_name(store):
    by_alias = registry.show("models:/vqvae-demo@champion")
    assert by_alias == registry.show("models:/vqvae-demo/2") == registry.show("models:/vqvae-demo/latest")
    [row] = by_alias
    assert row["config"]["config"] == tiny_vqvae(2).config and row["lineage"]["shards"] == "/data/shards/demo"
    assert row["run_metrics"]["val_mse"] == 0.25 and row["metrics"]["codebook_usage"] == 0.75
    assert [r["version"] for r in registry.show("vqvae-demo")] == ["1", "2"]
    prior = registry.show("prior-demo")[0]
    assert prior["metrics"]["val_bits_per_dim"] == 0.4 and prior["run_metrics"]["val_bits_per_dim"] == 0.45
    # its config.json is of format 1, read through the one converter
    assert prior["config"]["latent_shape"] == [4, 4] and prior["config"]["cond"]["labels"]["size"] == 3


def test_promote_moves_the_alias_and_the_champion_rule_follows_it(store, tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", tmp_path / "w", tmp_path / "raw", mlflow={"tracking_uri": store})
    proc = cli("promote", "vqvae-demo", "1", "--config", str(config))  # --alias defaults to champion
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "vqvae-demo@champion: v2 (val_mse=0.25) -> v1 (val_mse=0.5)"
    assert aliases("vqvae-demo") == {"champion": "1"}
    assert aliases("prior-demo") == {"champion": "1"}

    # a new version is compared with the holder the alias was moved to (v1, 0.5), not with v2
    exp_id = tracking.setup_tracking(store, "demo")
    assert register(exp_id, tiny_vqvae(3), "vqvae-demo", "val_mse", 0.6, {}, VQVAE_LINEAGE) == "3"
    assert aliases("vqvae-demo") == {"champion": "1"}
    assert register(exp_id, tiny_vqvae(4), "vqvae-demo", "val_mse", 0.4, {}, VQVAE_LINEAGE) == "4"
    assert aliases("vqvae-demo") == {"champion": "4"}

    moved = registry.promote("vqvae-demo", "latest", alias="staging")
    assert (moved["old"], moved["new"]) == (None, "4")
    assert registry.format_promote(registry.promote("vqvae-demo", "4", "staging")) == \
        "vqvae-demo@staging: already v4 (val_mse=0.4)"
    assert aliases("vqvae-demo") == {"champion": "4", "staging": "4"}


def test_unknown_model_or_version_is_one_line_and_exit_2(store, cli):
    assert one_line_error(cli("promote", "vqvae-demo", "9", "--tracking-uri", store)) == \
        "error: model models:/vqvae-demo/9 does not exist"
    assert one_line_error(cli("show", "models:/nope@champion", "--tracking-uri", store)) == \
        "error: model models:/nope@champion does not exist"
    for call, message in [(lambda: registry.list_versions("nope"), "registered model 'nope' does not exist"),
                          (lambda: registry.show("models:/vqvae-demo@nope"), "models:/vqvae-demo@nope"),
                          (lambda: registry.show("vqvae-demo@champion"), "expected models:/<name>@<alias>"),
                          (lambda: registry.promote("nope", "1"), "models:/nope/1 does not exist"),
                          (lambda: registry.promote("vqvae-demo", "v2"), "version must be a number"),
                          (lambda: registry.promote("vqvae-demo", "1", "latest"), "alias 'latest' of vqvae-demo")]:
        with pytest.raises(UserError, match=re.escape(message)):
            call()
    assert aliases("vqvae-demo") == {"champion": "2"}


def test_no_store_is_one_line_and_exit_2(tmp_path):
    assert "MLFLOW_TRACKING_URI" not in os.environ
    line = one_line_error(models("list"))
    assert "--tracking-uri" in line and "--config" in line and "MLFLOW_TRACKING_URI" in line

    missing = tmp_path / "no" / "mlflow.db"
    with pytest.raises(UserError, match=f"no MLflow store at sqlite:///{missing}"):
        registry.open_store(f"sqlite:///{missing}")
    assert not missing.parent.exists()  # a lookup never creates a store
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused
        with pytest.raises(UserError, match="unreachable at http://127.0.0.1"):
            registry.open_store(f"http://127.0.0.1:{s.getsockname()[1]}")


def test_open_store_leaves_the_environment_alone(store):
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == store


def test_jobs_take_a_model_by_alias_or_by_version(store, tmp_path):
    """codes.model, stage2.vqvae and sample.prior go through tracking.resolve/load_*: both forms
    name the same model; sampling with either gives the same image."""
    def same(x: torch.nn.Module, y: torch.nn.Module) -> bool:
        return all(torch.equal(a, b) for a, b in zip(x.state_dict().values(), y.state_dict().values()))

    v2 = tracking.load_vqvae("models:/vqvae-demo/2")
    assert same(v2, tracking.load_vqvae("models:/vqvae-demo@champion")) and same(v2, tiny_vqvae(2))
    assert not same(v2, tracking.load_vqvae("models:/vqvae-demo/1"))

    images = []
    for vqvae, prior in [("models:/vqvae-demo/2", "models:/prior-demo/1"),
                         ("models:/vqvae-demo@champion", "models:/prior-demo@champion")]:
        settings = load_settings(write_config(
            tmp_path / "c.yaml", tmp_path / "w", tmp_path / "raw", data={"name": "demo"},
            mlflow={"tracking_uri": store, "experiment": "demo"}, codes={"model": vqvae}, stage2={"vqvae": vqvae},
            sample={"prior": prior, "per_class": 1}))
        assert tracking.resolve(settings.codes.model)["version"] == "2"
        assert tracking.resolve(settings.stage2.vqvae)["version"] == "2"
        images.append(Path(sample(settings, report=False)).read_bytes())
    assert images[0] == images[1]


def test_the_report_of_a_registered_prior_shows_its_registered_step(store, tmp_path):
    """jobs/sample.py's report, rebuilt from the registry: the prior's numbers at the step it was
    registered on (its best validation, step 20), not its last (30); its VQ-VAE's from v2."""
    from pipeline.stages.report import results_from_registry

    settings = load_settings(write_config(tmp_path / "c.yaml", tmp_path / "w", tmp_path / "raw", data={"name": "demo"},
                                          mlflow={"tracking_uri": store, "experiment": "demo"}))
    results = results_from_registry(settings, "models:/prior-demo@champion")
    assert results["stage2"]["version"] == "1"
    # (its key metrics come from the tags of versions registered before 2026-11-26, derived)
    assert results["stage2"]["metrics"] == {"val_nll_bits_per_code": 2.5, "val_bits_per_dim": 0.4,
                                            "uniform_bits_per_code": 3.0, "step": 20}
    assert results["stage1"]["version"] == "2" and results["stage1"]["metrics"]["val_mse"] == 0.25
    assert results["codes"] == {} and results["shard"] == {}  # neither on this machine: left out of the page


def test_readme_registry_commands_run(store, tmp_path, cli):
    """The Registry block of docs/operations.md as written, its configs/demo.yaml pointed at the test
    store (so a demo's real registry is never touched)."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "operations.md").read_text(), flags=re.S)
              if "jobs/models.py" in b]
    assert blocks, "docs/operations.md lost its Registry block"
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo["mlflow"]["tracking_uri"] = store
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo))
    # what each command must print: every model / the prior's version / the alias moving back to v1
    expected = {"list": ["vqvae-demo  1", "vqvae-demo  2", "prior-demo  1"], "show": ["prior-demo v1  [champion]"],
                "promote": ["vqvae-demo@champion: v2 (val_mse=0.25) -> v1 (val_mse=0.5)"]}
    commands = blocks[0].strip().splitlines()
    assert [c.split()[2] for c in commands] == list(expected)
    for command in commands:
        args = command.split("#")[0].replace("configs/demo.yaml", str(config)).split()
        assert args[:2] == [".venv/bin/python", "jobs/models.py"], command
        proc = cli(*args[2:])
        assert proc.returncode == 0, (command, proc.stderr)
        for text in expected[args[2]]:
            assert text in proc.stdout, (command, text, proc.stdout)
