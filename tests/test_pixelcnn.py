"""The Gated PixelCNN prior: causal with no blind spot, samples, learns, round-trips its config."""

import json
import math

import pytest
import torch

from pipeline.models.pixelcnn import GatedPixelCNN


def cond(labels):
    """The conditioning dict a GatedPixelCNN reads its class ids from."""
    return None if labels is None else {"labels": labels}

GRID = 8


def influence(prior, codes, labels, position):
    """|d logits[:, :, position] / d embedded input|, summed over batch and channels: (H, W)."""
    x = prior.embed(codes).detach().requires_grad_(True)
    logits = prior.forward_embedded(x, {"labels": labels})
    logits[(slice(None), slice(None), *position)].sum().backward()
    return x.grad.abs().sum(dim=(0, 1))


def receptive_field_errors(prior, grid=GRID):
    """Positions (i, j) -> (future positions that leak in, earlier positions never seen)."""
    torch.manual_seed(0)
    codes = torch.randint(0, prior.codebook_size, (2, grid, grid))
    labels = torch.tensor([0, 1])
    raster = torch.arange(grid * grid).view(grid, grid)
    errors = {}
    for i in range(grid):
        for j in range(grid):
            grad = influence(prior, codes, labels, (i, j))
            before = raster < i * grid + j
            leaks = (grad != 0) & ~before
            blind = (grad == 0) & before
            if leaks.any() or blind.any():
                errors[(i, j)] = (leaks.nonzero().tolist(), blind.nonzero().tolist())
    return errors


def test_each_position_sees_exactly_the_codes_before_it_in_raster_order():
    # Deep enough that the receptive field covers the 8x8 grid: any zero gradient on an earlier
    # position would be a blind spot, any nonzero one on the current or a later position a leak.
    prior = GatedPixelCNN(codebook_size=16, num_classes=2, hidden=16, num_layers=8, kernel_size=5)
    assert receptive_field_errors(prior) == {}


def test_the_receptive_field_check_catches_a_leak_and_a_short_field():
    leaky = GatedPixelCNN(codebook_size=16, num_classes=2, hidden=16, num_layers=8, kernel_size=5)
    leaky.layers[0].horizontal_mask.fill_(1.0)  # mask 'A' -> 'B': each code sees itself
    errors = receptive_field_errors(leaky)
    assert errors and all([i, j] in errors[(i, j)][0] for i, j in errors)

    shallow = GatedPixelCNN(codebook_size=16, num_classes=2, hidden=16, num_layers=1, kernel_size=3)
    errors = receptive_field_errors(shallow)
    assert (4, 4) in errors and errors[(4, 4)][0] == []  # blind, not leaky
    assert [0, 0] in errors[(4, 4)][1] and [3, 5] not in errors[(4, 4)][1]


@pytest.mark.parametrize(
    "kwargs, labels",
    [
        (dict(num_classes=3), torch.tensor([0, 2])),
        (dict(num_classes=3), None),
        (dict(num_classes=0), torch.tensor([0, 2])),
        (dict(num_classes=3, embed_dim=7), torch.tensor([1, 1])),
    ],
)
def test_logits_have_one_channel_per_code(kwargs, labels):
    prior = GatedPixelCNN(codebook_size=11, hidden=8, num_layers=2, kernel_size=3, **kwargs)
    codes = torch.randint(0, 11, (2, 5, 6))
    assert prior.logits(codes, cond(labels)).shape == (2, 11, 5, 6)
    nll = prior(codes, cond(labels)).loss
    assert nll.shape == () and torch.isfinite(nll)


def test_labels_change_the_logits_only_of_a_conditional_prior():
    torch.manual_seed(0)
    codes = torch.randint(0, 11, (2, 4, 4))
    conditional = GatedPixelCNN(codebook_size=11, num_classes=3, hidden=8, num_layers=2, kernel_size=3)
    same, other = conditional.logits(codes, cond(torch.tensor([0, 0]))), conditional.logits(codes, cond(torch.tensor([1, 2])))
    assert not torch.allclose(same, other)
    unconditional = GatedPixelCNN(codebook_size=11, num_classes=0, hidden=8, num_layers=2, kernel_size=3)
    assert torch.equal(unconditional.logits(codes, cond(torch.tensor([0, 1]))), unconditional.logits(codes, None))


def test_untrained_nll_is_close_to_uniform_in_bits():
    prior = GatedPixelCNN(codebook_size=64, num_classes=2, hidden=16, num_layers=2, kernel_size=3)
    codes = torch.randint(0, 64, (4, 6, 6))
    assert prior(codes).loss.item() == pytest.approx(math.log2(64), rel=0.1)


def test_sample_returns_codes_of_the_requested_shape_with_one_forward_per_position():
    prior = GatedPixelCNN(codebook_size=11, num_classes=3, hidden=8, num_layers=2, kernel_size=3)
    calls = []
    prior.code_embedding.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    codes = prior.sample(cond(torch.tensor([0, 1, 2])), shape=(3, 5))
    assert codes.shape == (3, 3, 5) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 11
    # the whole batch in each forward, on the rows up to the sampled position's
    assert calls == [(3, row + 1, 5) for row in range(3) for _ in range(5)]
    assert prior.sample(None, shape=(2, 2), num_samples=4).shape == (4, 2, 2)


