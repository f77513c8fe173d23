"""The vector quantizer against the equations of van den Oord et al. 2017, computed here by hand."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.models.quantizer import VectorQuantizer


def flat_channels_last(z_e):
    return z_e.movedim(1, -1).reshape(-1, z_e.shape[1])


def brute_force_indices(z_e, codebook):
    return torch.cdist(flat_channels_last(z_e).double(), codebook.double()).argmin(1)


def set_codebook(vq, codebook):
    """Overwrite the codebook, keeping the EMA statistics consistent (e_i = m_i / N_i)."""
    with torch.no_grad():
        vq.codebook.copy_(codebook)
        if vq.ema:
            vq.ema_sum.copy_(codebook * vq.ema_count.unsqueeze(1))


@pytest.mark.parametrize(
    "shape", [(3, 8, 20), (3, 8, 6, 5), (2, 8, 3, 4, 5)], ids=["1d", "2d", "3d"]
)
def test_indices_are_brute_force_nearest_codes(shape):
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=64, dim=8)
    set_codebook(vq, torch.randn(64, 8))
    z_e = torch.randn(shape)
    out = vq(z_e)
    assert out.indices.shape == (shape[0], *shape[2:]) and out.indices.dtype == torch.int64
    assert torch.equal(out.indices.flatten(), brute_force_indices(z_e, vq.codebook))
    assert out.quantized.shape == z_e.shape
    assert torch.equal(flat_channels_last(out.quantized), vq.codebook[out.indices.flatten()])


@pytest.mark.parametrize("ema", [False, True])
def test_loss_is_codebook_plus_beta_commitment(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=16, dim=4, beta=0.4, ema=ema).eval()
    set_codebook(vq, torch.randn(16, 4))
    z_e = torch.randn(2, 4, 5, 5)
    out = vq(z_e)
    z = flat_channels_last(z_e)
    e = vq.codebook[brute_force_indices(z_e, vq.codebook)]
    codebook_loss = ((z - e) ** 2).mean()
    commitment_loss = ((z - e) ** 2).mean()  # same value, different stop-gradients
    torch.testing.assert_close(out.commitment_loss, commitment_loss)
    if ema:
        assert out.codebook_loss.item() == 0.0
        torch.testing.assert_close(out.loss, 0.4 * commitment_loss)
    else:
        torch.testing.assert_close(out.codebook_loss, codebook_loss)
        torch.testing.assert_close(out.loss, codebook_loss + 0.4 * commitment_loss)


def test_straight_through_gradient_and_codebook_gradient_from_codebook_loss_only():
    torch.manual_seed(0)
    beta, codebook_size, dim = 0.25, 16, 4
    vq = VectorQuantizer(codebook_size=codebook_size, dim=dim, beta=beta)
    set_codebook(vq, torch.randn(codebook_size, dim))
    z_e = torch.randn(2, dim, 3, 3, requires_grad=True)
    w = torch.randn(2, dim, 3, 3)

    out = vq(z_e)
    (w * out.quantized).sum().backward(retain_graph=True)
    assert torch.equal(z_e.grad, w)  # dL/dz_q copied to z_e unchanged
    assert vq.codebook.grad is None or not vq.codebook.grad.any()

    z_e.grad, vq.codebook.grad = None, None
    out.loss.backward()
    z = flat_channels_last(z_e.detach())
    indices = brute_force_indices(z_e, vq.codebook)
    e = vq.codebook.detach()[indices]
    numel = z.numel()
    expected_codebook_grad = torch.zeros(codebook_size, dim)
    for j, i in enumerate(indices):  # d/de_i of mean ||sg[z] - e||^2
        expected_codebook_grad[i] += 2 * (e[j] - z[j]) / numel
    torch.testing.assert_close(vq.codebook.grad, expected_codebook_grad)
    expected_z_grad = beta * 2 * (z - e) / numel  # only the commitment term reaches z_e
    torch.testing.assert_close(flat_channels_last(z_e.grad), expected_z_grad)


def test_ema_update_follows_appendix_equations_with_laplace_smoothing():
    torch.manual_seed(0)
    codebook_size, dim, g, eps = 8, 4, 0.9, 0.5  # a large eps makes the smoothing visible
    vq = VectorQuantizer(codebook_size=codebook_size, dim=dim, ema=True, decay=g, eps=eps)
    set_codebook(vq, torch.randn(codebook_size, dim))
    count0, sum0 = vq.ema_count.clone(), vq.ema_sum.clone()
    z_e = torch.randn(4, dim, 3, 3)
    indices = brute_force_indices(z_e, vq.codebook)
    vq(z_e)

    z = flat_channels_last(z_e)
    n = torch.stack([(indices == i).sum() for i in range(codebook_size)]).float()
    z_sum = torch.stack([z[indices == i].sum(0) for i in range(codebook_size)])
    count = g * count0 + (1 - g) * n  # N_i <- g N_i + (1-g) n_i
    m = g * sum0 + (1 - g) * z_sum  # m_i <- g m_i + (1-g) sum_j z_ij
    total = count.sum()
    smoothed = (count + eps) / (total + codebook_size * eps) * total
    expected = m / smoothed.unsqueeze(1)  # e_i = m_i / N_i
    torch.testing.assert_close(vq.ema_count, count)
    torch.testing.assert_close(vq.ema_sum, m)
    torch.testing.assert_close(vq.codebook, expected)
    assert not torch.allclose(vq.codebook, m / count.unsqueeze(1), atol=1e-3)  # smoothing applied


def test_ema_codebook_frozen_in_eval_mode():
    vq = VectorQuantizer(codebook_size=8, dim=4, ema=True).eval()
    before = vq.codebook.clone()
    vq(torch.randn(2, 4, 3, 3))
    assert torch.equal(vq.codebook, before) and vq.step.item() == 0


def test_autocast_bf16_keeps_fp32_nearest_neighbours():
    torch.manual_seed(0)
    codebook_size, dim = 512, 64
    vq = VectorQuantizer(codebook_size=codebook_size, dim=dim)
    # Codes close together: bf16 distances cannot tell many of them apart.
    set_codebook(vq, torch.randn(1, dim) + 0.02 * torch.randn(codebook_size, dim))
    z_e = torch.randn(1, dim, 1, 1) + 0.02 * torch.randn(4, dim, 8, 8)
    expected = brute_force_indices(z_e, vq.codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_distances = -2 * flat_channels_last(z_e) @ vq.codebook.t()
        out = vq(z_e)
    assert not torch.equal(bf16_distances.argmin(1), expected)  # the trap is real
    assert torch.equal(out.indices.flatten(), expected)
    assert out.quantized.dtype == torch.float32


def test_perplexity_and_usage_of_a_known_histogram():
    vq = VectorQuantizer(codebook_size=8, dim=2).eval()
    set_codebook(vq, torch.arange(16.0).view(8, 2))
    uniform = vq.codebook.detach()[:4].t().reshape(1, 2, 4)  # codes 0..3 once each
    out = vq(uniform)
    torch.testing.assert_close(out.perplexity, torch.tensor(4.0))
    assert out.usage.item() == 0.5
    single = vq.codebook.detach()[5].view(1, 2, 1).expand(3, 2, 7)
    out = vq(single)
    torch.testing.assert_close(out.perplexity, torch.tensor(1.0))
    assert out.usage.item() == 1 / 8


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_restart_at_encoder_outputs(ema):
    torch.manual_seed(0)
    codebook_size, dim, steps = 8, 4, 3
    vq = VectorQuantizer(codebook_size=codebook_size, dim=dim, ema=ema, dead_code_steps=steps)
    far = 100.0 + torch.randn(codebook_size - 2, dim)
    set_codebook(vq, torch.cat([torch.randn(2, dim), far]))
    batches = [torch.randn(4, dim, 4, 4) for _ in range(steps + 5)]

    for z_e in batches[: steps - 1]:
        vq(z_e)
    assert torch.equal(vq.codebook[2:], far) if not ema else vq.codebook[2:].min() > 50
    assert vq.window_usage() == 2 / codebook_size

    vq(batches[steps - 1])  # the far codes have now been unused for `steps` steps
    z = flat_channels_last(batches[steps - 1])
    for code in vq.codebook[2:]:
        assert (z == code).all(1).any(), "a restarted code is not an encoder output of the batch"
    if ema:
        assert torch.equal(vq.ema_count[2:], torch.ones(codebook_size - 2))
        assert torch.equal(vq.ema_sum[2:], vq.codebook[2:])  # e_i = m_i / N_i still holds

    for z_e in batches[steps:]:
        vq(z_e)
    assert vq.window_usage() > 0.5


def test_usage_window_survives_state_dict_and_loading_is_strict():
    vq = VectorQuantizer(codebook_size=8, dim=4, ema=True, usage_window=2)
    for _ in range(3):
        vq(torch.randn(2, 4, 3, 3))
    clone = VectorQuantizer(codebook_size=8, dim=4, ema=True, usage_window=2)
    clone.load_state_dict(vq.state_dict())
    assert clone.window_usage() == vq.window_usage() > 0
    with pytest.raises(RuntimeError, match="Unexpected key"):
        clone.load_state_dict({**vq.state_dict(), "something_else": torch.zeros(1)}, strict=True)


# ---- masks: padded positions take no part ----------------------------------------------------

@pytest.mark.parametrize("ema", [False, True])
def test_masked_positions_change_no_loss_statistic_or_restart(ema):
    """A batch with padding gives the losses, EMA statistics, usage and perplexity of its real
    positions alone, as if the padding were not there."""
    torch.manual_seed(0)
    kwargs = dict(codebook_size=8, dim=4, ema=ema, decay=0.5, dead_code_steps=1)
    masked, alone = VectorQuantizer(**kwargs), VectorQuantizer(**kwargs)
    codebook = torch.randn(8, 4)
    set_codebook(masked, codebook)
    set_codebook(alone, codebook)
    real = torch.randn(1, 4, 6)
    padding = 50.0 + torch.randn(1, 4, 4)  # far away: unmasked, it would claim a code of its own
    z_e = torch.cat([real, padding], dim=2)
    mask = torch.tensor([[True] * 6 + [False] * 4])

    torch.manual_seed(1)
    out_masked = masked(z_e, mask)
    torch.manual_seed(1)
    out_alone = alone(real)
    for name in ("loss", "commitment_loss", "codebook_loss", "perplexity", "usage"):
        torch.testing.assert_close(getattr(out_masked, name), getattr(out_alone, name), msg=name)
    assert torch.equal(out_masked.indices[:, :6], out_alone.indices)
    torch.testing.assert_close(masked.last_used, alone.last_used)
    # restarted codes come from real positions only (same draws as the unpadded batch)
    torch.testing.assert_close(masked.codebook, alone.codebook)
    if ema:
        torch.testing.assert_close(masked.ema_count, alone.ema_count)
        torch.testing.assert_close(masked.ema_sum, alone.ema_sum)


def test_an_all_true_mask_is_no_mask():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=4).eval()
    z_e = torch.randn(2, 4, 5)
    a, b = vq(z_e), vq(z_e, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.perplexity, b.perplexity)


# ---- DDP: two gloo processes, each with half of a fixed batch --------------------------------

DDP_STEPS = 4
DDP_SCENARIOS = {
    "ema": dict(codebook_size=16, dim=4, ema=True, decay=0.8),
    "ema_restart": dict(codebook_size=16, dim=4, ema=True, decay=0.8, dead_code_steps=2),
}


def ddp_batches():
    generator = torch.Generator().manual_seed(123)
    return [torch.randn(8, 4, 3, 3, generator=generator) for _ in range(DDP_STEPS)]


def ddp_quantizer(kwargs):
    torch.manual_seed(0)
    vq = VectorQuantizer(**kwargs)
    set_codebook(vq, torch.randn(kwargs["codebook_size"], kwargs["dim"]))
    return vq


def ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for name, kwargs in DDP_SCENARIOS.items():
        vq = ddp_quantizer(kwargs)
        torch.manual_seed(1000 + rank)  # ranks draw different restarts unless rank 0 decides
        for batch in ddp_batches():
            vq(batch.chunk(world_size)[rank])
        result = {"codebook": vq.codebook, "restarts": vq.last_restart}
        torch.save(result, f"{out_dir}/{name}_{rank}.pt")
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)
    return {
        name: [torch.load(out_dir / f"{name}_{rank}.pt") for rank in range(2)]
        for name in DDP_SCENARIOS
    }


def test_ddp_ema_codebook_identical_on_ranks_and_equal_to_single_process(ddp_results):
    rank0, rank1 = (r["codebook"] for r in ddp_results["ema"])
    assert torch.equal(rank0, rank1)
    single = ddp_quantizer(DDP_SCENARIOS["ema"])
    for batch in ddp_batches():
        single(batch)
    torch.testing.assert_close(rank0, single.codebook, atol=1e-6, rtol=0)


def test_ddp_dead_code_restarts_keep_ranks_identical(ddp_results):
    rank0, rank1 = ddp_results["ema_restart"]
    assert rank0["restarts"].any(), "no code was restarted: the scenario tests nothing"
    assert torch.equal(rank0["codebook"], rank1["codebook"])
