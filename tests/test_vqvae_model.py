"""The N-d VQ-VAE: shapes per modality, encode/decode round trips, config round trips, learning."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.vqvae import VQVAE

TINY = dict(hidden=16, num_res_blocks=1, codebook_size=32, code_dim=8)

# (spatial_dims, num_downsamples, input spatial shape, latent shape)
SHAPES = [
    (1, 6, (256,), (4,)),  # speech: 64x downsampling
    (2, 2, (32, 32), (8, 8)),  # images: 4x per side
    (3, 2, (4, 16, 16), (1, 4, 4)),  # video clips: depth 4 -> 2 -> 1
]


@pytest.mark.parametrize("spatial_dims,downsamples,shape,latent", SHAPES, ids=["1d", "2d", "3d"])
def test_shapes_for_1d_2d_3d(spatial_dims, downsamples, shape, latent):
    torch.manual_seed(0)
    model = VQVAE(in_channels=2, num_downsamples=downsamples, spatial_dims=spatial_dims, **TINY)
    x = torch.randn(3, 2, *shape)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.vq.indices.shape == (3, *latent)
    assert out.vq.quantized.shape == (3, TINY["code_dim"], *latent)
    assert model.latent_shape(shape) == latent
    assert model.input_dims_per_code == 2 * math.prod(shape) // math.prod(latent)


@pytest.mark.parametrize("spatial_dims,downsamples,shape,latent", SHAPES, ids=["1d", "2d", "3d"])
def test_decode_indices_of_encode_equals_forward_reconstruction(
    spatial_dims, downsamples, shape, latent
):
    torch.manual_seed(0)
    model = VQVAE(in_channels=2, num_downsamples=downsamples, spatial_dims=spatial_dims, **TINY)
    model.eval()
    x = torch.randn(3, 2, *shape)
    with torch.no_grad():
        out = model(x)
    indices = model.encode(x)
    assert indices.dtype == torch.int64 and torch.equal(indices, out.vq.indices)
    assert torch.equal(model.decode_indices(indices), out.recon)


def test_encode_never_updates_the_codebook():
    model = VQVAE(in_channels=1, spatial_dims=1, ema=True, **TINY).train()
    before = model.vq.codebook.clone()
    model.encode(torch.randn(2, 1, 64))
    assert torch.equal(model.vq.codebook, before) and model.vq.step.item() == 0


def test_config_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, ema=True, dead_code_steps=5, **TINY)
    model(torch.randn(4, 3, 16, 16))  # one training step moves the EMA buffers off their init
    model.eval()
    config = json.loads(json.dumps(model.config))
    rebuilt = VQVAE.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert rebuilt.config == model.config
    assert torch.equal(a.recon, b.recon) and torch.equal(a.vq.indices, b.vq.indices)


def test_latent_shape_rejects_inputs_too_small():
    with pytest.raises(ValueError, match="too small for 6 downsamplings"):
        VQVAE(spatial_dims=1, num_downsamples=6, **TINY).latent_shape((32,))


def test_the_model_owns_eq_3_mse_plus_codebook_plus_beta_commitment():
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, beta=0.3, **TINY)
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    z_e = model.encoder(x)
    e = model.vq.codebook[out.vq.indices].movedim(-1, 1)
    by_hand = F.mse_loss(out.recon, x) + (z_e - e).square().mean() * (1 + 0.3)
    torch.testing.assert_close(out.loss, by_hand)
    torch.testing.assert_close(out.recon_loss, F.mse_loss(out.recon, x))


def test_a_padded_sequence_scores_as_its_real_part():
    """Masked positions take no part in the reconstruction loss or the codebook statistics."""
    torch.manual_seed(0)
    model = VQVAE(in_channels=1, spatial_dims=1, num_downsamples=2, **TINY).eval()
    x = torch.randn(1, 1, 32)
    padded = torch.cat([x, 9.0 * torch.ones(1, 1, 16)], dim=2)
    mask = torch.tensor([[True] * 32 + [False] * 16])
    out = model(padded, mask=mask)
    alone = model(x)
    # convolutions see across the boundary, so compare the statistics, not the numbers near it
    assert out.vq.indices.shape == (1, 12)
    assert model.latent_mask(mask, (12,)).tolist() == [[True] * 8 + [False] * 4]
    assert out.vq.usage.item() == pytest.approx(torch.unique(out.vq.indices[:, :8]).numel() / 32)
    weight = mask.unsqueeze(1).float()
    torch.testing.assert_close(out.recon_loss, ((out.recon - padded).square() * weight).sum() / 32)
    assert alone.vq.indices.shape == (1, 8)


def structured_images(n=16, size=16, seed=0):
    """Smooth coloured gradients and sinusoidal stripes in [-1, 1]: images a VQ-VAE can learn
    (a wider range than the [-0.5, 0.5] of real images: the model does not care)."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for _ in range(n):
        scale = torch.tensor([3, 2 * math.pi, math.pi])
        freq, phase, angle = torch.rand(3, generator=generator) * scale
        colour = torch.rand(3, 1, 1, generator=generator) * 2 - 1
        direction = xx * torch.cos(angle) + yy * torch.sin(angle)
        stripes = torch.sin(2 * math.pi * (freq + 0.5) * direction + phase)
        images.append(colour * stripes + 0.3 * (direction - 0.5))
    return torch.stack(images).clamp(-1, 1)


