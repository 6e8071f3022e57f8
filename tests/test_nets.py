"""DreamerV3 building blocks: distributions, initialisers, MLP and conv/vector encoders and decoders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hieros.nets import (
    MLP,
    MSE,
    Bernoulli,
    ChannelLayerNorm,
    ConvDecoder,
    ConvEncoder,
    OneHotCategorical,
    SymlogMSE,
    TwoHot,
    VectorDecoder,
    VectorEncoder,
    init_weights_,
    kl_categorical,
    normalize_image,
    symexp,
    symlog,
    twohot_bins,
    twohot_encode,
    uniform_init_,
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(99)


# ----------------------------------------------------------------------------- symlog / two-hot


def test_symlog_symexp_inverse_and_values() -> None:
    x = torch.tensor([-1e6, -100.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 100.0, 1e6], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(symlog(x), torch.sign(x) * torch.log(1 + x.abs()))
    assert symlog(torch.tensor([1.0], dtype=torch.bfloat16)).dtype == torch.float32


def test_twohot_bins_are_symmetric_and_equally_spaced() -> None:
    bins = twohot_bins(255, -20.0, 20.0)
    assert bins.shape == (255,) and bins[0] == -20.0 and bins[-1] == 20.0 and bins[127] == 0.0
    assert torch.equal(bins, -bins.flip(0))
    torch.testing.assert_close(bins.diff(), torch.full((254,), 40.0 / 254))


def test_twohot_encode_round_trip(gen: torch.Generator) -> None:
    bins = twohot_bins(255)
    x = (torch.rand(1000, generator=gen) * 2 - 1) * 19.99
    mid = (bins[:-1] + bins[1:]) / 2  # exactly between two bins
    quarter = bins[:-1] + (bins[1:] - bins[:-1]) / 4
    for values in (x, mid, quarter, bins):
        weights = twohot_encode(values, bins)
        assert weights.shape == (*values.shape, 255)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(values))
        assert ((weights > 0).sum(-1) <= 2).all() and (weights >= 0).all()
        torch.testing.assert_close(weights @ bins, values, rtol=0, atol=1e-5)
    w_mid = twohot_encode(mid[100:101], bins)[0]
    torch.testing.assert_close(w_mid[100:102], torch.tensor([0.5, 0.5]))
    w_q = twohot_encode(quarter[10:11], bins)[0]
    torch.testing.assert_close(w_q[10:12], torch.tensor([0.75, 0.25]))
    # outside the range: all mass on the edge bin
    edge = twohot_encode(torch.tensor([-50.0, 50.0]), bins)
    assert edge[0, 0] == 1.0 and edge[1, -1] == 1.0


def test_twohot_log_prob_equals_hand_computed() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, -0.2]])
    dist = TwoHot(logits, low=-2.0, high=2.0)  # bins -2, -1, 0, 1, 2
    target = symexp(torch.tensor([0.25]))  # symlog(target) = 0.25 → 0.75 on bin 0, 0.25 on bin 1
    log_softmax = logits - torch.logsumexp(logits, -1, keepdim=True)
    expected = 0.75 * log_softmax[:, 2] + 0.25 * log_softmax[:, 3]
    torch.testing.assert_close(dist.log_prob(target), expected)
    big = torch.tensor([1e9])  # clipped to the top bin
    torch.testing.assert_close(dist.log_prob(big), log_softmax[:, 4])
    with pytest.raises(ValueError, match="batch shape"):
        dist.log_prob(target[:, None])


def test_twohot_mean_of_zero_logits_is_exactly_zero_and_peaked_mean() -> None:
    assert torch.equal(TwoHot(torch.zeros(4, 7, 255)).mean(), torch.zeros(4, 7))
    bins = twohot_bins(255)
    logits = torch.full((255,), -1e4)
    logits[200] = 0.0
    dist = TwoHot(logits)
    torch.testing.assert_close(dist.mean(), symexp(bins[200]))
    torch.testing.assert_close(dist.mode(), dist.mean())


def test_twohot_loss_gradient_and_optimum_recover_the_target(gen: torch.Generator) -> None:
    targets = torch.tensor([-300.0, -2.5, 0.0, 0.7, 41.0, 1234.0])
    weights = twohot_encode(symlog(targets), twohot_bins(255))
    logits = torch.randn(6, 255, generator=gen, requires_grad=True)
    (grad,) = torch.autograd.grad(-TwoHot(logits).log_prob(targets).sum(), logits)
    torch.testing.assert_close(grad, torch.softmax(logits, -1).detach() - weights)  # cross-entropy gradient
    optimum = TwoHot(torch.log(weights + 1e-12))  # the minimiser of the loss puts softmax == two-hot
    torch.testing.assert_close(optimum.mean(), targets, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bounds", [(-20.0, 20.0), (-3.0, 5.0)])
def test_twohot_fast_paths_equal_the_dense_two_hot_sums(gen: torch.Generator, bounds) -> None:
    """mean() as one matrix-vector product and log_prob() as a two-bin gather give the dense sums' values and
    gradients, also for targets on bin centres, between them and outside the range."""
    low, high = bounds
    bins = twohot_bins(255, low, high)
    logits = (torch.randn(16, 64, 255, generator=gen) * 3).requires_grad_()
    targets = symexp(torch.rand(16, 64, generator=gen) * (high - low + 4) + low - 2)
    targets[0, :10] = symexp(bins[torch.arange(0, 255, 26)])  # exactly on bin centres
    dense_log_prob = (twohot_encode(symlog(targets), bins) * torch.log_softmax(logits, -1)).sum(-1)
    fast_log_prob = TwoHot(logits, low, high).log_prob(targets)
    torch.testing.assert_close(fast_log_prob, dense_log_prob, rtol=1e-5, atol=1e-5)
    dense_grad = torch.autograd.grad(dense_log_prob.sum(), logits)[0]
    torch.testing.assert_close(torch.autograd.grad(fast_log_prob.sum(), logits)[0], dense_grad, atol=1e-6, rtol=1e-5)
    dense_mean = symexp((torch.softmax(logits, -1) * bins).sum(-1))
    fast_mean = TwoHot(logits, low, high).mean()
    torch.testing.assert_close(fast_mean, dense_mean, rtol=1e-4, atol=1e-5)
    dense_grad = torch.autograd.grad(dense_mean.sum(), logits)[0]
    torch.testing.assert_close(torch.autograd.grad(fast_mean.sum(), logits)[0], dense_grad, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------- categorical / Bernoulli / MSE


def test_unimix_bounds_and_normalisation(gen: torch.Generator) -> None:
    logits = torch.randn(8, 32, 32, generator=gen) * 50
    logits[..., 0] = 1e4  # extreme peak
    dist = OneHotCategorical(logits, unimix=0.01)
    assert (dist.probs >= 0.01 / 32 - 1e-9).all()
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(8, 32))
    torch.testing.assert_close(dist.logits.exp(), dist.probs)
    assert dist.probs.max() <= 0.99 + 0.01 / 32 + 1e-6


def test_categorical_sample_is_onehot_and_follows_probs(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0])
    dist = OneHotCategorical(logits.expand(20000, 4), unimix=0.01)
    sample = dist.sample()
    assert torch.equal(sample.detach().sum(-1), torch.ones(20000))
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    frequency = sample.detach().mean(0)
    torch.testing.assert_close(frequency, dist.probs[0], rtol=0, atol=0.015)
    mode = dist.mode().detach()
    assert (mode.argmax(-1) == 0).all()
    onehot = torch.eye(4)
    torch.testing.assert_close(OneHotCategorical(logits, unimix=0.01).log_prob(onehot), dist.logits[0])


def test_categorical_sample_matches_probs_per_row_and_skips_impossible_classes() -> None:
    """Inverse-CDF sampling: every row follows its own probabilities (not the first row's), classes of probability 0
    are never drawn, and a generator makes the draw reproducible."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 6, generator=generator) * 2
    logits[1, 2] = -float("inf")  # impossible class in row 1
    logits[2, 0] = -float("inf")  # and at the edge in row 2
    logits[2, 5] = -float("inf")
    dist = OneHotCategorical(logits.unsqueeze(0).expand(40000, 3, 6), unimix=0.0)
    sample = dist.sample(torch.Generator().manual_seed(1)).detach()
    assert torch.equal(sample.sum(-1), torch.ones(40000, 3))
    torch.testing.assert_close(sample.mean(0), dist.probs[0], rtol=0, atol=0.01)
    assert sample[:, 1, 2].sum() == 0 and sample[:, 2, 0].sum() == 0 and sample[:, 2, 5].sum() == 0
    again = dist.sample(torch.Generator().manual_seed(1)).detach()
    assert torch.equal(sample, again)
    assert not torch.equal(sample, dist.sample(torch.Generator().manual_seed(2)).detach())


def test_straight_through_gradients(gen: torch.Generator) -> None:
    logits = torch.randn(5, 6, generator=gen, requires_grad=True)
    weights = torch.randn(5, 6, generator=gen)
    for draw in ("sample", "mode"):
        dist = OneHotCategorical(logits, unimix=0.01)
        (grad,) = torch.autograd.grad((getattr(dist, draw)() * weights).sum(), logits)
        (expected,) = torch.autograd.grad((OneHotCategorical(logits, unimix=0.01).probs * weights).sum(), logits)
        torch.testing.assert_close(grad, expected)
        assert grad.abs().sum() > 0


def test_entropy_and_kl() -> None:
    uniform = OneHotCategorical(torch.zeros(3, 32), unimix=0.01)
    torch.testing.assert_close(uniform.entropy(), torch.full((3,), math.log(32)))
    torch.manual_seed(1)
    a, b = torch.randn(4, 32, 32), torch.randn(4, 32, 32)
    post, prior = OneHotCategorical(a).logits, OneHotCategorical(b).logits
    torch.testing.assert_close(kl_categorical(post, post), torch.zeros(4, 32), rtol=0, atol=1e-6)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=post), torch.distributions.Categorical(logits=prior)
    )
    torch.testing.assert_close(kl_categorical(post, prior), expected)
    assert (kl_categorical(post, prior) > 0).all()
    entropy = torch.distributions.Categorical(logits=post).entropy()
    torch.testing.assert_close(OneHotCategorical(a).entropy(), entropy)


