"""Networks: shapes at 8x8 and 28x28, the model contract, conditioning with a null label, and bad input."""
import math

import pytest
import torch

import diffusion_lab as dl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _seeded(factory, seed=0, perturb=True):
    """Build a network with seeded weights. The denoisers' last layer starts at zero (eps_hat = x
    at initialization); perturb=True gives it small random weights so that the dependence on
    t and cond, which flows through that layer, is visible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = factory()
        last = net.out[-1] if hasattr(net, "out") else None
        if perturb and last is not None:
            for p in last.parameters():
                torch.nn.init.normal_(p, std=0.1)
        return net


@pytest.mark.parametrize("factory, shape", [
    (lambda: dl.TimeMLP(dim=3, hidden=16, depth=1, emb_dim=8, num_classes=2), (4, 3)),
    (lambda: dl.UNet(in_channels=1, base=8, mults=(1, 2), emb_dim=16, num_classes=2), (4, 1, 8, 8))])
def test_denoisers_start_as_the_identity_skip(factory, shape):
    # eps_hat = x + f(x, t, cond) with f's last layer zero at initialization: at high noise the
    # exact epsilon is ~x_t, so an untrained network already starts there.
    net = _seeded(factory, perturb=False)
    x = torch.randn(*shape, generator=_gen(10))
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(net(x, t, torch.tensor([0, 1, 2, 0])), x)


def test_timestep_embedding():
    t = torch.tensor([0, 1, 10, 999])
    e = dl.timestep_embedding(t, 16)
    assert e.shape == (4, 16)
    # t = 0: cos(0) = 1 on the first half, sin(0) = 0 on the second.
    torch.testing.assert_close(e[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    # the first frequency is 1: entries cos(t) and sin(t)
    torch.testing.assert_close(e[:, 0], torch.cos(t.float()))
    torch.testing.assert_close(e[:, 8], torch.sin(t.float()))
    assert dl.timestep_embedding(t, 7).shape == (4, 7)
    assert not torch.allclose(e[1], e[2])


def test_time_mlp_contract_and_time_dependence():
    net = _seeded(lambda: dl.TimeMLP(dim=3, hidden=32, depth=2, emb_dim=16))
    x = torch.randn(5, 3, generator=_gen(0))
    out = net(x, torch.full((5,), 7))
    assert out.shape == (5, 3)
    assert not torch.allclose(out, net(x, torch.full((5,), 700)))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_class_conditioning_with_a_null_label():
    net = _seeded(lambda: dl.TimeMLP(dim=2, hidden=32, depth=1, emb_dim=16, num_classes=3)).eval()
    x = torch.randn(4, 2, generator=_gen(1))
    t = torch.tensor([1, 50, 100, 999])
    null = torch.full((4,), 3)
    torch.testing.assert_close(net(x, t, None), net(x, t, null))  # None means the null label
    a = net(x, t, torch.tensor([0, 0, 0, 0]))
    b = net(x, t, torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(a, b) and not torch.allclose(a, net(x, t, None))
    assert net.num_classes == 3


@pytest.mark.parametrize("size", [8, 28, 7])
def test_unet_shapes_at_small_and_odd_sizes(size):
    net = _seeded(lambda: dl.UNet(in_channels=1, base=8, mults=(1, 2, 2), emb_dim=16, num_classes=10))
    x = torch.randn(2, 1, size, size, generator=_gen(2))
    t = torch.tensor([0, 500])
    out = net(x, t, torch.tensor([3, 10]))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    out.pow(2).mean().backward()
    assert net.inp.weight.grad is not None


def test_unet_multichannel_and_dependence_on_t_and_cond():
    net = _seeded(lambda: dl.UNet(in_channels=3, base=8, mults=(1, 2), emb_dim=16, num_classes=2)).eval()
    x = torch.randn(2, 3, 8, 8, generator=_gen(3))
    a = net(x, torch.tensor([10, 10]), None)
    assert a.shape == (2, 3, 8, 8)
    assert not torch.allclose(a, net(x, torch.tensor([900, 900]), None))
    assert not torch.allclose(a, net(x, torch.tensor([10, 10]), torch.tensor([0, 1])))


def test_unet_batch_rows_are_independent():
    # eval mode: no batch statistics; row i of a batch equals the model on row i alone.
    net = _seeded(lambda: dl.UNet(in_channels=1, base=8, mults=(1, 2), emb_dim=16)).eval()
    x = torch.randn(3, 1, 8, 8, generator=_gen(4))
    t = torch.tensor([5, 50, 500])
    full = net(x, t)
    # float32 convolutions pick different kernels for batch 3 and batch 1 (and per thread count): rounding
    # differences of ~1e-6 are expected (seen: 1.4e-6); a batch-statistics bug would differ by ~1e-1.
    torch.testing.assert_close(full[1:2], net(x[1:2], t[1:2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_noisy_classifier_logits(shape):
    clf = _seeded(lambda: dl.NoisyClassifier(shape, num_classes=4, hidden=16, depth=1, emb_dim=16, base=8))
    x = torch.randn(3, *shape, generator=_gen(5))
    logits = clf(x, torch.tensor([0, 10, 999]))
    assert logits.shape == (3, 4)
    with pytest.raises(ValueError, match="x"):
        clf(torch.randn(3, 5), torch.tensor([0, 1, 2]))


def test_make_denoiser():
    assert isinstance(dl.make_denoiser((2,)), dl.TimeMLP)
    assert isinstance(dl.make_denoiser((1, 8, 8), num_classes=10, base=8), dl.UNet)
    with pytest.raises(ValueError, match="shape"):
        dl.make_denoiser((3, 4))


def test_nets_bad_input():
    with pytest.raises(ValueError, match="dim"):
        dl.TimeMLP(dim=0)
    with pytest.raises(ValueError, match="in_channels"):
        dl.UNet(in_channels=0)
    with pytest.raises(ValueError, match="num_classes"):
        dl.NoisyClassifier((2,), num_classes=1)
    net = dl.TimeMLP(dim=2, hidden=8, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match="x"):
        net(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="t"):
        net(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="cond"):
        net(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))  # no classes
    cnet = dl.TimeMLP(dim=2, hidden=8, depth=1, emb_dim=8, num_classes=3)
    with pytest.raises(ValueError, match="cond"):
        cnet(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="cond"):
        cnet(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="x"):
        dl.UNet(in_channels=1, base=8)(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    assert math.isfinite(float(net(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)).detach().sum()))
