"""The VAE and its negative ELBO split into reconstruction and KL, recomputed by hand."""
import math

import pytest
import torch

import diffusion_lab as dl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _vae(in_shape=(4,), latent=2):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return dl.VAE(in_shape, latent_dim=latent, hidden=16)


def test_vae_shapes_for_vectors_and_images():
    v = _vae((4,))
    x_hat, mu, logvar = v(torch.randn(3, 4, generator=_gen(0)), generator=_gen(1))
    assert x_hat.shape == (3, 4) and mu.shape == (3, 2) and logvar.shape == (3, 2)
    vi = _vae((1, 8, 8), latent=3)
    x_hat, mu, _ = vi(torch.randn(2, 1, 8, 8, generator=_gen(2)), generator=_gen(3))
    assert x_hat.shape == (2, 1, 8, 8) and mu.shape == (2, 3)


@pytest.mark.parametrize("beta, decoder_std", [(1.0, 0.2), (0.5, 1.0)])
def test_vae_loss_by_hand(beta, decoder_std):
    # recon = -log N(x; x_hat, s^2 I) = |x - x_hat|^2 / (2 s^2) + D/2 log(2 pi s^2),
    # kl = sum_j KL(N(mu_j, e^logvar_j) || N(0, 1)), loss = recon + beta kl; means over the batch.
    v = _vae((4,))
    x = torch.randn(6, 4, generator=_gen(4))
    out = dl.vae_loss(v, x, beta=beta, decoder_std=decoder_std, generator=_gen(5))
    mu, logvar = v.encode(x)
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=_gen(5))
    x_hat = v.decode(z)
    recon = ((x - x_hat) ** 2).sum(1) / (2 * decoder_std ** 2) + 2 * math.log(2 * math.pi * decoder_std ** 2)
    kl = (0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).sum(1)
    torch.testing.assert_close(out["recon"], recon.mean())
    torch.testing.assert_close(out["kl"], kl.mean())
    torch.testing.assert_close(out["loss"], (recon + beta * kl).mean())


def test_vae_loss_is_differentiable_and_deterministic():
    v = _vae((4,))
    x = torch.randn(6, 4, generator=_gen(6))
    a = dl.vae_loss(v, x, generator=_gen(7))
    b = dl.vae_loss(v, x, generator=_gen(7))
    assert a["loss"].item() == b["loss"].item()
    a["loss"].backward()
    assert all(p.grad is not None for p in v.parameters())


def test_vae_loss_bad_input():
    v = _vae((4,))
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="beta"):
        dl.vae_loss(v, x, beta=-1.0)
    with pytest.raises(ValueError, match="decoder_std"):
        dl.vae_loss(v, x, decoder_std=0.0)
    with pytest.raises(ValueError, match="x"):
        dl.vae_loss(v, x * float("nan"))
    with pytest.raises(ValueError, match="x"):
        dl.vae_loss(v, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="latent_dim"):
        dl.VAE((4,), latent_dim=0)
