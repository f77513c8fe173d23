"""bench/gpu.py at CPU sizes: what a GPU user runs must not rot on the machines without one."""
from __future__ import annotations

import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, str(REPO / "bench"))
    import gpu

    return gpu


@pytest.mark.slow  # the shards come from the session's Ray instance
def test_gpu_benchmark_runs_at_cpu_sizes_with_consistent_figures(gpu_bench, demo_shards):
    result = gpu_bench.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--repeats", "1",
                             "--shards", str(demo_shards), "--workers", "1"])
    small = gpu_bench.SMALL
    assert result["sizes"] == small
    for row in result["stage1"]:
        # one training step's FLOPs over its time is the achieved rate, the batch over it the images/s
        assert row["tflops"] * 1e12 * row["ms_per_step"] / 1000 == pytest.approx(row["flops_per_step"], rel=1e-6)
        assert row["images_per_s"] == pytest.approx(small["batch"] / (row["ms_per_step"] / 1000), rel=1e-6)
    # the FLOPs of the small model: more than its forward convolutions alone
    assert result["stage1"][0]["flops_per_step"] > 2 * 3 * 32 * 16 * 16 * 16 * small["batch"]
    [in_process, one_worker] = result["shards"]
    assert "loader_workers=0" in in_process["feed"] and "loader_workers=1" in one_worker["feed"]
    assert 0 <= one_worker["data_wait_pct"] <= 100 and one_worker["images_per_s"] > 0
    assert result["codes"][0]["images_per_s"] > 0 and result["prior"][0]["grids_per_s"] > 0
    # with --shards, what one process decodes for the codes job (its CPU bound, per CPU)
    assert "decode_shard" in result["codes"][-1]["variant"] and result["codes"][-1]["images_per_s"] > 0