def test_sample_is_deterministic_with_a_seeded_generator():
    prior = GatedPixelCNN(codebook_size=11, num_classes=3, hidden=8, num_layers=2, kernel_size=3)
    labels = torch.tensor([0, 1, 2, 0])

    def draw(seed):
        return prior.sample(cond(labels), shape=(4, 4), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_sampling_on_the_rows_seen_so_far_draws_what_the_whole_grid_would():
    """The forward on the rows up to the sampled one gives the full grid's logits there: sampling
    draws the same codes as a loop that re-runs the whole grid for every position."""
    torch.manual_seed(3)
    prior = GatedPixelCNN(codebook_size=13, num_classes=3, hidden=8, num_layers=4, kernel_size=5).double().eval()
    labels = torch.tensor([0, 1, 2, 1])
    fast = prior.sample(cond(labels), shape=(6, 5), generator=torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    slow = torch.zeros(4, 6, 5, dtype=torch.long)
    with torch.no_grad():
        for row in range(6):
            for col in range(5):
                probs = torch.softmax(prior.logits(slow, cond(labels))[:, :, row, col].float(), -1)
                slow[:, row, col] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("training", [True, False])
def test_sample_restores_the_training_mode(training):
    prior = GatedPixelCNN(codebook_size=11, num_classes=3, hidden=8, num_layers=2, kernel_size=3)
    prior.train(training)
    prior.sample(cond(torch.tensor([0])), shape=(2, 2))
    assert prior.training is training and torch.is_grad_enabled()


def test_from_config_and_state_dict_reproduce_the_logits_exactly():
    prior = GatedPixelCNN(codebook_size=13, num_classes=4, hidden=8, num_layers=3, kernel_size=5, embed_dim=6)
    config = json.loads(json.dumps(prior.config))
    restored = GatedPixelCNN.from_config(config)
    restored.load_state_dict(prior.state_dict())
    codes, labels = torch.randint(0, 13, (3, 5, 5)), torch.tensor([0, 3, 1])
    assert config == dict(codebook_size=13, num_classes=4, hidden=8, num_layers=3, kernel_size=5, embed_dim=6,
                          cond_key="labels")
    assert torch.equal(prior.logits(codes, cond(labels)), restored.logits(codes, cond(labels)))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        GatedPixelCNN(kernel_size=4)


def test_the_loss_is_the_cross_entropy_in_bits_over_unmasked_positions():
    torch.manual_seed(0)
    prior = GatedPixelCNN(codebook_size=11, num_classes=0, hidden=8, num_layers=2, kernel_size=3)
    codes = torch.randint(0, 11, (2, 4, 4))
    logits = prior.logits(codes)
    nats = torch.nn.functional.cross_entropy(logits, codes, reduction="none")
    torch.testing.assert_close(prior(codes).loss, nats.mean() / math.log(2))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, 0, :3] = True
    torch.testing.assert_close(prior(codes, None, mask).loss, nats[mask].mean() / math.log(2))


# Learning: rows are constant; row 0 holds a value set by the class, later rows random values.
# Given the class the only uncertainty is the first code of rows 1.., i.e. (H-1) * log2(K) bits.
K, CLASSES, H, W = 16, 4, 6, 6


def structured_codes(n, generator):
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    rows = torch.randint(0, K, (n, H), generator=generator)
    rows[:, 0] = 3 * labels + 1
    return rows[:, :, None].expand(n, H, W).contiguous(), labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prior = GatedPixelCNN(codebook_size=K, num_classes=CLASSES, hidden=32, num_layers=4, kernel_size=3)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(150):
        codes, labels = structured_codes(64, g)
        loss = prior(codes, cond(labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    return prior, structured_codes(512, torch.Generator().manual_seed(1))


def test_a_small_prior_learns_the_structure_of_the_codes(trained):
    prior, (codes, labels) = trained
    with torch.no_grad():
        nll = prior(codes, cond(labels)).loss.item()
    assert nll < 0.5 * math.log2(K)


def test_the_class_conditions_the_prior(trained):
    prior, (codes, labels) = trained
    with torch.no_grad():
        true_nll = prior(codes, cond(labels)).loss.item()
        wrong_nll = prior(codes, cond((labels + 1) % CLASSES)).loss.item()
    assert wrong_nll > true_nll + 0.25


def test_samples_of_a_trained_prior_follow_the_structure(trained):
    prior, _ = trained
    labels = torch.arange(CLASSES).repeat(4)
    codes = prior.sample(cond(labels), shape=(H, W), temperature=0.5, generator=torch.Generator().manual_seed(0))
    first_row_right = (codes[:, 0] == (3 * labels + 1)[:, None]).float().mean()
    rows_constant = (codes == codes[:, :, :1]).float().mean()
    assert first_row_right > 0.9 and rows_constant > 0.9
