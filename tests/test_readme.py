"""The README's commands, run as written (with a temporary workdir and a tiny model), so the
README cannot rot; and what they make, looked at as a user would: lineage, the report, the MLflow UI.
Every command of the README and of docs/ is checked too: its script and make target exist, and
its flags and settings parse and validate as the job would take them."""
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

from conftest import REPO, ray_address
from pipeline import tracking
from pipeline.config import load_settings

TINY = ["--set", "stage1.steps=40", "--set", "stage1.hidden=32", "--set", "stage1.codebook_size=32",
        "--set", "stage1.code_dim=16", "--set", "stage1.num_res_blocks=1", "--set", "stage1.batch_size=32",
        "--set", "stage1.val_every=20", "--set", "stage1.checkpoint_every=20", "--set", "ray.num_cpus=4",
        "--set", "ray.num_workers=1",  # DDP is tested elsewhere (test_stage1.py); a worker less to start
        "--set", "stage2.steps=30", "--set", "stage2.hidden=32", "--set", "stage2.num_layers=3",
        "--set", "stage2.val_every=15", "--set", "stage2.checkpoint_every=15", "--set", "sample.per_class=2"]


def blocks(lang: str, doc: Path = REPO / "README.md") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), flags=re.S)


def stage_commands() -> list[str]:
    """The README's block of the stages run one at a time."""
    [block] = [b for b in blocks("bash") if "jobs/shard.py" in b]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_starts_with_the_two_commands():
    first = blocks("bash")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "torch==2.13.0" in makefile


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# what the docs run that is not the project's: servers and the shell
SERVICES = ("mlflow server", "ray start", "ray stop", "source ", "export ")


def commands(doc: Path) -> list[str]:
    """The shell commands of a doc's bash blocks, continuation lines joined, comments dropped."""
    found = []
    for block in blocks("bash", doc):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(line.replace("$PWD", str(REPO)))
    return found


