"""Gaussian building blocks: closed-form KL divergences, log densities and the
reparameterization trick (Kingma & Welling 2014, Sec. 2.4)."""
from __future__ import annotations

import math

import torch

from ._checks import check_broadcastable, check_same_device, check_tensor, randn


def _gauss_args(**tensors):
    for name, t in tensors.items():
        check_tensor(name, t)
    check_broadcastable(**tensors)
    check_same_device(**tensors)


def kl_normal(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL( N(mu1, e^logvar1) || N(mu2, e^logvar2) ) in nats.

    KL = log(sigma2/sigma1) + (sigma1^2 + (mu1 - mu2)^2) / (2 sigma2^2) - 1/2.
    """
    _gauss_args(mu1=mu1, logvar1=logvar1, mu2=mu2, logvar2=logvar2)
    return 0.5 * (logvar2 - logvar1 + (torch.exp(logvar1) + (mu1 - mu2) ** 2) * torch.exp(-logvar2) - 1.0)


def kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL( N(mu, e^logvar) || N(0, 1) ) = (mu^2 + sigma^2 - log sigma^2 - 1) / 2."""
    _gauss_args(mu=mu, logvar=logvar)
    return 0.5 * (mu ** 2 + torch.exp(logvar) - logvar - 1.0)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, e^logvar) in nats."""
    _gauss_args(x=x, mu=mu, logvar=logvar)
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 * torch.exp(-logvar))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): differentiable in mu and logvar."""
    _gauss_args(mu=mu, logvar=logvar)
    shape = torch.broadcast_shapes(mu.shape, logvar.shape)
    eps = randn(shape, generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps
