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
    r"""Elementwise KL divergence between two Gaussians, in nats.

    .. math::

       \mathrm{KL}\big(\mathcal N(\mu_1, \sigma_1^2) \,\|\, \mathcal N(\mu_2, \sigma_2^2)\big)
       = \log\frac{\sigma_2}{\sigma_1} + \frac{\sigma_1^2 + (\mu_1 - \mu_2)^2}{2\sigma_2^2} - \frac12,

    with :math:`\sigma_i^2 = e^{\mathrm{logvar}_i}` (derived in chapter 2). Sum over the last
    dimensions yourself for a diagonal Gaussian.

    Parameters
    ----------
    mu1, logvar1 : torch.Tensor
        Mean and log-variance of the first Gaussian.
    mu2, logvar2 : torch.Tensor
        Mean and log-variance of the second Gaussian. All four broadcast together.

    Returns
    -------
    torch.Tensor
        The divergence for every element, of the broadcast shape.

    Raises
    ------
    TypeError
        If an argument is not a floating-point tensor.
    ValueError
        If an argument holds NaN or inf, the shapes do not broadcast or the devices differ.
    """
    _gauss_args(mu1=mu1, logvar1=logvar1, mu2=mu2, logvar2=logvar2)
    return 0.5 * (logvar2 - logvar1 + (torch.exp(logvar1) + (mu1 - mu2) ** 2) * torch.exp(-logvar2) - 1.0)


def kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""Elementwise KL divergence to the standard Gaussian, the VAE's prior term, in nats.

    .. math::

       \mathrm{KL}\big(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(0, 1)\big)
       = \tfrac12\left(\mu^2 + \sigma^2 - \log\sigma^2 - 1\right),
       \qquad \sigma^2 = e^{\mathrm{logvar}}

    (Kingma & Welling 2014, Appendix B).

    Parameters
    ----------
    mu, logvar : torch.Tensor
        Mean and log-variance; they broadcast together.

    Returns
    -------
    torch.Tensor
        The divergence for every element, of the broadcast shape.

    Raises
    ------
    TypeError
        If an argument is not a floating-point tensor.
    ValueError
        If an argument holds NaN or inf, the shapes do not broadcast or the devices differ.
    """
    _gauss_args(mu=mu, logvar=logvar)
    return 0.5 * (mu ** 2 + torch.exp(logvar) - logvar - 1.0)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""Elementwise Gaussian log-density :math:`\log \mathcal N(x; \mu, e^{\mathrm{logvar}})`, in nats.

    Parameters
    ----------
    x : torch.Tensor
        Points at which to evaluate the density.
    mu, logvar : torch.Tensor
        Mean and log-variance; all three arguments broadcast together.

    Returns
    -------
    torch.Tensor
        :math:`-\tfrac12\big(\log 2\pi + \mathrm{logvar} + (x - \mu)^2 e^{-\mathrm{logvar}}\big)` for every
        element, of the broadcast shape.

    Raises
    ------
    TypeError
        If an argument is not a floating-point tensor.
    ValueError
        If an argument holds NaN or inf, the shapes do not broadcast or the devices differ.
    """
    _gauss_args(x=x, mu=mu, logvar=logvar)
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 * torch.exp(-logvar))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Draw :math:`z = \mu + e^{\mathrm{logvar}/2}\,\epsilon` with :math:`\epsilon \sim \mathcal N(0, I)`.

    The reparameterization trick (Kingma & Welling 2014, Sec. 2.4; chapter 3): the randomness sits in
    :math:`\epsilon`, so :math:`z` is differentiable in ``mu`` and ``logvar``.

    Parameters
    ----------
    mu, logvar : torch.Tensor
        Mean and log-variance, broadcastable together, on one device.
    generator : torch.Generator, optional
        Source of :math:`\epsilon` (default: torch's global random state).

    Returns
    -------
    torch.Tensor
        One sample per element, of the broadcast shape, in ``mu``'s dtype.

    Raises
    ------
    TypeError
        If ``mu``/``logvar`` are not floating-point tensors or ``generator`` is not a ``torch.Generator``.
    ValueError
        If they hold NaN or inf, do not broadcast, or sit on different devices.
    """
    _gauss_args(mu=mu, logvar=logvar)
    shape = torch.broadcast_shapes(mu.shape, logvar.shape)
    eps = randn(shape, generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps
