"""The whole pipeline on a tiny config: every stage a child run of one MLflow run, and the chain
of lineage prior -> codes -> VQ-VAE version -> shards holds."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import REPO, TINY_STAGE1, write_config
from pipeline import tracking
from pipeline.config import load_settings
from pipeline.run_all import run_pipeline

pytestmark = pytest.mark.slow

TINY_STAGE2 = {"steps": 60, "batch_size": 32, "hidden": 32, "num_layers": 4, "kernel_size": 3, "lr": 3e-3,
               "checkpoint_every": 30, "val_every": 30, "log_every": 10}


def test_pipeline_runs_every_stage_with_lineage_and_the_mlflow_ui_shows_it(tmp_path, ray_local):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "w", "{workdir}/raw",
                       data={"name": "t", "root": "{workdir}/raw", "make_demo": True, "image_size": 16,
                             "samples_per_shard": 200},
                       stage1=TINY_STAGE1, stage2=TINY_STAGE2, sample={"per_class": 2},
                       ray={"num_workers": 2})
    settings = load_settings(cfg)
    results = run_pipeline(settings)
    _check_lineage_and_report(settings, results)
    _check_the_mlflow_ui(cfg, settings, results, tmp_path)


def _check_lineage_and_report(settings, results):
    client = MlflowClient(settings.tracking_uri)

    # one parent run, each stage's run its child
    parent = results["pipeline_run_id"]
    children = client.search_runs([client.get_experiment_by_name("t").experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.data.tags["stage"] for r in children} == {"stage1", "codes", "stage2", "sample"}

    # prior -> VQ-VAE version
    prior = tracking.resolve("models:/prior-t@champion")
    assert prior["tags"]["vqvae_name"] == "vqvae-t" and prior["tags"]["vqvae_version"] == "1"
    # prior -> codes -> VQ-VAE version
    codes_dir = Path(prior["tags"]["codes"])
    codes_manifest = json.loads((codes_dir / "manifest.json").read_text())
    assert codes_manifest["vqvae_version"] == "1"
    vqvae = tracking.resolve("models:/vqvae-t/1")
    assert codes_manifest["vqvae_run_id"] == vqvae["run_id"] == results["stage1"]["run_id"]
    # VQ-VAE -> the exact shards it was trained on
    shards_manifest = json.loads((Path(settings.shards_dir) / "manifest.json").read_text())
    assert vqvae["tags"]["shards"] == settings.shards_dir == codes_manifest["shards"]
    assert vqvae["tags"]["shards_manifest_sha256"] == \
        hashlib.sha256(json.dumps(shards_manifest, sort_keys=True).encode()).hexdigest()

    # samples: a row per class of per_class 16x16 images (2 px padding)
    img = Image.open(results["sample"])
    assert img.size == (2 * 18 + 2, 10 * 18 + 2)

    # the report: one self-contained page, on disk and on the pipeline's run
    report = Path(results["report"])
    assert report == Path(settings.workdir) / "report-t.html"
    assert "report-t.html" in {a.path for a in client.list_artifacts(parent)}
    page = report.read_text()
    assert "shards <code>" in page and "models:/vqvae-t/1" in page and "models:/prior-t/1" in page
    assert page.index("models:/vqvae-t/1") < page.index("models:/prior-t/1")  # lineage in order
    cells = _table(page)
    psnr = next(row for row in cells if row[1] == "val_psnr")
    assert float(psnr[2]) == pytest.approx(results["stage1"]["metrics"]["val_psnr"], rel=1e-3)
    nll = next(row for row in cells if row[1] == "val_nll_bits_per_code")
    assert float(nll[3]) == pytest.approx(5.0)  # uniform over K=32 codes
    assert float(nll[2]) == pytest.approx(results["stage2"]["metrics"]["val_nll_bits_per_code"], rel=1e-3)
    assert "4.67" in next(row for row in cells if row[0].startswith("stage 1") and row[1] == "val_bits_per_dim")[4]
    images = _embedded(page)
    assert "src=\"http" not in page and "src=\"/" not in page  # nothing outside the page
    assert len(images) == 3  # the last reconstructions, the codebook usage, the samples
    assert all(Image.open(io.BytesIO(b)).size[0] > 0 for b in images)
    assert Path(results["sample"]).read_bytes() in images


def _table(page: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    return [re.findall(r"<td>(.*?)</td>", r) for r in rows if "<td>" in r]


def _embedded(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img alt="[^"]*" src="data:image/[a-z]+;base64,([^"]+)"', page)]


def _check_the_mlflow_ui(cfg, settings, results, tmp_path):
    """`make ui` (jobs/ui.py) serves the store on 127.0.0.1; headless Chromium, driven by
    Selenium, finds the stage-1 run's metrics and its reconstruction picture on their pages, and
    the report with every picture decoded."""
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert os.path.exists(tool), f"{tool} missing: sudo apt-get install chromium chromium-driver (make test does)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, str(REPO / "jobs" / "ui.py"), "--config", str(cfg), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    browser = None
    try:
        _wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200, 120,
                  lambda: ui.stdout.read() if ui.poll() is not None else "")
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        client = MlflowClient(settings.tracking_uri)
        experiment = client.get_experiment_by_name("t")
        assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"  # the training view
        experiment = experiment.experiment_id
        run_id = results["stage1"]["run_id"]
        psnr = results["stage1"]["metrics"]["val_psnr"]
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{run_id}")
        text = lambda: browser.find_element("tag name", "body").text  # noqa: E731
        _wait_for(lambda: "val_psnr" in text() and repr(psnr)[:6] in text(), 60, text)  # shown in full
        assert results["stage1"]["name"] in text()  # the registered model beside the run

        shown = sorted(a.path for a in client.list_artifacts(run_id, "reconstructions"))[-1]
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{run_id}/artifacts/{shown}")
        sizes = lambda: browser.execute_script(  # noqa: E731
            "return Array.from(document.images).filter(i => i.complete).map(i => [i.naturalWidth, i.naturalHeight])")
        expected = Image.open(io.BytesIO(Path(client.download_artifacts(run_id, shown, str(tmp_path))).read_bytes())).size
        _wait_for(lambda: list(expected) in sizes(), 60, sizes)

        browser.get(Path(results["report"]).as_uri())
        _wait_for(lambda: browser.execute_script("return document.readyState") == "complete", 30)
        decoded = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(decoded) == 3 and all(decoded), decoded
        assert "Metrics" in text() and "val_psnr" in text()
    finally:
        if browser is not None:
            browser.quit()
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def _wait_for(check, seconds: float, said=lambda: ""):
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {str(said())[-2000:]}")
        time.sleep(0.5)