def test_bernoulli_matches_torch(gen: torch.Generator) -> None:
    logits = torch.randn(7, 3, generator=gen) * 3
    x = (torch.rand(7, 3, generator=gen) < 0.5).float()
    dist = Bernoulli(logits)
    reference = torch.distributions.Bernoulli(logits=logits)
    torch.testing.assert_close(dist.log_prob(x), reference.log_prob(x))
    torch.testing.assert_close(dist.mean(), torch.sigmoid(logits))
    torch.testing.assert_close(dist.entropy(), reference.entropy())
    assert torch.equal(dist.mode(), (logits > 0).float())


def test_mse_and_symlog_mse(gen: torch.Generator) -> None:
    prediction = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randn(2, 3, 4, 5, generator=gen)
    image = MSE(prediction, dims=3)
    torch.testing.assert_close(image.log_prob(target), -((prediction - target) ** 2).sum((-1, -2, -3)))
    assert torch.equal(image.mode(), prediction)
    leaf = prediction.clone().requires_grad_(True)  # the gradient of the fused form is 2 (pred - x), as written out
    (grad,) = torch.autograd.grad(MSE(leaf, dims=3).log_prob(target).sum(), leaf)
    torch.testing.assert_close(grad, -2.0 * (prediction - target))
    raw = torch.randn(6, 9, generator=gen) * 100
    vector = SymlogMSE(prediction[0, 0], dims=1)
    torch.testing.assert_close(vector.mode(), symexp(prediction[0, 0]))
    perfect = SymlogMSE(symlog(raw))
    torch.testing.assert_close(perfect.log_prob(raw), torch.zeros(6))
    torch.testing.assert_close(perfect.mode(), raw, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        image.log_prob(target[..., :4])


def test_distributions_compute_in_float32_under_autocast(gen: torch.Generator) -> None:
    logits = torch.randn(4, 255, generator=gen).bfloat16()
    assert TwoHot(logits).mean().dtype == torch.float32
    assert OneHotCategorical(logits[:, :32]).probs.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head = nn.Linear(8, 255)
        out = head(torch.randn(4, 8, generator=gen))
        assert out.dtype == torch.bfloat16
        assert TwoHot(out).log_prob(torch.ones(4)).dtype == torch.float32


# ----------------------------------------------------------------------------- initialisers and MLP


def test_truncated_normal_and_uniform_init() -> None:
    torch.manual_seed(2)
    layer = nn.Linear(300, 500)
    init_weights_(layer)
    fan_avg = (300 + 500) / 2
    sigma = math.sqrt(1 / fan_avg) / 0.87962566103423978
    assert layer.weight.abs().max() <= 2 * sigma and torch.equal(layer.bias, torch.zeros(500))
    assert abs(layer.weight.std().item() / math.sqrt(1 / fan_avg) - 1) < 0.02  # variance 1/fan_avg
    conv = nn.Conv2d(24, 48, 4)
    init_weights_(conv)
    conv_sigma = math.sqrt(1 / (16 * (24 + 48) / 2)) / 0.87962566103423978
    assert conv.weight.abs().max() <= 2 * conv_sigma
    uniform_init_(layer, 2.0)
    limit = math.sqrt(3 * 2.0 / fan_avg)
    assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.95 * limit
    uniform_init_(layer, 0.0)
    assert torch.equal(layer.weight, torch.zeros_like(layer.weight))


def test_mlp_structure_and_zero_head(gen: torch.Generator) -> None:
    mlp = MLP(1280, 255, units=256, layers=2, out_scale=0.0)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in mlp.modules() if isinstance(m, nn.LayerNorm)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (1280, 256, False),
        (256, 256, False),
        (256, 255, True),
    ]
    assert [n.eps for n in norms] == [1e-3, 1e-3] and sum(isinstance(m, nn.SiLU) for m in mlp.modules()) == 2
    features = torch.randn(3, 5, 1280, generator=gen)
    out = mlp(features)
    assert out.shape == (3, 5, 255) and torch.equal(out, torch.zeros_like(out))
    assert torch.equal(TwoHot(out).mean(), torch.zeros(3, 5))
    trunk = MLP(10, None, units=64, layers=3, act="gelu")
    assert trunk.out_dim == 64 and trunk(torch.randn(2, 10, generator=gen)).shape == (2, 64)
    with pytest.raises(ValueError, match="last dim 10"):
        trunk(torch.randn(2, 11))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, 4, act="swishy")


