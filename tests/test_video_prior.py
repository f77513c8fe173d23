"""The video prior: causal over (time, row, column), actions drive only later steps, classes
condition, cached sampling matches naive sampling, it learns action-driven dynamics, and its config
round-trips."""

import json
import math

import pytest
import torch

from pipeline.models.video_prior import VideoPrior

K = 8


def tiny(**kw):
    args = dict(codebook_size=K, latent_shape=(3, 2, 3), d_model=32, num_layers=2, num_heads=2)
    args.update(kw)
    torch.manual_seed(0)
    return VideoPrior(**args).eval()


def conditioned(frames_per_step=1, **kw):
    return tiny(num_actions=3, frames_per_step=frames_per_step, num_frames=3 * frames_per_step, num_classes=2, **kw)


def cond_for(prior, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    cond = {}
    if prior.num_actions:
        cond["actions"] = torch.randint(0, prior.num_actions, (batch, prior.num_frames), generator=g)
    if prior.num_classes:
        cond["labels"] = torch.arange(batch) % prior.num_classes
    return cond


def flat_logits(prior, codes, cond):
    """(B, N, K): logits per raster position."""
    with torch.no_grad():
        return prior.logits(codes, cond).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("action_shift", [0, 3])
def test_causal_over_the_whole_window(action_shift):
    prior = conditioned(action_shift=action_shift)
    cond = cond_for(prior)
    codes = torch.randint(0, K, (2, *prior.latent_shape), generator=torch.Generator().manual_seed(2))
    base = flat_logits(prior, codes, cond)
    n = prior.num_positions
    assert base.shape == (2, n, K)
    for j in range(n):
        changed = codes.clone().view(2, -1)
        changed[:, j] = (changed[:, j] + 1) % K
        diff = (flat_logits(prior, changed.view_as(codes), cond) - base).abs().amax(dim=(0, 2))  # (N,)
        assert diff[: j + 1].max().item() <= 1e-6, f"position {j} leaks into positions <= {j}"
        if j < n - 1:
            assert diff[j + 1:].max().item() > 1e-4, f"position {j} reaches no later position"


@pytest.mark.parametrize("previous_frame,action_shift", [(True, 0), (False, 0), (True, 3)])
def test_gradients_reach_only_earlier_codes_over_the_whole_window(previous_frame, action_shift):
    """For every position i, the gradient of its logits reaches the embeddings of the codes
    strictly before i (through the previous code, the previous step's 3x3 conv and the action
    shift) and no other."""
    prior = conditioned(previous_frame=previous_frame, action_shift=action_shift)
    codes = torch.randint(0, K, (1, *prior.latent_shape), generator=torch.Generator().manual_seed(3))
    n = codes[0].numel()
    for i in range(n):
        seen = []  # every output of the code embedding, as leaves

        def hook(module, inputs, output):
            output.retain_grad()
            seen.append((inputs[0], output))

        handle = prior.code_embedding.register_forward_hook(hook)
        try:
            prior.logits(codes, cond_for(prior, batch=1)).flatten(2)[0, :, i].sum().backward()
        finally:
            handle.remove()
        assert len(seen) == (2 if previous_frame else 1)
        reach = torch.zeros(n)
        # Either call embeds codes from the first on in raster order: the previous codes (B, N - 1)
        # and the previous steps' codes (B, T - 1, H, W); embedded row k stands for code k.
        for _, output in seen:
            if output.grad is not None:
                rows = output.grad.abs().sum(-1).flatten()
                reach[: rows.numel()] += rows
        assert (reach[i:] == 0).all(), (i, reach)
        if i > 0:
            assert reach[i - 1] > 0, i  # the code just before always reaches it


@pytest.mark.parametrize("frames_per_step,action_shift", [(1, 0), (2, 0), (2, 3)])
def test_action_j_drives_the_step_holding_frame_j_plus_1(frames_per_step, action_shift):
    prior = conditioned(frames_per_step, action_shift=action_shift)
    if action_shift:  # the action shift alone must carry each action to the step it drives
        with torch.no_grad():
            prior.action_embedding.weight.zero_()
    cond = cond_for(prior)
    codes = torch.randint(0, K, (2, *prior.latent_shape), generator=torch.Generator().manual_seed(3))
    base = prior.logits(codes, cond).detach()
    steps = prior.latent_shape[0]
    for j in range(prior.num_frames):
        acts = cond["actions"].clone()
        acts[:, j] = (acts[:, j] + 1) % prior.num_actions
        diff = (prior.logits(codes, {**cond, "actions": acts}).detach() - base).abs()
        per_step = diff.amax(dim=(0, 1, 3, 4))  # (T,)
        driven = (j + 1) // frames_per_step  # the step holding frame j + 1
        if driven >= steps or (action_shift and driven == 0):  # the window's last action drives no
            assert per_step.max().item() == 0.0  # frame inside it; step 0 has no previous step to shift
            continue
        assert per_step[:driven].sum().item() <= 1e-6, f"action {j} changes a step before {driven}"
        assert per_step[driven].item() > 1e-4, f"action {j} does not change step {driven}"


def test_class_conditions_and_missing_conditioning_is_refused():
    prior = conditioned()
    cond = cond_for(prior)
    codes = torch.randint(0, K, (2, *prior.latent_shape))
    other = {**cond, "labels": 1 - cond["labels"]}
    assert (prior.logits(codes, cond) - prior.logits(codes, other)).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="actions"):
        prior(codes, {"labels": cond["labels"]})
    with pytest.raises(ValueError, match="one action per input frame"):
        prior(codes, {**cond, "actions": cond["actions"][:, :-1]})
    with pytest.raises(ValueError, match="labels"):
        prior(codes, {"actions": cond["actions"]})
    with pytest.raises(ValueError, match="temperature"):
        prior.sample(cond, temperature=0.0)
    with pytest.raises(ValueError, match="latent_shape"):
        prior.sample(cond, shape=(3, 3, 2))


