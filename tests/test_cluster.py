"""Cluster definitions (cluster/): the `ray up` YAML passes Ray's own autoscaler schema, the KubeRay
manifests parse and agree with each other, and every path they name exists. No Ray instance, no
network: these are the checks that can run before a cluster is paid for."""
from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.config import load_settings

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
IMAGENET = "configs/imagenet.yaml"
# One RayJob per stage, and the script each runs.
STAGES = {"shard": "shard.py", "stage1": "stage1.py", "codes": "dump_codes.py", "stage2": "stage2.py",
          "sample": "sample.py", "tune": "tune_codebook.py"}
GPU_STAGES = {"stage1", "codes", "stage2", "sample", "tune"}
KINDS = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("apps/v1", "Deployment"), ("v1", "Service"),
         ("v1", "PersistentVolumeClaim"), ("v1", "ServiceAccount"), ("storage.k8s.io/v1", "StorageClass")}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def imagenet():
    return load_settings(REPO / IMAGENET)


@pytest.fixture(scope="module")
def raycluster() -> dict:
    (doc,) = load(KUBERAY / "raycluster.yaml")
    return doc


@pytest.fixture(scope="module")
def rayjobs() -> dict[str, dict]:
    jobs = {}
    for stage in STAGES:
        (doc,) = load(KUBERAY / f"rayjob-{stage}.yaml")
        jobs[stage] = doc
    return jobs