# ----------------------------------------------------------------------------- conv encoder / decoder


def test_conv_encoder_shapes_channels_and_normalisation(gen: torch.Generator) -> None:
    encoder = ConvEncoder()
    assert encoder.out_dim == 3072 and encoder.channels == [24, 48, 96, 192]
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.bias) for c in convs] == [
        (3, 24, (4, 4), (2, 2), None),
        (24, 48, (4, 4), (2, 2), None),
        (48, 96, (4, 4), (2, 2), None),
        (96, 192, (4, 4), (2, 2), None),
    ]
    sizes, inputs = [], []
    for conv in convs:
        conv.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[1:])))
    convs[0].register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    image = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8, generator=gen)
    embedding = encoder(image)
    assert embedding.shape == (2, 3, 3072)
    assert sizes == [(24, 32, 32), (48, 16, 16), (96, 8, 8), (192, 4, 4)]
    torch.testing.assert_close(inputs[0], (image.reshape(6, 64, 64, 3).float() / 255 - 0.5).permute(0, 3, 1, 2))
    torch.testing.assert_close(encoder(image.float()), embedding)
    norms = [m for m in encoder.modules() if isinstance(m, ChannelLayerNorm)]
    assert len(norms) == 4 and all(n.norm.eps == 1e-3 for n in norms)