def check_job(args: list[str], monkeypatch) -> None:
    """`jobs/<name>.py ARGS` parsed by the job's own parser, its settings loaded and validated:
    what the job does before any work."""
    import runpy

    from pipeline.cli import parse_settings

    script = REPO / args[0]
    assert script.is_file(), args[0]
    monkeypatch.syspath_prepend(str(script.parent))  # as Python runs a script: its folder first
    job = runpy.run_path(str(script), run_name="docs_check")
    if "parse" in job:  # jobs/models.py, jobs/make_demo_data.py: their own parser, no config
        job["parse"](args[1:])
        return
    parse_settings("docs check", args[1:], job.get("add_arguments"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_readme_and_docs_names_what_exists_and_parses(doc, monkeypatch):
    monkeypatch.chdir(REPO)  # where the docs' commands run
    makefile = (REPO / "Makefile").read_text()
    seen = 0
    for command in commands(doc):
        if command.startswith(SERVICES):
            continue
        if command.startswith("make "):
            assert re.search(rf"^{re.escape(command.split()[1])}:", makefile, flags=re.M), (doc.name, command)
        elif "python jobs/" in command:  # alone, or after `ray job submit ... --`
            args = command.split("python ", 1)[1].split()
            check_job(args, monkeypatch)
        elif "python bench/" in command:
            args = command.split("python ", 1)[1].split()
            source = (REPO / args[0]).read_text()
            assert all(f'"{a}"' in source for a in args[1:] if a.startswith("--")), (doc.name, command)
        elif "python -m pytest" in command:
            markers = re.findall(r'-m "([^"]+)"', command)
            assert all(m in (REPO / "pyproject.toml").read_text() for ms in markers
                       for m in re.findall(r"\b(?!not\b|and\b)\w+", ms)), (doc.name, command)
        else:
            raise AssertionError(f"{doc.name}: a command this test does not know how to check: {command}")
        seen += 1
    assert seen or doc.name == "architecture.md", f"{doc.name} has no command"


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_commands_run_every_stage_with_lineage_a_report_and_the_mlflow_ui_shows_it(tmp_path, ray_local):
    """The README's stage commands and its Python snippet, as written (a temporary workdir, a tiny
    model); then what they made: the lineage prior -> codes -> VQ-VAE version -> shards, the
    pipeline's report, and the MLflow UI (`make ui`) in a real browser."""
    work = tmp_path / "demo"
    # the commands join the session's Ray instance, as under `ray job submit`, rather than each
    # starting one of its own
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", **ray_address(ray_local)}
    commands = stage_commands()
    assert len(commands) == 7
    overrides = ["--set", f"workdir={work}", *TINY]
    for command in commands:
        args = command.replace("work/demo", str(work)).split()
        assert args[0] == ".venv/bin/python"
        args[0] = sys.executable
        if "--config" in args:
            args += overrides
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert (work / "shards" / "demo" / "manifest.json").exists()
    assert list((work / "samples").glob("samples-*.png"))
    assert proc.stdout.count("nothing to do") == 4  # shard, stage1, codes and stage2 were done

    snippet = "import torch\nx = torch.zeros(2, 3, 32, 32)\n" + blocks("python")[0] + \
        "\nassert codes.shape == (2, 8, 8), codes.shape\n"
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    settings = load_settings(REPO / "configs" / "demo.yaml", overrides[1::2])
    assert settings.tracking_uri == env["MLFLOW_TRACKING_URI"]  # the store `make ui` serves
    results = _results_of_the_last_pipeline_run(settings)
    _check_lineage_and_report(settings, results)
    _check_the_mlflow_ui(REPO / "configs" / "demo.yaml", overrides, settings, results, tmp_path)


def _results_of_the_last_pipeline_run(settings) -> dict:
    """What `jobs/pipeline.py` returned, read back from the store: its run, each stage's run and
    metrics, the samples and the report it wrote."""
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment).experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    finished = lambda stage: next(r for r in runs if r.data.tags.get("stage") == stage  # noqa: E731
                                  and r.info.status == "FINISHED")
    results = {"pipeline_run_id": finished("pipeline").info.run_id,
               "report": str(Path(settings.workdir) / f"report-{settings.data.name}.html"),
               "sample": str(Path(settings.workdir) / "samples" / "samples-1.png")}
    for stage, model in (("stage1", "vqvae"), ("stage2", "prior")):
        run = finished(stage)
        results[stage] = {"run_id": run.info.run_id, "metrics": run.data.metrics,
                          "name": f"{model}-{settings.data.name}"}
    return results


def _check_lineage_and_report(settings, results):
    client = MlflowClient(settings.tracking_uri)

    # the stages the pipeline job ran (sampling: the others were done) are its run's children
    parent = results["pipeline_run_id"]
    children = client.search_runs([client.get_experiment_by_name(settings.experiment).experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.data.tags["stage"] for r in children} == {"sample"}
    name = settings.data.name
    tracking.setup_tracking(settings.tracking_uri, settings.experiment)

    # prior -> VQ-VAE version
    prior = tracking.resolve(f"models:/prior-{name}@champion")
    assert prior["tags"]["vqvae_name"] == f"vqvae-{name}" and prior["tags"]["vqvae_version"] == "1"
    # prior -> codes -> VQ-VAE version
    codes_dir = Path(prior["tags"]["codes"])
    codes_manifest = json.loads((codes_dir / "manifest.json").read_text())
    assert codes_manifest["vqvae_version"] == "1"
    vqvae = tracking.resolve(f"models:/vqvae-{name}/1")
    assert codes_manifest["vqvae_run_id"] == vqvae["run_id"] == results["stage1"]["run_id"]
    # VQ-VAE -> the exact shards it was trained on
    shards_manifest = json.loads((Path(settings.shards_dir) / "manifest.json").read_text())
    assert vqvae["tags"]["shards"] == settings.shards_dir == codes_manifest["shards"]
    assert vqvae["tags"]["shards_manifest_sha256"] == \
        hashlib.sha256(json.dumps(shards_manifest, sort_keys=True).encode()).hexdigest()

    # samples: a row per class of per_class images (2 px padding)
    img = Image.open(results["sample"])
    side, per_class = settings.data.image_size + 2, settings.sample.per_class
    assert img.size == (per_class * side + 2, 10 * side + 2)

    # the report: one self-contained page, on disk and on the pipeline's run
    report = Path(results["report"])
    assert report.exists()
    assert report.name in {a.path for a in client.list_artifacts(parent)}
    page = report.read_text()
    assert "shards <code>" in page and f"models:/vqvae-{name}/1" in page and f"models:/prior-{name}/1" in page
    assert page.index(f"models:/vqvae-{name}/1") < page.index(f"models:/prior-{name}/1")  # lineage in order
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


def _check_the_mlflow_ui(cfg, overrides, settings, results, tmp_path):
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
    ui = subprocess.Popen([sys.executable, str(REPO / "jobs" / "ui.py"), "--config", str(cfg), *overrides, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    browser = None
    try:
        _wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200, 240,
                  lambda: ui.stdout.read() if ui.poll() is not None else "")
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        client = MlflowClient(settings.tracking_uri)
        experiment = client.get_experiment_by_name(settings.experiment)
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
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: its server's workers still stopping
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
    said = ui.stdout.read()
    assert "latest pipeline run: http://127.0.0.1:" in said, said
    # quiet: no uvicorn INFO lines, no warnings of MLflow's own imports (--verbose has them)
    assert "Uvicorn running" not in said and "Warning" not in said, said


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


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_the_readme_and_docs_name_exists(doc):
    text = doc.read_text()
    named = set(re.findall(r"(?<![\w/.])((?:pipeline|jobs|configs|bench|tests|docs|cluster)/[\w/.-]*[\w/])", text))
    named = {p.rstrip("/") for p in named if "<" not in p and not p.endswith((".tar", ".parquet"))}
    base = REPO if doc.name == "README.md" else doc.parent.parent
    missing = sorted(p for p in named if not (base / p).exists())
    assert not missing, f"{doc.name} names what does not exist: {missing}"
