"""The GPU path: the same models on cuda, under the bf16 autocast stage 1 trains with.

    pytest -m gpu          # on a machine with a CUDA GPU; make test deselects these

Selected on a machine without a GPU they fail (they are never skipped quietly): a run that says
it tested the GPU path must have had one.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.pixelcnn import GatedPixelCNN
from pipeline.models.quantizer import VectorQuantizer
from pipeline.models.speech import SpeechVQVAE
from pipeline.models.vqvae import VQVAE
from test_loader import shards  # noqa: F401 - the fixture: small real image shards

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "pytest -m gpu needs a CUDA GPU; make test runs the rest"


def _photo_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """Random crops of real photos bundled with scikit-image, scaled to [-0.5, 0.5]."""
    from skimage import data

    photos = [torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5
              for img in (data.astronaut(), data.coffee(), data.chelsea())]
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(n):
        p = photos[i % len(photos)]
        top = int(torch.randint(p.shape[1] - size, (1,), generator=g))
        left = int(torch.randint(p.shape[2] - size, (1,), generator=g))
        crops.append(p[:, top:top + size, left:left + size])
    return torch.stack(crops)


def _close_codes(n: int = 512, dim: int = 64, seed: int = 0):
    """Codes close together and inputs among them, as in a trained codebook: bf16 or TF32
    distances cannot tell them apart. Returns the fp64 squared distances too."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, dim, generator=g)
    codebook = centre + 0.02 * torch.randn(n, dim, generator=g)
    z_e = centre.view(1, dim, 1, 1) + 0.02 * torch.randn(8, dim, 16, 16, generator=g)
    distances = torch.cdist(z_e.movedim(1, -1).reshape(-1, dim).double(), codebook.double()).square()
    return codebook, z_e, distances


def _excess(indices: torch.Tensor, distances: torch.Tensor) -> float:
    """How much farther (fp64) the chosen codes are than the nearest ones, at worst. fp32
    rounding costs ~3e-5 here (near-ties); TF32 costs 2e-2 and bf16 5e-2."""
    chosen = distances.gather(1, indices.flatten().cpu()[:, None]).squeeze(1)
    return (chosen - distances.min(1).values).max().item()


