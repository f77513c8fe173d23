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


@pytest.mark.e2e  # every stage at two sizes, each in a fresh local Ray instance: ~5 minutes on 2 cores
def test_scale_benchmark_runs_every_stage_and_measures_its_processes(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import scale

    result = scale.main(["--sizes", "300", "400", "--trees", str(tmp_path / "trees"), "--pool", "60",
                         "--json", str(tmp_path / "scale.json")])
    assert result["sizes"] == [300, 400]
    for run in result["runs"]:
        stages = run["stages"]
        assert {"shard", "stage1", "codes", "stage2 w1", "stage2 w2"} <= set(stages)
        for label in ("shard", "stage1", "codes", "stage2 w1", "stage2 w2"):
            for figure in ("wall_s", "cpu_ms_per_sample", "driver_peak_mb", "worker_peak_mb", "workers_seen",
                           "total_rss_peak_mb", "total_pss_peak_mb", "out_bytes"):
                assert figure in stages[label], (label, figure)
            assert stages[label]["cpu_ms_per_sample"] > 0 and stages[label]["driver_peak_mb"] > 50
        # every input became a sample of the shards (train + val), and a row of the codes
        assert sum(stages["shard"]["samples"].values()) == run["n"] == run["train"] + run["val"]
        assert sum(stages["codes"]["rows"].values()) == run["n"]
        assert stages["codes"]["raw_bytes"] == run["n"] * 32 * 32 * 2  # 32x32 codes of K=512 as int16
        # stage 2's workers seen as RayTrainWorker processes: one, then two
        assert len(stages["stage2 w1"]["train_worker_peaks_mb"]) == 1
        assert len(stages["stage2 w2"]["train_worker_peaks_mb"]) == 2
        assert min(stages["stage2 w2"]["train_worker_peaks_mb"]) > 100  # a worker holding torch
    exps = result["exponents"]
    assert exps["shard"]["out_bytes"] is not None and 0.5 < exps["shard"]["out_bytes"] < 1.5  # the tars grow with N
    assert set(result["stage2_memory"]) == {1, 2} and result["prediction"]["nodes"][1]["cpus"] == 16
    assert (tmp_path / "scale.json").is_file()


def test_scale_trees_of_speech_and_video_are_what_the_modalities_list(tmp_path):
    """bench/scale.py's speech tree (VCTK 0.92, hard links to an espeak-ng pool) and video tree
    (renamed hard links to ViZDoom clips with their actions), as the pipeline's own listings read them."""
    sys.path.insert(0, str(REPO / "bench"))
    import scale

    from pipeline.modalities.speech.settings import SpeechData
    from pipeline.modalities.speech.vctk import list_speech
    from pipeline.modalities.video.layout import list_clips
    from pipeline.modalities.video.settings import VideoData

    root, info = scale.make_speech_tree(tmp_path, 40, speakers=109, voices=2, per_voice=16, seed=0)
    assert info["speakers"] == scale.speech_speakers(40, 109) == 2 and info["hours_untrimmed"] > 0
    assert scale.make_speech_tree(tmp_path, 40, speakers=109, voices=2, per_voice=16, seed=0) == (root, info)  # cached
    speakers, splits, skipped, manifest = list_speech(SpeechData(name="t", root=str(root), val_fraction=0.1))
    assert manifest["layout"] == "vctk-0.92" and speakers == ["p225", "p226"] and not skipped
    assert sum(len(v) for v in splits.values()) == 40  # mic2 is listed and left out
    assert all(it.meta["text"] for v in splits.values() for it in v)
    assert {row["id"]: row["gender"] for row in manifest["speakers"]} == {"p225": "M", "p226": "M"}  # espeak-ng m3, flite rms
    val = [it.meta["speaker"] for it in splits["val"]]
    assert val.count("p225") == val.count("p226") == 2  # what the conversion evaluation needs
    first = root / "wav48_silence_trimmed" / "p225" / "p225_001_mic1.flac"
    assert first.stat().st_nlink > 1  # a hard link into the pool

    root, info = scale.make_video_tree(tmp_path, 12, pool_clips=4, seed=0)
    listing = list_clips(VideoData(name="t", root=str(root)))
    assert [len(listing.splits[s]) for s in ("train", "val")] == [info["train"], info["val"]] == [11, 1]
    assert not listing.skipped and all(it.skip is None and len(it.cond["actions"]) == 32
                                       for v in listing.splits.values() for it in v)


@pytest.mark.e2e  # every stage at one tiny size of each, a fresh local Ray instance: ~8 minutes on 2 cores
@pytest.mark.parametrize("modality, sizes", [("speech", [40]), ("video", [10])])
def test_scale_benchmark_runs_speech_and_video(tmp_path, modality, sizes):
    sys.path.insert(0, str(REPO / "bench"))
    import scale

    extra = ["--voices", "4", "--pool", "16"] if modality == "speech" else ["--pool", "8"]
    result = scale.main(["--modality", modality, "--sizes", *map(str, sizes), "--trees", str(tmp_path / "trees"),
                         *extra, "--json", str(tmp_path / "scale.json")])
    workers = [1, 2]
    labels = {"shard", "stage1", "codes", *(f"stage2 w{w}" for w in workers)}
    assert result["sizes"] == sizes and set(result["stage2_memory"]) == set(workers)
    for run in result["runs"]:
        stages = run["stages"]
        assert labels <= set(stages)
        for label in labels:
            assert stages[label]["cpu_ms_per_sample"] > 0 and stages[label]["driver_peak_mb"] > 50
        assert run["train"] + run["val"] == run["n"]
        if modality == "speech":  # a row of codes per utterance
            assert run["hours"] > 0 and sum(stages["codes"]["rows"].values()) == run["n"]
            assert stages["codes"]["raw_bytes"] > 0
        else:  # a clip of 32 frames is 7 windows of 8 every 4: the samples of the shards and the rows of the codes
            assert sum(stages["shard"]["samples"].values()) == 7 * run["n"] == sum(stages["codes"]["rows"].values())
    assert result["prediction"] is None  # one size: no growth to extrapolate from
