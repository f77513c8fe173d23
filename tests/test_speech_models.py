"""The speech models: WaveNet causality, cached generation, mu-law, 64x shapes, masks, learning."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.models.quantizer import VectorQuantizer
from pipeline.models.speech import CodePrior, SpeechVQVAE, deemphasize, emphasize, reflection_to_lpc
from pipeline.models.wavenet import WaveNet, mu_law_decode, mu_law_encode


def tiny_vqvae(**kw) -> SpeechVQVAE:
    args = dict(num_speakers=2, hidden=16, codebook_size=16, code_dim=8, speaker_dim=8, wavenet_channels=16,
                wavenet_skip=16, wavenet_layers=6, wavenet_cycle=3, cond_channels=8)
    return SpeechVQVAE(**{**args, **kw})


@pytest.mark.parametrize("kernel_size,scalar_input", [(2, False), (3, False), (2, True)])
def test_wavenet_output_at_t_sees_only_inputs_before_t(kernel_size, scalar_input):
    torch.manual_seed(0)
    net = WaveNet(num_classes=16, channels=8, skip_channels=8, num_layers=6, cycle=3, kernel_size=kernel_size,
                  local_channels=4, global_channels=3, scalar_input=scalar_input)
    x = torch.randint(0, 16, (2, 64))
    e = net.embed(x).detach().requires_grad_(True)
    logits = net.forward_embedded(e, torch.randn(2, 4, 64), torch.randn(2, 3))
    t = 40
    logits[:, :, t].sum().backward()
    grad = e.grad.abs().sum(dim=(0, 1))
    assert (grad[t:] == 0).all(), "the output at t depends on the input at t or later"
    field = net.receptive_field  # how many inputs before t it reads
    assert (grad[t - field:t] != 0).all() and (grad[:t - field] == 0).all()


def test_wavenet_forward_scores_what_generation_draws():
    """Teacher forcing and generation are one model: the logits generation draws from at step t
    are forward()'s logits at t for the generated sequence."""
    torch.manual_seed(1)
    net = WaveNet(num_classes=8, channels=8, skip_channels=8, num_layers=4, cycle=2, global_channels=2).double()
    glob = torch.randn(3, 2, dtype=torch.float64)
    low = net.generate(30, None, glob, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    # at a low temperature the draw is the argmax of the logits forward() gives
    agree = (net(low, None, glob).argmax(1) == low).double().mean()
    assert agree == 1.0


@pytest.mark.parametrize("dtype,scalar_input", [(torch.float64, False), (torch.float32, False),
                                                (torch.float32, True)])
def test_cached_generation_gives_the_naive_samples_for_the_same_draws(dtype, scalar_input):
    torch.manual_seed(2)
    net = WaveNet(num_classes=32, channels=12, skip_channels=16, num_layers=7, cycle=4, kernel_size=2,
                  local_channels=5, global_channels=3, scalar_input=scalar_input).to(dtype)
    hop, steps = 4, 48
    local, glob = torch.randn(3, 5, steps // hop, dtype=dtype), torch.randn(3, 3, dtype=dtype)
    cached = net.generate(steps, local, glob, generator=torch.Generator().manual_seed(7), hop=hop)
    naive = net.generate_naive(steps, local, glob, generator=torch.Generator().manual_seed(7), hop=hop)
    assert cached.shape == (3, steps)
    assert torch.equal(cached, naive)
    other = net.generate(steps, local, glob, generator=torch.Generator().manual_seed(8), hop=hop)
    assert not torch.equal(cached, other)  # the draws matter: the agreement above is not vacuous


def test_conditioning_at_the_codes_rate_is_the_repeated_conditioning():
    """forward(..., hop) adds each local column to its hop steps without repeating it: the same
    logits and gradients as the conditioning repeated to every step, for any length."""
    torch.manual_seed(5)
    net = WaveNet(num_classes=16, channels=8, skip_channels=8, num_layers=4, cycle=2, local_channels=3,
                  global_channels=2, scalar_input=True).double()
    glob = torch.randn(2, 2, dtype=torch.float64)
    for steps in (40, 37):  # a whole number of columns, and one that is not
        x = torch.randint(0, 16, (2, steps))
        local = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
        fast = net(x, local, glob, hop=4)
        grad_fast, = torch.autograd.grad(fast.square().sum(), local)
        slow = net(x, local.repeat_interleave(4, dim=-1)[..., :steps], glob)
        grad_slow, = torch.autograd.grad(slow.square().sum(), local)
        assert fast.shape == (2, 16, steps)
        assert torch.allclose(fast, slow, atol=1e-12) and torch.allclose(grad_fast, grad_slow, atol=1e-10)
        assert not torch.allclose(fast, net(x, local.roll(1, -1), glob, hop=4))  # the columns matter


def test_scalar_input_reads_neighbouring_levels_alike_and_the_start_token_apart():
    net = WaveNet(num_classes=256, channels=8, skip_channels=8, num_layers=2, cycle=2, scalar_input=True)
    table = net.input_table()
    assert table.shape == (257, 8)
    steps = (table[1:256] - table[:255]).norm(dim=1)
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)  # a line through the levels
    assert torch.allclose(table[128] + table[127], 2 * net.input_bias, atol=1e-5)  # -v and v around it
    assert torch.equal(table[256], net.start_vector)


def test_mu_law_round_trip():
    q = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(q)), q)
    x = torch.linspace(-1, 1, 20001)
    err = (mu_law_decode(mu_law_encode(x)) - x).abs()
    # the quantisation step grows with |x|: fine near 0, coarse near full scale
    assert err[x.abs() < 0.01].max() < 3e-4 and err.max() < 0.035
    assert mu_law_encode(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def test_deemphasis_undoes_preemphasis_and_lowers_white_noise_at_high_frequencies():
    torch.manual_seed(3)
    t = torch.arange(8000) / 8000
    x = 0.3 * torch.sin(2 * math.pi * 150 * t) * torch.sin(2 * math.pi * 3 * t) + 0.01 * torch.randn(8000)
    x = x.expand(2, 3, -1)
    assert torch.equal(emphasize(x, 0.0), x) and torch.equal(deemphasize(x, 0.0), x)
    e = emphasize(x, 0.85)
    assert (e[..., 1:] - (x[..., 1:] - 0.85 * x[..., :-1])).abs().max() < 1e-6 and torch.equal(e[..., 0], x[..., 0])
    assert (deemphasize(e, 0.85) - x).abs().max() < 1e-5
    # white noise added in the emphasized domain comes out low-passed: its power above a quarter
    # of the sample rate drops by about (1 + a^2 - 2a cos w) at frequency w: more than 2x here
    noise = deemphasize(0.01 * torch.randn(1, 64000), 0.85)[0]
    power = torch.fft.rfft(noise).abs() ** 2
    high, low = power[power.numel() // 2:].mean(), power[: power.numel() // 8].mean()
    assert high < low / 10


def test_a_preemphasis_model_scores_emphasized_samples_and_generates_plain_ones():
    torch.manual_seed(4)
    plain, emph = tiny_vqvae(), tiny_vqvae(preemphasis=0.85)
    emph.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 640) * 0.4 - 0.2
    speaker = {"speaker": torch.tensor([0, 1])}
    assert plain(x, speaker).recon_loss != emph(x, speaker).recon_loss  # another target
    assert SpeechVQVAE.from_config(emph.config).preemphasis == 0.85
    codes = plain.encode(x)
    a = plain.decode_indices(codes, speaker, generator=torch.Generator().manual_seed(0))
    b = emph.decode_indices(codes, speaker, generator=torch.Generator().manual_seed(0))
    assert (b - deemphasize(a, 0.85)).abs().max() < 1e-5  # the same draws, de-emphasized
    with pytest.raises(ValueError, match="preemphasis"):
        tiny_vqvae(preemphasis=1.0)


def test_reflection_coefficients_give_stable_predictors():
    k = torch.tensor([0.5, -0.3], dtype=torch.float64)
    assert torch.allclose(reflection_to_lpc(k), torch.tensor([0.5 * (1 + 0.3), -0.3], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    for order in (1, 4, 16):
        k = (torch.rand(50, order, generator=g, dtype=torch.float64) * 2 - 1) * 0.99
        a = reflection_to_lpc(k)
        for row in a:  # the poles of 1 / (1 - sum_i a_i z^-i) lie inside the unit circle
            poles = np.roots(np.concatenate([[1.0], -row.numpy()]))
            assert np.abs(poles).max() < 1.0
    # and a pole outside it is what |k| > 1 gives: the check above can fail
    assert np.abs(np.roots([1.0, *(-reflection_to_lpc(torch.tensor([0.5, 1.2], dtype=torch.float64))).numpy()])).max() > 1


def _lpc_model(seed: int = 7) -> SpeechVQVAE:
    torch.manual_seed(seed)
    model = tiny_vqvae(lpc_order=4)
    with torch.no_grad():  # a predictor that predicts something (it starts at zero)
        model.lpc_net[-1].weight.normal_(0, 0.3)
        model.lpc_net[-1].bias.normal_(0, 0.5)
    return model.eval()


def test_the_lpc_decoder_generates_what_teacher_forcing_scores():
    """With a linear predictor the WaveNet draws an excitation and reads back prediction +
    excitation. Teacher forcing on the generated waveform must give the classes generation drew,
    from the same logits: its logits and generation's uniforms draw them again."""
    model = _lpc_model()
    codes = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    speaker = torch.tensor([0, 1])
    wave = model.decode_indices(codes, {"speaker": speaker}, generator=torch.Generator().manual_seed(2))[:, 0]
    with torch.no_grad():
        logits, target, residual = model.teacher_forced(wave, model.vq.embed(codes), speaker)
    u = WaveNet._uniforms(wave.shape[1], 2, torch.Generator().manual_seed(2))  # generation's, (T, B)
    cdf = torch.softmax(logits.double(), dim=1).cumsum(1).transpose(1, 2)  # (B, T, classes)
    redrawn = torch.searchsorted(cdf / cdf[..., -1:], u.t().unsqueeze(-1)).squeeze(-1).clamp(max=255)
    # where the sum was clamped to [-1, 1] the excitation read back is not the one drawn
    inside = wave.abs() < 0.999
    agree = (redrawn == target)[inside].double().mean()
    assert inside.double().mean() > 0.5
    assert agree > 0.99, f"generation and teacher forcing disagree on {1 - agree:.1%} of the samples"
    # the excitation differs from the samples: the predictor is in the loop
    assert (target != mu_law_encode(wave)).double().mean() > 0.3 and residual is not None
    clone = SpeechVQVAE.from_config(model.config)  # what the registry rebuilds
    clone.load_state_dict(model.state_dict())
    again = clone.eval().decode_indices(codes, {"speaker": speaker}, generator=torch.Generator().manual_seed(2))[:, 0]
    assert clone.lpc_order == 4 and torch.equal(again, wave)
    # cached and naive generation agree with the prediction in the loop too
    local, glob = model.cond_net(model.vq.embed(codes)), model.speaker_embedding(speaker)
    made = []
    with torch.no_grad():
        for generate in (model.decoder.generate, model.decoder.generate_naive):
            feedback, _ = model.excitation_feedback(local, glob, 320)
            made.append(generate(320, local, glob, generator=torch.Generator().manual_seed(3), hop=64,
                                 feedback=feedback))
    assert torch.equal(made[0], made[1])


@pytest.mark.slow
def test_the_lpc_decoder_learns_its_predictor():
    """On two hums (a sinusoid is predicted exactly by order 2) the predictor's error falls to a
    small part of the signal, and generation stays bounded."""
    model, outputs = _trained_on_hums(lpc_order=4)
    residuals = [out.lpc_residual.item() for out in outputs]
    assert residuals[0] > 0.9  # no prediction at the start
    assert np.mean(residuals[-10:]) < 0.05, f"the predictor leaves {np.mean(residuals[-10:]):.2f} of the energy"
    model.eval()
    x, spk = _two_voices(2, 1024, torch.Generator().manual_seed(99))
    y = model.reconstruct(x, {"speaker": spk}, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0


@pytest.mark.parametrize("length", [64, 1001, 4095, 4097, 6399])
def test_64x_fewer_codes_than_samples_for_any_length(length):
    torch.manual_seed(0)
    model = tiny_vqvae()
    x = torch.rand(1, 1, length) * 0.2 - 0.1
    codes = model.encode(x)
    assert codes.shape == (1, length // 64) == (1, *model.latent_shape((length,)))
    out = model(x, {"speaker": torch.tensor([1])})
    assert out.vq.indices.shape == codes.shape and torch.isfinite(out.loss)
    assert model.decode_indices(codes[:, :1], {"speaker": torch.tensor([0])}).shape == (1, 1, 64)
    with pytest.raises(ValueError, match="shorter than one code"):
        model.latent_shape((63,))


def test_padding_changes_neither_the_loss_nor_the_quantizer():
    """Masked positions: the loss, the EMA statistics and the usage ignore what the padding holds."""
    torch.manual_seed(0)
    a = tiny_vqvae(ema=True)
    b = tiny_vqvae(ema=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 1024) * 0.4 - 0.2
    mask = torch.ones(2, 1024, dtype=torch.bool)
    mask[1, 512:] = False
    noisy = x.clone()
    # other padding content, past the encoder's receptive field (190 samples) of the last real code
    noisy[1, :, 768:] = torch.rand(256) * 2 - 1
    cond = {"speaker": torch.tensor([0, 1])}
    out_a, out_b = a(x, cond, mask), b(noisy, cond, mask)
    assert torch.allclose(out_a.recon_loss, out_b.recon_loss, atol=1e-6)
    assert out_a.samples.item() == 1024 + 512
    for name in ("ema_count", "ema_sum", "embedding", "last_used"):
        assert torch.equal(getattr(a.vq, name), getattr(b.vq, name)), name
    # and the padding really was different input: without the mask the loss changes
    assert not torch.allclose(a(x, cond).recon_loss, b(noisy, cond).recon_loss)


def test_quantizer_mask_keeps_padded_vectors_out_of_its_statistics():
    z = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    far = z.clone()
    far[0, :, 6:] = 100.0  # far from every code: it would pull one towards it if it counted
    stats = []
    for inputs in (z, far):
        torch.manual_seed(0)
        vq = VectorQuantizer(8, 4, ema=True)
        before = vq.ema_count.clone()
        out = vq(inputs, mask)
        assert not torch.equal(before, vq.ema_count)  # real positions did update it
        stats.append((vq.ema_count, vq.ema_sum, out.perplexity, out.usage))
    for a, b in zip(*stats):
        assert torch.equal(a, b)


def _two_voices(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Speaker 0 hums at ~150 Hz, speaker 1 at ~450 Hz (8 kHz), random phase and loudness."""
    speakers = torch.randint(0, 2, (batch,), generator=generator)
    t = torch.arange(length) / 8000
    freq = torch.where(speakers == 0, 150.0, 450.0) * (1 + 0.05 * torch.rand(batch, generator=generator))
    phase = torch.rand(batch, generator=generator) * 2 * math.pi
    amp = 0.3 + 0.3 * torch.rand(batch, generator=generator)
    x = amp[:, None] * torch.sin(2 * math.pi * freq[:, None] * t + phase[:, None])
    return x.unsqueeze(1), speakers


def _trained_on_hums(steps: int = 150, **kw) -> tuple[SpeechVQVAE, list]:
    """A tiny speech VQ-VAE trained on `_two_voices` (seeded), and each step's output."""
    torch.manual_seed(0)
    model = tiny_vqvae(num_downsamples=6, wavenet_layers=8, wavenet_cycle=8, ema=True, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    outputs = []
    for _ in range(steps):
        x, spk = _two_voices(8, 1024, g)
        out = model(x, {"speaker": spk})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        outputs.append(out)
    return model, outputs


@pytest.mark.slow
def test_a_short_training_run_learns_speech_and_uses_the_speaker():
    model, _ = _trained_on_hums()
    model.eval()
    x, spk = _two_voices(32, 2048, torch.Generator().manual_seed(99))
    with torch.no_grad():
        right = model(x, {"speaker": spk}).recon_loss.item()
        wrong = model(x, {"speaker": 1 - spk}).recon_loss.item()
    assert right < 5.0, f"val bits per sample {right:.2f}: not well below 8"
    print(f"bits per sample: right speaker {right:.3f}, wrong speaker {wrong:.3f}")
    assert wrong > right + 0.1, f"the speaker id does not change the decoder's distribution ({right:.2f} vs {wrong:.2f})"


def test_code_prior_is_causal_and_samples_per_speaker():
    torch.manual_seed(0)
    prior = CodePrior(16, num_speakers=3, hidden=8, num_layers=4, cycle=2, kernel_size=3)
    codes = torch.randint(0, 16, (2, 20))
    cond = {"speaker": torch.tensor([0, 2])}
    base = prior.logits(codes, cond)
    changed = codes.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 16
    assert torch.equal(prior.logits(changed, cond)[:, :, :11], base[:, :, :11])
    assert not torch.equal(prior.logits(codes, {"speaker": torch.tensor([1, 1])}), base)
    out = prior(codes, cond)
    assert abs(out.loss.item() - math.log2(16)) < 1.5  # an untrained prior is near uniform
    drawn = prior.sample(cond, shape=(12,), generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (2, 12) and drawn.max() < 16


def test_every_parameter_gets_a_gradient_so_ddp_can_train_on_many_workers():
    """DDP's backward stops on every rank at a parameter that no loss reads (a residual 1x1 after
    the last WaveNet layer did, failing speech at ray.num_workers > 1)."""
    torch.manual_seed(0)
    vqvae = tiny_vqvae()
    x, spk = _two_voices(2, 1024, torch.Generator().manual_seed(1))
    vqvae(x, {"speaker": spk}).loss.backward()
    prior = CodePrior(16, num_speakers=3, hidden=8, num_layers=4, cycle=2, kernel_size=3)
    prior(torch.randint(0, 16, (2, 20)), {"speaker": torch.tensor([0, 2])}).loss.backward()
    for model in (vqvae, prior):
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, unused


def test_weights_saved_with_the_last_layers_residual_load_and_give_the_same_output():
    torch.manual_seed(0)
    net = WaveNet(num_classes=16, channels=8, skip_channels=8, num_layers=4, cycle=2)
    state = net.state_dict()
    state["layers.3.res.weight"], state["layers.3.res.bias"] = torch.randn(8, 8, 1), torch.randn(8)  # as saved before
    again = WaveNet(num_classes=16, channels=8, skip_channels=8, num_layers=4, cycle=2)
    again.load_state_dict(state)  # strict: the unread residual is dropped, nothing is missing
    x = torch.randint(0, 16, (2, 30))
    assert torch.equal(again(x), net(x))