@pytest.mark.parametrize("tf32", [False, True], ids=["tf32-off", "tf32-on"])
def test_quantizer_on_cuda_picks_the_nearest_codes_under_bf16_autocast(tf32):
    """bf16 autocast (and TF32, should a user turn it on) must not reach the distances."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        _check_nearest(tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _check_nearest(tf32: bool) -> None:
    codebook, z_e, distances = _close_codes()
    vq = VectorQuantizer(codebook_size=512, dim=64).to(CUDA)
    with torch.no_grad():
        vq.embedding.copy_(codebook)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = vq(z_e.to(CUDA))
    assert _excess(out.indices, distances) < 1e-4
    assert _excess(vq.nearest(z_e.to(CUDA)), distances) < 1e-4
    assert torch.backends.cuda.matmul.allow_tf32 == tf32  # the user's setting is left as it was


@pytest.mark.parametrize("ema", [False, True], ids=["gradient", "ema"])
def test_quantizer_losses_and_ema_update_on_cuda_match_the_cpu(ema):
    torch.manual_seed(0)
    cpu = VectorQuantizer(codebook_size=64, dim=16, ema=ema)
    gpu = VectorQuantizer(codebook_size=64, dim=16, ema=ema).to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    for step in range(5):
        z = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(step))
        out_cpu, out_gpu = cpu(z), gpu(z.to(CUDA))
        agree = (out_cpu.indices == out_gpu.indices.cpu()).double().mean().item()
        assert agree > 0.99, f"step {step}: cuda and cpu chose the same code for {agree:.2%} of vectors"
        torch.testing.assert_close(out_gpu.loss.cpu(), out_cpu.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gpu.codebook.detach().cpu(), cpu.codebook.detach(), rtol=1e-5, atol=1e-6)


def test_vqvae_learns_photos_on_cuda_under_bf16_and_encodes_like_the_cpu():
    """A short stage-1 run as the stage's loop takes it on a GPU (bf16 autocast, Adam), on crops
    of real photos; the trained model's codes on cuda are the CPU's codes."""
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, hidden=64, num_res_blocks=2, codebook_size=128, code_dim=32,
                  ema=True, dead_code_steps=50).to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    val = _photo_crops(64, 32, seed=1).to(CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        before = model(val).recon_loss.item()
    for step in range(300):
        x = _photo_crops(64, 32, seed=100 + step).to(CUDA, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        after = model(val).recon_loss.item()
    assert after == after and after < 0.25 * before, f"val MSE {before:.4f} -> {after:.4f}"
    codes_gpu = model.encode(val).cpu()
    codes_cpu = model.cpu().encode(val.cpu())
    agree = (codes_gpu == codes_cpu).double().mean().item()
    assert agree > 0.99, f"cuda and cpu codes agree at {agree:.2%} of positions"


def test_prior_logits_under_bf16_follow_fp32_and_seeded_samples_match_the_cpu():
    torch.manual_seed(0)
    prior = GatedPixelCNN(codebook_size=64, num_classes=4, hidden=32, num_layers=4, kernel_size=5).eval()
    codes = torch.randint(64, (8, 8, 8))
    cond = {"labels": torch.arange(8) % 4}
    reference = prior.double().logits(codes, cond)
    prior = prior.float().to(CUDA)
    with torch.no_grad():
        fp32 = prior.logits(codes.to(CUDA), {"labels": cond["labels"].to(CUDA)}).double().cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = prior.logits(codes.to(CUDA), {"labels": cond["labels"].to(CUDA)}).double().cpu()
    error = lambda x: ((x - reference).norm() / reference.norm()).item()  # noqa: E731
    assert error(fp32) < 3e-3 and error(bf16) < 3e-2, (error(fp32), error(bf16))
    drawn_gpu = prior.sample(cond, shape=(6, 6), generator=torch.Generator().manual_seed(3)).cpu()
    drawn_cpu = prior.cpu().sample(cond, shape=(6, 6), generator=torch.Generator().manual_seed(3))
    agree = (drawn_gpu == drawn_cpu).double().mean().item()
    assert agree > 0.95, f"a seeded CPU generator gave {agree:.0%} the same codes on cuda and cpu"


def test_speech_vqvae_trains_under_bf16_and_cached_generation_is_the_naive_one_on_cuda():
    torch.manual_seed(0)
    model = SpeechVQVAE(num_speakers=2, hidden=32, num_downsamples=4, codebook_size=32, code_dim=16,
                        wavenet_channels=16, wavenet_skip=16, wavenet_layers=6, wavenet_cycle=3,
                        speaker_dim=4, cond_channels=8).to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.arange(2048, device=CUDA) / 8000
    speaker = torch.tensor([0, 1] * 4, device=CUDA)
    losses = []
    for step in range(60):
        phase = torch.rand(8, 1, 1, device=CUDA) * 6.28
        freq = torch.where(speaker == 0, 220.0, 330.0).view(8, 1, 1)
        x = 0.5 * torch.sin(2 * torch.pi * freq * t + phase)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, {"speaker": speaker})
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.recon_loss.item())
    assert all(v == v for v in losses) and sum(losses[-10:]) < 0.8 * sum(losses[:10]), losses[::10]
    # Both generators compute the same fp32 function, one with matmuls and one with convs. cuDNN
    # runs fp32 convs in TF32 by default, and one draw flipped by that rounding changes every
    # sample after it (seen: 91 % agreement); with full fp32 they must agree draw for draw.
    net = model.decoder.eval()
    local = torch.randn(2, net.config["local_channels"], 8, device=CUDA)
    glob = torch.randn(2, net.config["global_channels"], device=CUDA)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        cached = net.generate(64, local, glob, generator=torch.Generator().manual_seed(5), hop=8)
        naive = net.generate_naive(64, local, glob, generator=torch.Generator().manual_seed(5), hop=8)
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert torch.equal(cached, naive), f"agree at {(cached == naive).double().mean():.2%} of samples on cuda"


def test_gpu_benchmark_runs_on_cuda(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu

    result = gpu.main(["--small", "--steps", "2", "--warmup", "1", "--repeats", "1", "--no-compile",
                       "--only", "stage1", "codes", "prior"])
    assert result["device"] == torch.cuda.get_device_name()
    assert all(row["images_per_s"] > 0 and row["peak_mem_gib"] > 0 for row in result["stage1"])


def test_compiled_channels_last_training_follows_eager_and_updates_the_codebook():
    """What stage 1 runs on a GPU with stage1.compile: channels-last, torch.compile, bf16. The
    EMA codebook's in-place updates must survive compilation."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        results = _train_three_ways(DistributedDataParallel)
    finally:
        dist.destroy_process_group()
    eager, compiled, compiled_ddp = results["eager"], results["compiled"], results["compiled ddp"]
    for losses in (compiled, compiled_ddp):
        assert losses[0] == pytest.approx(eager[0], rel=2e-2)
        assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses[::5]
        assert sum(losses[-5:]) == pytest.approx(sum(eager[-5:]), rel=0.25)


