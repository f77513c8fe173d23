"""Ray Tune over the codebook size (and any other stage-1 key): one full stage-1 TorchTrainer run
per trial, ASHA early stopping on the modality's selection metric (images: `val_mse`), one MLflow
parent run with a child run per trial.

    python jobs/tune_codebook.py --config configs/demo.yaml [--set tune.overrides.stage1.steps=300]

The Train V2 + Tune pattern: a Tune function trainable builds and fits a `TorchTrainer` whose
`TuneReportCallback` forwards every `ray.train.report` to Tune, so ASHA sees the metric at each
validation step. Each trial's Train run is named by its Tune trial id, so a
restored search resumes its trials from their checkpoints. The trial drivers take no CPU (one
byte of memory: Ray 2.60 refuses an empty request): only the Train workers hold resources, and a
trial that ASHA stops frees them for the next.

At the end the best completed trial's model is registered as a version of `vqvae-<data.name>`
(taking `champion` by the usual rule), and a table of the trials is printed and logged with a
plot of the metric against K.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

from ray.tune import Callback

from pipeline.config import Settings
from pipeline.errors import UserError
from pipeline import fs as fsx
from pipeline.fs import write_json_atomic
from pipeline.locks import exclusive
from pipeline.stages.stage1 import evaluate_after_training
from pipeline.stages.train.driver import run_name



def _metrics(settings: Settings) -> tuple[str, tuple[str, ...]]:
    """(the metric ASHA and registration use, the ones the table shows beside it)."""
    modality = settings.modality
    return modality.selection(settings.stage1), modality.key_metrics


def search_name(settings: Settings) -> str:
    """Named by what the search explores from what base: the same config restores or skips."""
    from pipeline.stages.stage1 import shard_lineage

    shards = shard_lineage(settings)["shards_manifest_sha256"]
    return run_name("tune", settings, {"stage1": settings.stage1.model_dump(), "tune": settings.tune.model_dump(),
                                       "shards": shards})


def trial_settings(settings: Settings, params: dict[str, Any]) -> Settings:
    """One trial's settings: the config, then `tune.overrides`, then the trial's values."""
    return Settings.model_validate(settings.trial_tree(params), context={"trial": True})


def _grid(settings: Settings) -> list[dict]:
    """Every combination of the grid-searched values (samplers left at the base value)."""
    import itertools

    grid = {k: v for k, v in settings.tune.space.items() if isinstance(v, list)}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]


def param_space(settings: Settings) -> dict:
    """Tune's nested param space from `tune.space`: lists are grid searches, dicts samplers."""
    from ray import tune

    samplers = {"choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
                "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    space: dict = {}
    for key, spec in settings.tune.space.items():
        if isinstance(spec, list):
            space[key] = tune.grid_search(spec)
        else:
            kind, values = next(iter(spec.items()))
            space[key] = samplers[kind](values)
    return space


def _with_tracking_uri(settings: Settings) -> Settings:
    """Trials run in other processes, where the environment may differ: pin the store here."""
    tree = settings.model_dump()
    tree["mlflow"]["tracking_uri"] = settings.tracking_uri
    return Settings.model_validate(tree)


def run_trial(params: dict, *, base: Settings, search: str, parent_run_id: str, experiment_id: str) -> None:
    """One trial (runs in a Tune trial actor): a stage-1 TorchTrainer run logging into a child
    MLflow run. The model is not logged here: ASHA may stop a trial on its very last report,
    which would kill this function mid-way; the driver logs the best trial's model from its
    final checkpoint instead."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline import tracking
    from pipeline.stages.stage1 import shard_lineage, train_loop_per_worker
    from pipeline.stages.train.driver import fit, mlflow_run

    settings = trial_settings(base, params)
    trial_id = tune.get_context().get_trial_id()
    name = f"{search}-{trial_id}"  # a restored trial finds its checkpoints and its MLflow run
    tracking.setup_tracking(settings.tracking_uri, settings.experiment)
    tags = {"tune_search": search, "tune_trial": trial_id,
            **{f"tune.{k}": str(v) for k, v in params.items()}, **shard_lineage(settings)}
    with tracking.children_of(parent_run_id):
        run_id = mlflow_run(settings, name, experiment_id, tags, "tune-trial")
    fit(settings, name, run_id, train_loop_per_worker, {}, settings.stage1.max_failures,
        callbacks=[TuneReportCallback()])


def tune(settings: Settings) -> dict:
    """The search of `tune:` (resumed, or found finished), its best trial registered."""
    from pipeline import tracking
    from pipeline.stages.stage1 import check_input_size, shard_lineage

    scales = set()
    for params in _grid(settings):  # every trial's model fits the inputs, before any trial starts
        trial = trial_settings(settings, params)
        check_input_size(trial)
        scales.add(trial.modality.metric_scale(trial.data, trial.stage1))
    if len(scales) > 1:  # the search keeps the lowest selection metric: trials must score one signal
        raise UserError(f"tune.space: its trials' {settings.modality.selection(settings.stage1)} would score different "
                        f"signals ({'; '.join(sorted(map(str, scales)))}); search these settings in separate searches")
    lineage = shard_lineage(settings)  # no shards: one-line error before anything starts
    experiment_id = tracking.setup_tracking(settings.tracking_uri, settings.experiment)  # exit 2 if down
    search = search_name(settings)
    with exclusive(fsx.join(settings.runs_dir, search), f"tune {settings.data.name}"):
        return _search(settings, search, lineage, experiment_id)


def _search(settings: Settings, search: str, lineage: dict, experiment_id: str) -> dict:
    from pipeline.stages.train.driver import finished_result, mlflow_run

    done = finished_result(settings, search)  # overwrite=true forgets it
    if done is not None:
        print(f"tune {settings.data.name}: search {search} already finished (registered "
              f"{done['name']} v{done['version']}); nothing to do (--set overwrite=true redoes it)")
        print(done["table"])
        return done
    base = _with_tracking_uri(settings)
    template = trial_settings(settings, {})  # what every trial shares: steps (ASHA's max_t), cadence
    parent = mlflow_run(settings, search, experiment_id, {**lineage, "tune_search": search}, "tune")
    grid = _fit_search(settings, base, search, parent, experiment_id, template.stage1)
    trials = _collect(settings, grid, parent, template.stage1.steps)
    return _finish(settings, search, parent, trials, lineage)


class TrialProgress(Callback):
    """Trials done/total as the search goes (pipeline.progress: a bar on a terminal, a line every
    few seconds elsewhere), with the best validated value so far and its trial's searched values:
    what Ray Tune's status tables say, in one line (they come back with --verbose). Tune pickles
    its callbacks with a search's state; the bar is made again after a restore."""

    def __init__(self, label: str, total: int, metric: str, keys: list[str]):
        self.label, self.total, self.metric, self.keys = label, total, metric, keys
        self.best: tuple[float, str] | None = None
        self.finished: set[str] = set()
        self._bar = None

    def __getstate__(self):
        return {**self.__dict__, "_bar": None}

    def _show(self, trials) -> None:
        from pipeline import progress

        if self._bar is None:
            self._bar = progress.Progress(self.label, self.total, "trials", initial=len(self.finished))
        running = sum(t.status == "RUNNING" and t.trial_id not in self.finished for t in trials)
        best = f"{self.best[0]:.4g} ({self.best[1]})" if self.best else None
        self._bar.update(len(self.finished), running=running, **{f"best {self.metric}": best})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and (self.best is None or value < self.best[0]):
            values = ", ".join(f"{k.split('.', 1)[-1]}={trial.config.get(k)}" for k in self.keys)
            self.best = (float(value), values)
        self._show(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished.add(trial.trial_id)
        self._show(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_trial_complete(iteration, trials, trial, **info)

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fit_search(settings: Settings, base: Settings, search: str, parent: str, experiment_id: str, trial):
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.runtime import init_ray

    init_ray(settings)
    t = settings.tune
    # Checkpoint-only reports carry no val metric; ASHA skips them, but Tune's strict check would
    # fail the trial on the first one. The metric is still required on validation reports.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, search=search, parent_run_id=parent,
                             experiment_id=experiment_id),
        # The trial driver only waits on its TorchTrainer, whose workers hold the CPUs/GPUs. Ray
        # 2.60 refuses an all-zero request ({"cpu": 0} raises "empty head and zero worker
        # bundles"), and any CPU fraction would keep 2 one-CPU trials from sharing 2 CPUs:
        # the driver asks for one byte of memory instead.
        {"cpu": 0, "memory": 1})
    scheduler = ASHAScheduler(time_attr="step", metric=_metrics(settings)[0], mode="min", max_t=trial.steps,
                              grace_period=min(t.grace_period or trial.val_every, trial.steps),
                              reduction_factor=t.reduction_factor)
    verbose = bool(os.environ.get("PIPELINE_VERBOSE"))
    if not verbose:
        # Tune's own output (the experiment's table, "View detailed results", a TensorBoard hint,
        # status tables every 30 s) only with --verbose: the trial progress line says how far the
        # search is. Its new-style output prints the header even at verbose=0; the classic one
        # at 0 prints nothing.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    storage = fsx.ray_storage(settings.runs_dir)
    path = fsx.join(storage["storage_path"], search)
    on = {"storage_filesystem": storage["storage_filesystem"]} if "storage_filesystem" in storage else {}
    try:
        if tune.Tuner.can_restore(path, **on):
            print(f"tune {settings.data.name}: resuming search {search}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True, **on)
        else:  # a restored search brings back its TrialProgress with its state
            progress = TrialProgress(f"tune {settings.data.name}", len(_grid(settings)) * t.num_samples,
                                     _metrics(settings)[0], list(t.space))
            tuner = tune.Tuner(
                trainable, param_space=param_space(settings),
                tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=t.num_samples,
                                            max_concurrent_trials=t.max_concurrent_trials),
                run_config=tune.RunConfig(name=search, **storage, verbose=1 if verbose else 0,
                                          callbacks=[progress]))
        return tuner.fit()
    except BaseException:
        MlflowClient(settings.tracking_uri).set_terminated(parent, status="FAILED")
        raise


def _collect(settings: Settings, grid, parent: str, steps: int) -> list[dict]:
    """One row per trial: its values, best val metrics, steps run, why it stopped; each child
    MLflow run is closed with that reason."""
    from mlflow import MlflowClient

    metric, key_metrics = _metrics(settings)
    client = MlflowClient(settings.tracking_uri)
    children = {r.data.tags.get("tune_trial"): r for r in client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")}
    rows = []
    for result in grid:
        # Tune puts trial_id in every result; a trial that never reported has only its folder
        trial_id = (result.metrics or {}).get("trial_id") or os.path.basename(result.path.rstrip("/"))
        history = result.metrics_dataframe
        validated = history.dropna(subset=[metric]) if history is not None and metric in history else None
        best = validated.loc[validated[metric].idxmin()] if validated is not None and len(validated) else None
        step = int(history["step"].max()) if history is not None and "step" in history else 0
        child = children.get(trial_id)
        final_ckpt = _checkpoint_at(history, steps)
        if result.error is not None:
            status, why = "FAILED", f"error: {str(result.error).strip().splitlines()[-1][:200]}"
        elif step >= steps and final_ckpt is not None:
            status, why = "FINISHED", "completed"
        else:
            status, why = "KILLED", f"stopped early by ASHA at step {step}"
        row = {"trial": trial_id, **{k: result.config.get(k) for k in settings.tune.space},
               **{k: (float(best[k]) if best is not None and k in best and not _nan(best[k]) else None)
                  for k in (metric, *key_metrics)},
               "steps": step, "status": status, "stop_reason": why,
               "run_id": child.info.run_id if child is not None else None, "checkpoint": final_ckpt,
               f"final_{metric}": float(validated[metric].iloc[-1]) if validated is not None and len(validated)
               else None}
        if child is not None:
            client.set_tag(child.info.run_id, "stop_reason", why)
            client.set_tag(child.info.run_id, "steps_run", str(step))
            client.set_terminated(child.info.run_id, status=status)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _nan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _checkpoint_at(history, step: int) -> str | None:
    """The checkpoint path Tune received with the report of `step` (TuneReportCallback puts it
    in the metrics; Tune results carry no checkpoint object)."""
    if history is None or "checkpoint_path" not in history or "step" not in history:
        return None
    paths = history.loc[history["step"] == step, "checkpoint_path"].dropna()
    return str(paths.iloc[-1]) if len(paths) else None


def format_table(rows: list[dict], keys: list[str], metric: str, key_metrics: tuple[str, ...]) -> str:
    """The search as a fixed-width table: trial, searched values, best val metrics, steps, stop."""
    short = {k: k.split(".", 1)[1] for k in keys}
    columns = {k: k.removeprefix("val_").removeprefix("codebook_") for k in key_metrics}
    header = ["trial", *short.values(), f"best {metric}", *columns.values(), "steps", "stopped"]

    def fmt(v):
        return "-" if v is None else f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"

    lines = [[r["trial"], *(str(r[k]) for k in keys), fmt(r[metric]), *(fmt(r[k]) for k in columns),
              str(r["steps"]), r["stop_reason"] + (" *" if r.get("best") else "")] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _plot(rows: list[dict], path: str, metric: str) -> None:
    """Best `metric` against K, completed trials as dots, early-stopped ones as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for status, marker, label in (("FINISHED", "o", "completed"), ("KILLED", "x", "stopped early")):
        pts = [(r["stage1.codebook_size"], r[metric]) for r in rows
               if r["status"] == status and r[metric] is not None and r.get("stage1.codebook_size")]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=label)
    ax.set_xscale("log", base=2)
    ks = sorted({r["stage1.codebook_size"] for r in rows if r.get("stage1.codebook_size")})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set(xlabel="codebook size K", ylabel=f"best {metric}", title=f"stage-1 {metric} against K")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _log_trial_model(settings: Settings, search: str, row: dict, lineage: dict) -> None:
    """Log a completed trial's model (its final checkpoint) into the trial's MLflow run;
    `settings` are the trial's."""
    import mlflow
    from ray.train import Checkpoint

    from pipeline import tracking
    from pipeline.stages.stage1 import build_model
    from pipeline.stages.train.driver import load_state

    model = build_model(settings)
    on = fsx.ray_storage(settings.runs_dir).get("storage_filesystem")  # the path is on the runs' filesystem
    model.load_state_dict(load_state(Checkpoint(row["checkpoint"], filesystem=on))["model"])
    with mlflow.start_run(run_id=row["run_id"]):
        tracking.log_model(model, "model", metadata={"stage": "stage1", **lineage, "run_id": row["run_id"],
                                                     "tune_search": search, "tune_trial": row["trial"]})


def _decoder_bits(client, run_id: str) -> dict:
    """The version tag stage 2 reads: the trial's last val_recon_bits_per_dim."""
    history = client.get_metric_history(run_id, "val_recon_bits_per_dim")
    return {"decoder_bits_per_dim": repr(max(history, key=lambda m: m.step).value)} if history else {}


def _finish(settings: Settings, search: str, parent: str, rows: list[dict], lineage: dict) -> dict:
    from mlflow import MlflowClient

    from pipeline import tracking

    metric, key_metrics = _metrics(settings)
    final = f"final_{metric}"
    client = MlflowClient(settings.tracking_uri)
    done = [r for r in rows if r["status"] == "FINISHED" and r[final] is not None]
    if not done:
        client.set_terminated(parent, status="FAILED")
        raise UserError(f"tune search {search}: no trial completed ({len(rows)} trials; see MLflow run {parent})")
    best = min(done, key=lambda r: r[final])
    best["best"] = True
    keys = list(settings.tune.space)
    table = format_table(rows, keys, metric, key_metrics)
    best_settings = trial_settings(settings, {k: best[k] for k in settings.tune.space})
    _log_trial_model(best_settings, search, best, lineage)
    registered = settings.vqvae_name
    version, promoted = tracking.register_model(
        best["run_id"], "model", registered, metric=metric, value=best[final],
        tags={**{k: str(v) for k, v in lineage.items()}, "ray_run": f"{search}-{best['trial']}",
              "tune_search": search, "tune_trial": best["trial"], "key_metrics": ",".join(key_metrics),
              **_decoder_bits(client, best["run_id"]),
              **tracking.scale_tags(best_settings.modality.metric_scale(best_settings.data, best_settings.stage1))})
    with tempfile.TemporaryDirectory(prefix="tune-") as tmp:
        with open(os.path.join(tmp, "trials.txt"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(tmp, "trials.json"), "w") as f:
            json.dump(rows, f, indent=1)
        if "stage1.codebook_size" in keys:
            _plot(rows, os.path.join(tmp, f"{metric}_vs_K.png"), metric)
        client.log_artifacts(parent, tmp)
    client.log_metric(parent, f"best_{metric}", best[final])
    for k, v in {"best_trial": best["trial"], "best_run_id": best["run_id"], "registered_version": version,
                 **{f"best.{k}": str(best[k]) for k in keys}}.items():
        client.set_tag(parent, k, v)
    result = {"run_id": parent, "search": search, "name": registered, "version": version, "promoted": promoted,
              "best_trial": best["trial"], "trials": rows, "table": table}
    client.set_terminated(parent, status="FINISHED")
    write_json_atomic(fsx.join(settings.runs_dir, search, "result.json"), result)
    stopped = sum(r["status"] == "KILLED" for r in rows)
    print(f"\ntune {settings.data.name}: {len(rows)} trials, {stopped} stopped early by ASHA\n{table}\n"
          f"(* best completed trial) registered {registered} v{version}{' (champion)' if promoted else ''}; "
          f"MLflow run {parent}", flush=True)
    evaluate_after_training(settings, f"models:/{registered}/{version}", "tune")
    return result