def cluster_groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) of the head and every worker group of a RayCluster spec."""
    return [("head", spec["headGroupSpec"]["template"]["spec"])] + \
        [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]


def gpus(container: dict, kind: str) -> int:
    return int(container.get("resources", {}).get(kind, {}).get("nvidia.com/gpu", 0))


# --------------------------------------------------------------------------------------------
# `ray up` on AWS


def test_aws_yaml_validates_against_rays_autoscaler_schema(aws, ray_schema):
    jsonschema.validate(aws, ray_schema)


def test_aws_yaml_passes_the_checks_ray_up_runs_before_calling_aws(aws):
    # `ray up` fills in the provider's defaults, then validates; only after that does it call AWS.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(aws)))


@pytest.mark.parametrize("break_it", [
    lambda c: c.update(head_node="m5.2xlarge"),                                   # unknown top-level key
    lambda c: c.update(max_workers="six"),                                        # wrong type
    lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="4"),  # count as string
    lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),           # required key
    lambda c: c["docker"].update(gpus="all"),                                     # unknown docker option
], ids=["unknown-key", "wrong-type", "string-gpu-count", "no-resources", "unknown-docker-key"])
def test_the_schema_check_rejects_a_broken_copy(aws, ray_schema, break_it):
    broken = copy.deepcopy(aws)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema)


def test_aws_head_is_cpu_only_and_gpu_workers_cover_the_ddp_workers(aws, imagenet):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]["resources"]
    assert head.get("CPU", 0) > 0 and head.get("GPU", 0) == 0
    gpu_types = [t for name, t in types.items() if name != aws["head_node_type"] and t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker type"
    most_gpus = sum(t["resources"]["GPU"] * t.get("max_workers", aws["max_workers"]) for t in gpu_types)
    assert most_gpus >= imagenet.ray.num_workers  # stage 1 and 2 need one GPU per DDP worker


def _installs(commands: list[str]) -> tuple[int, int, str]:
    """(index of the torch install, index of the project install, the torch command)."""
    torch_at = next(i for i, c in enumerate(commands) if re.search(r"pip install .*\btorch\b", c))
    project_at = next(i for i, c in enumerate(commands) if re.search(r"pip install -e \S*vqvae-pipeline", c))
    return torch_at, project_at, commands[torch_at]


def test_aws_setup_installs_torch_then_the_project_with_cuda_on_gpu_nodes(aws):
    mounts = aws["file_mounts"]
    assert "~/vqvae-pipeline" in mounts and (REPO / mounts["~/vqvae-pipeline"]).resolve() == REPO
    torch_at, project_at, _ = _installs(aws["head_setup_commands"])
    assert torch_at < project_at
    for name, node in aws["available_node_types"].items():
        if name == aws["head_node_type"]:
            continue
        commands = aws["setup_commands"] + node.get("worker_setup_commands", aws["worker_setup_commands"])
        torch_at, project_at, torch_cmd = _installs(commands)
        assert torch_at < project_at, name
        if node["resources"].get("GPU", 0):
            assert "whl/cpu" not in torch_cmd and re.search(r"whl/cu\d+", torch_cmd), f"{name}: not a CUDA torch"


def test_aws_ray_processes_get_the_mlflow_server_address(aws):
    # Exported in the same shell as `ray start`: every driver and worker inherits it.
    (head_start,) = [c for c in aws["head_start_ray_commands"] if "ray start" in c]
    (worker_start,) = [c for c in aws["worker_start_ray_commands"] if "ray start" in c]
    assert re.search(r"export MLFLOW_TRACKING_URI=http://.+:5000;", head_start)
    assert "export MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000;" in worker_start
    assert "localhost" not in head_start and "127.0.0.1" not in head_start  # workers must reach it
    (server,) = [c for c in aws["head_start_ray_commands"] if "mlflow server" in c]
    assert "--port 5000" in server and "--host 0.0.0.0" in server
    assert re.search(r"--artifacts-destination s3://", server)


def test_aws_nodes_share_no_disk_and_reach_the_imagenet_configs_bucket(aws, imagenet):
    """Object storage alone: no volume, no NFS mount; every container gets the bucket's region, and
    worker nodes an instance profile (the head gets Ray's, which covers S3)."""
    bucket = imagenet.workdir.removeprefix("s3://").split("/")[0]
    assert imagenet.workdir.startswith("s3://") and imagenet.data.root.startswith(f"s3://{bucket}/")
    assert not [o for o in aws["docker"]["run_options"] if o.startswith("-v ")]
    assert not [c for c in aws.get("initialization_commands", []) if "mount" in c]
    assert any(o.startswith("--env AWS_REGION=") for o in aws["docker"]["run_options"])
    workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
    assert workers and all(v["node_config"]["IamInstanceProfile"]["Arn"] for v in workers.values())
    (server,) = [c for c in aws["head_start_ray_commands"] if "mlflow server" in c]
    assert f"--artifacts-destination {imagenet.workdir}/" in server  # MLflow's artifacts in the same bucket


def test_cluster_definitions_pin_the_installed_ray(aws, raycluster, rayjobs):
    import ray

    for image in (aws["docker"]["image"], aws["docker"]["head_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image
    assert f"rayproject/ray:{ray.__version__}-" in (CLUSTER / "Dockerfile").read_text()
    for spec in [raycluster["spec"]] + [job["spec"]["rayClusterSpec"] for job in rayjobs.values()]:
        assert spec["rayVersion"] == ray.__version__


# --------------------------------------------------------------------------------------------
# KubeRay


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_kuberay_manifest_parses_with_a_known_kind(path):
    docs = load(path)
    assert docs
    for doc in docs:
        assert (doc.get("apiVersion"), doc.get("kind")) in KINDS, f"{path.name}: {doc.get('kind')}"
        assert doc["metadata"]["name"]


def test_there_is_a_raycluster_and_one_rayjob_per_stage(raycluster, rayjobs):
    assert raycluster["kind"] == "RayCluster"
    assert {stage: job["kind"] for stage, job in rayjobs.items()} == {stage: "RayJob" for stage in STAGES}
    assert len({job["metadata"]["name"] for job in rayjobs.values()}) == len(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_rayjob_entrypoint_names_a_script_and_config_that_exist(rayjobs, stage):
    argv = shlex.split(rayjobs[stage]["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1] == f"jobs/{STAGES[stage]}"
    assert (REPO / argv[1]).is_file(), f"{argv[1]} does not exist"
    config = argv[argv.index("--config") + 1]
    assert re.fullmatch(r"configs/[\w.-]+\.yaml", config) and (REPO / config).is_file()
    load_settings(REPO / config)


def test_rayjobs_run_in_the_images_copy_of_the_repo_and_clean_up(rayjobs):
    workdir = re.search(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    for stage, job in rayjobs.items():
        spec = job["spec"]
        assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == workdir, stage
        assert spec["shutdownAfterJobFinishes"] is True, stage


def test_gpu_workers_request_and_limit_gpus_and_heads_take_none(raycluster, rayjobs):
    specs = {"raycluster": raycluster["spec"], **{s: j["spec"]["rayClusterSpec"] for s, j in rayjobs.items()}}
    for name, spec in specs.items():
        groups = cluster_groups(spec)
        for group, pod in groups:
            for c in pod["containers"]:
                assert gpus(c, "requests") == gpus(c, "limits"), f"{name}/{group}"  # k8s: extended resources
                if group == "head":
                    assert gpus(c, "limits") == 0, name
        has_gpu = any(gpus(c, "limits") for _, pod in groups[1:] for c in pod["containers"])
        assert has_gpu == (name in GPU_STAGES or name == "raycluster"), name


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_training_rayjobs_have_one_gpu_per_ddp_worker(rayjobs, imagenet, stage):
    spec = rayjobs[stage]["spec"]["rayClusterSpec"]
    total = sum(g["replicas"] * gpus(c, "limits") for g in spec["workerGroupSpecs"]
                for c in g["template"]["spec"]["containers"])
    assert total == imagenet.ray.num_workers


def _pod_setup(pod: dict) -> dict:
    (c,) = pod["containers"]
    return {"image": c["image"], "env": c.get("env"), "envFrom": c.get("envFrom"),
            "volumeMounts": c.get("volumeMounts"), "volumes": pod.get("volumes"),
            "serviceAccountName": pod.get("serviceAccountName")}


def test_rayjobs_share_the_rayclusters_image_env_and_volumes(raycluster, rayjobs):
    (reference,) = {json.dumps(_pod_setup(pod), sort_keys=True) for _, pod in cluster_groups(raycluster["spec"])}
    for stage, job in rayjobs.items():
        for group, pod in cluster_groups(job["spec"]["rayClusterSpec"]):
            assert json.dumps(_pod_setup(pod), sort_keys=True) == reference, f"{stage}/{group}"


def test_pods_need_no_shared_volume_and_reach_the_bucket_and_the_mlflow_service(raycluster, rayjobs, imagenet):
    setup = _pod_setup(raycluster["spec"]["headGroupSpec"]["template"]["spec"])
    env = {e["name"]: e.get("value") for e in setup["env"]}
    assert not [v for v in setup["volumes"] or [] if "persistentVolumeClaim" in v]  # object storage alone
    assert "AWS_REGION" in env
    assert [e["secretRef"]["name"] for e in setup["envFrom"]] == ["vqvae-aws"]  # keys, when not IRSA
    base = {d["kind"]: d for d in load(KUBERAY / "base.yaml")}
    assert base["ServiceAccount"]["metadata"]["name"] == setup["serviceAccountName"]
    assert "eks.amazonaws.com/role-arn" in base["ServiceAccount"]["metadata"]["annotations"]
    efs = {d["kind"]: d for d in load(KUBERAY / "efs.yaml")}  # option B, a shared workdir
    assert efs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for stage, job in rayjobs.items():
        workdir = re.search(r"--set workdir=(\S+)", job["spec"]["entrypoint"])
        assert (workdir.group(1) if workdir else imagenet.workdir).startswith("s3://"), stage

    host = env["MLFLOW_TRACKING_URI"].removeprefix("http://")
    name, port = host.split(":")
    mlflow = {d["kind"]: d for d in load(KUBERAY / "mlflow.yaml")}
    assert mlflow["Service"]["metadata"]["name"] == name
    assert [p["port"] for p in mlflow["Service"]["spec"]["ports"]] == [int(port)]
    (server,) = mlflow["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in server["args"])
    assert args["port"] == port and args["artifacts-destination"].startswith("s3://")
    # MLflow 3 refuses requests whose Host header it does not allow: the pods' must be.
    assert any(fnmatch.fnmatch(host, allowed) for allowed in args["allowed-hosts"].split(","))


def test_dockerfile_copies_existing_paths_and_installs_torch_before_the_project():
    lines = [ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    copies = [shlex.split(ln)[1:] for ln in lines if ln.startswith("COPY ")]
    sources = [p for args in copies for p in [a for a in args if not a.startswith("--")][:-1]]
    assert {"pyproject.toml", "pipeline/", "jobs/", "configs/"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    runs = [ln for ln in lines if ln.startswith("RUN ")]
    torch_at = next(i for i, r in enumerate(runs) if "TORCH_SPEC" in r or re.search(r"\btorch\b", r))
    project_at = next(i for i, r in enumerate(runs) if "pip install" in r and "-e ." in r)
    assert torch_at < project_at


# --------------------------------------------------------------------------------------------
# The experiment


def test_imagenet_config_has_the_papers_settings(imagenet, tmp_path):
    from pipeline.stages.stage1 import build_model

    s1 = imagenet.stage1
    assert imagenet.data.name == "imagenet" and imagenet.data.root.startswith("s3://")
    assert imagenet.data.image_size == 128 and s1.codebook_size == 512 and s1.beta == 0.25
    assert imagenet.data.image_size // 2 ** s1.num_downsamples == 32
    here = imagenet.model_copy(update={"workdir": str(tmp_path)})  # no shards to read on the placeholder bucket
    assert build_model(here).latent_shape((128, 128)) == (32, 32)
    assert imagenet.ray.use_gpu is True
    # The paper's batch of 128, as the global batch of the DDP workers.
    assert s1.batch_size * imagenet.ray.num_workers == 128
    assert imagenet.workdir.startswith("s3://")  # every stage reads and writes the object store


def test_every_file_the_cluster_readme_names_exists():
    text = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"\b((?:jobs|configs|pipeline|cluster|tests)/[\w/.-]+\.(?:py|yaml|md))", text))
    named |= {f"cluster/{p}" for p in re.findall(r"(?<![\w/])(kuberay/[\w.-]+\.yaml)", text)}
    named |= {f"cluster/{p}" for p in re.findall(r"`((?:aws\.yaml|Dockerfile))`", text)}
    assert len(named) > 10
    missing = sorted(p for p in named if "<" not in p and not (REPO / p).exists())
    assert not missing, f"cluster/README.md names files that do not exist: {missing}"


def test_every_import_the_cluster_readme_shows_resolves():
    """The Python the cluster README has a user run imports what exists (modules move)."""
    import importlib

    text = (CLUSTER / "README.md").read_text()
    imports = re.findall(r"from (pipeline[\w.]*) import ([\w, ]+)", text)
    assert imports
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(loaded, name), f"cluster/README.md: from {module} import {name}"