def _train_three_ways(ddp_class) -> dict:
    """40 steps eagerly, compiled, and compiled around DDP as the loop wraps it (Ray's
    prepare_model: DDP with broadcast_buffers=False for the quantizer)."""
    results = {}
    for way in ("eager", "compiled", "compiled ddp"):
        torch.manual_seed(0)
        model = VQVAE(in_channels=3, hidden=64, num_res_blocks=2, codebook_size=128, code_dim=32,
                      ema=True).to(CUDA).to(memory_format=torch.channels_last)
        start = model.vq.codebook.clone()
        step_model = model
        if way == "compiled ddp":
            step_model = ddp_class(model, device_ids=[CUDA.index or 0], broadcast_buffers=False)
        if way != "eager":
            step_model = torch.compile(step_model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for step in range(40):
            x = _photo_crops(32, 32, seed=step).to(CUDA).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = step_model(x)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            losses.append(out.recon_loss.item())
        assert int(model.vq.step) == 40 and not torch.equal(model.vq.codebook, start), way
        results[way] = losses
    return results


def test_loader_batches_arrive_pinned_and_copy_to_cuda(shards):
    from pipeline import modalities
    from pipeline.formats.reader import SkipCounter, TrainStream, loader

    batches = loader(TrainStream(shards, 8, 0, 0, modalities.get("image"), "the test shards"), 2, True,
                     SkipCounter())
    batch = next(batches)
    assert batch.x.is_pinned() and all(v.is_pinned() for v in batch.cond.values())
    on_gpu = batch.to(CUDA)
    torch.cuda.synchronize()
    # uint8 pixels cross pinned and become the same floats on the GPU as on the CPU
    assert batch.x.dtype == torch.uint8 and on_gpu.x.is_cuda and on_gpu.x.dtype == torch.float32
    assert torch.equal(on_gpu.x.cpu(), batch.to("cpu").x)


def _actor_codes(shards: list[str], folder: str, bf16: bool) -> tuple[np.ndarray, np.ndarray]:
    """The codes job's actor (on cuda when there is one) over `decode_shard`'s rows of the first
    shard, as Ray Data hands them over: (the actor's codes, the CPU's fp32 codes of the same
    model), both (B, h, w)."""
    from pipeline.stages.codes import EncoderActor, decode_shard
    from pipeline.tracking import save_model_files

    rows = decode_shard({"path": shards[0], "split": "train"}, "image", ["labels"])
    batch = {"key": np.array([r["key"] for r in rows]), "split": np.array([r["split"] for r in rows]),
             "x": np.stack([r["x"] for r in rows]), "cond/labels": np.array([r["cond/labels"] for r in rows])}
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, hidden=32, num_res_blocks=1, codebook_size=64, code_dim=16).eval()
    save_model_files(model, folder)
    table = EncoderActor(folder, f"sqlite:///{folder}/mlflow.db", "uint8", "image", ["labels"], bf16)(batch)
    assert table.column("key").to_pylist() == batch["key"].tolist()
    assert table.column("labels").to_pylist() == batch["cond/labels"].tolist()
    got = np.stack([np.asarray(c, np.int64).reshape(s) for c, s in
                    zip(table.column("codes").to_pylist(), table.column("shape").to_pylist())])
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(batch["x"]).float() / 255 - 0.5).numpy()
    return got, expected


@pytest.mark.parametrize("bf16,agree", [(False, 0.99), (True, 0.9)], ids=["fp32", "bf16"])
def test_codes_actor_on_cuda_encodes_decoded_shards_like_the_cpu(shards, tmp_path, bf16, agree):
    """A codes actor on a GPU (channels-last; bf16 autocast unless codes.bf16 is false) encodes
    decode_shard's uint8 rows of real photos into the CPU's fp32 codes at nearly every position."""
    got, expected = _actor_codes(shards, str(tmp_path), bf16)
    assert got.shape == expected.shape and (got == expected).mean() > agree, (got == expected).mean()