@pytest.mark.parametrize("given_steps,action_shift", [(None, 0), (1, 0), (2, 0), (1, 3)])
def test_cached_sampling_matches_naive_sampling(given_steps, action_shift):
    prior = conditioned(frames_per_step=2, dropout=0.2, action_shift=action_shift).train()  # dropout would break the match if left on
    cond = cond_for(prior, batch=3)
    given = None
    if given_steps is not None:
        given = torch.randint(0, K, (3, given_steps, *prior.latent_shape[1:]), generator=torch.Generator().manual_seed(4))
    cached = prior.sample(cond, temperature=1.3, generator=torch.Generator().manual_seed(5), given=given)
    assert prior.training
    naive = prior.sample_naive(cond, temperature=1.3, generator=torch.Generator().manual_seed(5), given=given)
    assert prior.training
    assert cached.shape == (3, *prior.latent_shape) and cached.dtype == torch.long
    assert torch.equal(cached, naive)
    assert 0 <= cached.min() and cached.max() < K
    if given is not None:
        assert torch.equal(cached[:, :given_steps], given)
    else:  # another seed, other codes: the draw follows the generator
        again = prior.sample(cond, temperature=1.3, generator=torch.Generator().manual_seed(6))
        assert not torch.equal(cached, again)


def test_unconditional_sampling_takes_num_samples():
    prior = tiny()
    g = torch.Generator().manual_seed(0)
    codes = prior.sample(num_samples=2, generator=g)
    assert codes.shape == (2, *prior.latent_shape)
    assert torch.equal(codes, prior.sample_naive(num_samples=2, generator=torch.Generator().manual_seed(0)))


def rolling_videos(batch, shape, generator):
    """Codes whose step t+1 is step t rolled along columns by action t (0 still, 1 left, 2 right);
    actions (B, T) one per frame (frames_per_step 1), the last one driving nothing."""
    t, h, w = shape
    actions = torch.randint(0, 3, (batch, t), generator=generator)
    steps = [torch.randint(0, K, (batch, h, w), generator=generator)]
    shift = torch.tensor([0, -1, 1])
    for i in range(t - 1):
        prev = steps[-1]
        cols = (torch.arange(w).view(1, w) - shift[actions[:, i]].view(-1, 1)) % w  # new[c] = prev[c - shift]
        steps.append(prev.gather(2, cols[:, None, :].expand(-1, h, -1)))
    return torch.stack(steps, 1), actions


def test_it_learns_action_driven_dynamics():
    shape = (4, 2, 4)
    torch.manual_seed(0)
    prior = VideoPrior(codebook_size=K, latent_shape=shape, num_actions=3, num_frames=shape[0], d_model=64,
                       num_layers=2, num_heads=4)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(300):
            codes, actions = rolling_videos(32, shape, g)
            loss = prior(codes, {"actions": actions}).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        prior.eval()
        codes, actions = rolling_videos(256, shape, torch.Generator().manual_seed(2))
        with torch.no_grad():
            true = prior(codes, {"actions": actions}).loss.item()
            shuffled = prior(codes, {"actions": actions[torch.randperm(256, generator=g)]}).loss.item()
    finally:
        torch.set_num_threads(threads)
    # the first step is noise (log2 K bits per code), the rest follows from it and the actions
    floor = math.log2(K) / shape[0]
    assert true < floor + 0.35, (true, floor)
    assert true < 0.5 * math.log2(K)
    assert shuffled > true + 0.5, (true, shuffled)


def test_config_round_trip():
    prior = conditioned(frames_per_step=2)
    config = json.loads(json.dumps(prior.config))
    assert config == prior.config
    clone = VideoPrior.from_config(config)
    clone.load_state_dict(prior.state_dict())
    clone.eval()
    cond = cond_for(prior)
    codes = torch.randint(0, K, (2, *prior.latent_shape))
    assert torch.equal(prior.logits(codes, cond), clone.logits(codes, cond))
    assert VideoPrior.role == "prior"


def test_sample_scores_are_per_frame_psnr_averaged_and_the_action_gap_is_paired():
    """The sample job's scores: a window's PSNR is the mean of its frames' PSNRs (20 and 40 dB
    give 30, not the ~23 of the pooled error), generated pixels are clamped to the image range
    first; the action gap is taken window by window, with its standard error and win fraction."""
    from pipeline.modalities.video.sampling import paired_gap, window_psnr

    real = torch.zeros(2, 3, 2, 4, 4)
    made = real.clone()
    made[0, :, 0] = 0.1  # frame 0: mse 0.01 -> 20 dB
    made[0, :, 1] = 0.01  # frame 1: mse 1e-4 -> 40 dB
    made[1] = 0.6  # beyond the range: clamped to 0.5 -> mse 0.25 -> 6.02 dB
    assert window_psnr(made, real).tolist() == pytest.approx([30.0, 10 * math.log10(4)], abs=1e-4)

    true = torch.tensor([20.0, 21.0, 22.0, 23.0])
    shuffled = torch.tensor([19.0, 21.5, 20.0, 22.0])  # gaps 1, -0.5, 2, 1
    scores = paired_gap(true, shuffled)
    assert scores["sample_psnr_action_gap"] == pytest.approx(0.875)
    assert scores["sample_psnr_action_gap_stderr"] == pytest.approx(math.sqrt(3.1875 / 3) / 2)
    assert scores["sample_true_actions_better_fraction"] == pytest.approx(0.75)