def test_tiny_model_learns_to_reconstruct_structured_images():
    torch.manual_seed(0)
    x = structured_images()
    model = VQVAE(in_channels=3, hidden=32, num_res_blocks=1, codebook_size=32, code_dim=8,
                  ema=True, dead_code_steps=10)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        out = model(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.recon_loss.item())
    model.eval()
    with torch.no_grad():
        final = F.mse_loss(model(x).recon, x).item()
    assert final < 0.5 * losses[0], (losses[0], final)
    # and well below what a model that only kept each image's mean colour would reach
    per_image_mean = F.mse_loss(x.mean((2, 3), keepdim=True).expand_as(x), x).item()
    assert final < 0.5 * per_image_mean, (per_image_mean, final)


@pytest.mark.parametrize("temporal, latent, per_code", [(0, (8, 4, 4), 3 * 16), (1, (4, 4, 4), 3 * 32),
                                                        (2, (2, 4, 4), 3 * 64)])
def test_video_downsamples_time_only_as_often_as_asked(temporal, latent, per_code):
    model = VQVAE(in_channels=3, hidden=8, num_res_blocks=1, num_downsamples=2, codebook_size=16, code_dim=4,
                  spatial_dims=3, temporal_downsamples=temporal)
    x = torch.randn(2, 3, 8, 16, 16)
    assert model.latent_shape((8, 16, 16)) == latent
    assert model.encode(x).shape == (2, *latent)
    assert model(x).recon.shape == x.shape
    assert model.input_dims_per_code == per_code
    mask = torch.ones(2, 8, 16, 16, dtype=torch.bool)
    assert model.latent_mask(mask, latent).shape == (2, *latent)
    again = VQVAE.from_config(model.config)
    assert again.config["temporal_downsamples"] == temporal
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.encode(x), model.encode(x))


def test_per_frame_latents_see_their_own_frame_only():
    """temporal_downsamples=0 (the paper's video model): a frame's codes depend on that frame alone
    and decode to it alone; with 1, the time-keeping layers see neighbouring frames."""
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, hidden=8, num_res_blocks=1, num_downsamples=2, codebook_size=16, code_dim=4,
                  spatial_dims=3, temporal_downsamples=0)
    x = torch.randn(1, 3, 10, 16, 16, requires_grad=True)
    model.encoder(x)[:, :, 4].sum().backward()
    reach = x.grad.abs().sum(dim=(0, 1, 3, 4))
    assert reach[4] > 0 and (reach[:4] == 0).all() and (reach[5:] == 0).all()
    codes = model.encode(x.detach())
    one = model.decode_indices(codes)[:, :, 4]
    codes[:, 7] = (codes[:, 7] + 1) % 16  # another frame's codes change nothing in frame 4
    assert torch.equal(model.decode_indices(codes)[:, :, 4], one)

    mixed = VQVAE(in_channels=3, hidden=8, num_res_blocks=1, num_downsamples=2, codebook_size=16, code_dim=4,
                  spatial_dims=3, temporal_downsamples=1)
    x.grad = None
    mixed.encoder(x)[:, :, 2].sum().backward()
    assert (x.grad.abs().sum(dim=(0, 1, 3, 4))[3:6] > 0).all()  # step 2 = frames 4, 5, seen with neighbours


def test_temporal_downsamples_are_for_3d_only():
    with pytest.raises(ValueError, match="temporal_downsamples is for 3-D inputs"):
        VQVAE(spatial_dims=2, temporal_downsamples=0)
    with pytest.raises(ValueError, match="temporal_downsamples is for 3-D inputs"):
        VQVAE(spatial_dims=3, num_downsamples=2, temporal_downsamples=3)
    assert "temporal_downsamples" not in VQVAE(spatial_dims=2).config  # older image models load as they were
