"""The whole pipeline in order, each stage skipping itself when already done.

    python jobs/pipeline.py --config configs/demo.yaml
"""
from __future__ import annotations

import glob
import os
import time

from pipeline.config import Settings


DEMO_DONE = ".demo-complete"  # written last beside demo data uploaded to an object store


def _make_demo_data(settings: Settings) -> None:
    from pipeline import fs as fsx

    data = settings.data
    if not data.make_demo:
        return
    if not fsx.is_remote(data.root):
        info = settings.modality.make_demo(data)
        print(f"demo data {'written to' if info['created'] else 'already at'} {info['out']}")
        return
    # On an object store: made in a local folder, uploaded, then marked complete (an upload that
    # was cut short has no mark, and is made and uploaded again).
    done = fsx.join(data.root, DEMO_DONE)
    if fsx.path_exists(done):
        print(f"demo data already at {data.root}")
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vqvae-demo-") as tmp:
        local = data.model_copy(update={"root": os.path.join(tmp, "raw")})
        info = settings.modality.make_demo(local)
        fsx.upload(local.root, data.root)
    fsx.write_json_atomic(done, {k: v for k, v in info.items() if k not in ("out", "created")})
    print(f"demo data written to {data.root}")


def stages():
    """(name, function) in order; each skips itself when its output is already there."""
    from pipeline.stages.codes import codes
    from pipeline.stages.sample import sample
    from pipeline.stages.shard import shard
    from pipeline.stages.stage1 import stage1
    from pipeline.stages.stage2 import stage2

    return [("make-data", _make_demo_data), ("shard", shard), ("stage1", stage1), ("codes", codes),
            ("stage2", stage2), ("sample", lambda settings: sample(settings, report=False))]


def pipeline(settings: Settings) -> dict:
    """All stages as child MLflow runs of one parent run named `pipeline-<data.name>`."""
    from pipeline import tracking

    from mlflow import MlflowClient

    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    client = MlflowClient(settings.tracking_uri)
    # Created, not started: the stages start and resume their own runs, which an active run
    # in this process would turn into errors.
    parent = client.create_run(experiment_id, run_name=f"pipeline-{settings.data.name}",
                               tags={"stage": "pipeline"}).info.run_id
    results, start, status = {"pipeline_run_id": parent}, time.perf_counter(), "FAILED"
    try:
        with tracking.children_of(parent):
            for name, fn in stages():
                print(f"== {name}", flush=True)
                results[name] = fn(settings)
        from pipeline.stages.report import write_report

        results["report"] = write_report(settings, results)
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status=status)
    print(f"\npipeline {settings.data.name}: done in {time.perf_counter() - start:.0f} s")
    print_where(settings, results)
    return results


def print_where(settings: Settings, results: dict) -> None:
    """Where a person finds what the run made."""
    from mlflow import MlflowClient

    print(f"  shards:          {settings.shards_dir}")
    stage1 = results.get("stage1")
    if stage1:
        run = MlflowClient(settings.tracking_uri).get_run(stage1["run_id"])
        art = run.info.artifact_uri.removeprefix("file://")
        pictures = sorted(glob.glob(os.path.join(art, "reconstructions", "step_*")))
        if pictures:
            print(f"  reconstructions: {pictures[-1]}  (originals, then their reconstructions)")
        print(f"  VQ-VAE:          models:/{stage1['name']}/{stage1['version']}")
    stage2 = results.get("stage2")
    if stage2:
        print(f"  prior:           models:/{stage2['name']}/{stage2['version']}")
    if results.get("sample"):
        print(f"  samples:         {results['sample']}  (the main file; the rest beside it)")
    print(f"  report:          {results['report']}  (open it in a browser; also on the pipeline's MLflow run)")
    if settings.tracking_uri.startswith("sqlite:"):
        print(f"  see it all:      mlflow ui --backend-store-uri {settings.tracking_uri}")
    else:
        print(f"  see it all:      {settings.tracking_uri}")
