"""The scores' formulas and the image tensors' range, pinned: speech and video add their own
modalities beside these, and must not move them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.models.metrics import gaussian_bits_per_dim, perplexity, psnr
from pipeline.modalities.common import mse_metrics, to_pixels
from pipeline.modalities.image import to_tensor


def test_psnr_of_signals_in_0_1():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(1e-4) == pytest.approx(40.0)
    assert psnr(1.0) == 0.0


def test_gaussian_bits_per_dim_is_half_log2_2_pi_e_variance_plus_8_bits():
    # sigma = 1/256 (one grey level): 0.5 log2(2 pi e) bits above 8 - 8 = 2.05 bits
    assert gaussian_bits_per_dim((1 / 256) ** 2) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e))
    assert gaussian_bits_per_dim(0.01) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e * 0.01) + 8)


def test_perplexity_is_exp_entropy_of_the_histogram():
    assert perplexity([5, 5, 5, 5]) == pytest.approx(4.0)
    assert perplexity([7, 0, 0]) == pytest.approx(1.0)
    assert perplexity([1, 3]) == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))


def test_image_metrics_add_the_uniform_priors_bits_per_dim():
    sums = {"sq_err": 0.01 * 3072, "dims": 3072.0, "latent_bits": 64 * 7.0, "samples": 1}
    m = mse_metrics(sums)
    assert m["val_mse"] == pytest.approx(0.01) and m["val_psnr"] == pytest.approx(20.0)
    assert m["val_recon_bits_per_dim"] == pytest.approx(gaussian_bits_per_dim(0.01))
    assert m["val_bits_per_dim"] == pytest.approx(gaussian_bits_per_dim(0.01) + 64 * 7 / 3072)


def test_image_tensors_are_in_minus_half_to_half_and_round_trip():
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)  # 1x1 RGB
    x = to_tensor(pixels)
    assert x.shape == (3, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor([-0.5, 128 / 255 - 0.5, 0.5]))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_pixels(to_tensor(image)), image)