@pytest.mark.parametrize(("size", "out_dim"), [(16, 24 * 2 * 16), (32, 96 * 16), (64, 3072)])
def test_conv_encoder_decoder_image_sizes(size: int, out_dim: int, gen: torch.Generator) -> None:
    encoder = ConvEncoder(image_size=size)
    decoder = ConvDecoder(40, image_size=size)
    assert encoder.out_dim == out_dim
    images = torch.randint(0, 256, (5, size, size, 3), dtype=torch.uint8, generator=gen)
    assert encoder(images).shape == (5, out_dim)
    assert decoder(torch.randn(2, 5, 40, generator=gen)).shape == (2, 5, size, size, 3)


def test_channel_layer_norm_normalises_channels(gen: torch.Generator) -> None:
    x = torch.randn(2, 6, 5, 5, generator=gen) * 3 + 1
    y = ChannelLayerNorm(6)(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 5, 5), rtol=0, atol=1e-5)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-3))


def test_conv_decoder_structure_and_loss(gen: torch.Generator) -> None:
    decoder = ConvDecoder(1280)
    assert decoder.linear.in_features == 1280 and decoder.linear.out_features == 3072
    transposed = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.bias is not None) for m in transposed] == [
        (192, 96, False),
        (96, 48, False),
        (48, 24, False),
        (24, 3, True),
    ]
    limit = math.sqrt(3 / (16 * (24 + 3) / 2))
    assert decoder.output.weight.abs().max() <= limit and torch.equal(decoder.output.bias, torch.zeros(3))
    features = torch.randn(4, 6, 1280, generator=gen)
    mean = decoder(features)
    assert mean.shape == (4, 6, 64, 64, 3)
    target = torch.randint(0, 256, (4, 6, 64, 64, 3), generator=gen).float() / 255 - 0.5
    loss = -MSE(mean, dims=3).log_prob(target)
    assert loss.shape == (4, 6)
    torch.testing.assert_close(loss, ((mean - target) ** 2).sum((-1, -2, -3)))
    with pytest.raises(ValueError, match="1280"):
        decoder(torch.randn(2, 1000))


def test_conv_encoder_rejects_channel_first_images() -> None:
    with pytest.raises(ValueError, match="channel-last"):
        ConvEncoder()(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="power of two"):
        ConvEncoder(image_size=48)


def test_vector_encoder_and_decoder(gen: torch.Generator) -> None:
    encoder = VectorEncoder(10, units=32, layers=2)
    plain = VectorEncoder(10, units=32, layers=2, symlog_inputs=False)
    plain.load_state_dict(encoder.state_dict())
    x = torch.randn(3, 4, 10, generator=gen) * 50
    assert encoder.out_dim == 32 and encoder(x).shape == (3, 4, 32)
    torch.testing.assert_close(encoder(x), plain(symlog(x)))
    decoder = VectorDecoder(32, 10, units=32, layers=2)
    prediction = decoder(encoder(x))
    assert prediction.shape == (3, 4, 10)
    assert SymlogMSE(prediction).log_prob(x).shape == (3, 4)


def test_normalize_image_is_the_model_scale_and_leaves_its_input_alone() -> None:
    image = torch.randint(0, 256, (2, 3, 8, 8, 4), dtype=torch.uint8)
    assert torch.equal(normalize_image(image), image.float() / 255.0 - 0.5)  # bit for bit: same ops, same order
    assert normalize_image(image).dtype == torch.float32
    assert normalize_image(image, torch.float64).dtype == torch.float64
    as_float = image.float()
    normalize_image(as_float)
    assert torch.equal(as_float, image.float())  # a float input is copied, not normalised in place
