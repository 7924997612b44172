"""A variational autoencoder (Kingma & Welling 2014) with a Gaussian encoder q(z|x) = N(mu, e^logvar)
and a Gaussian decoder of fixed variance, whose negative ELBO splits into reconstruction + KL."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._checks import check_int, check_number, check_tensor, randn


class VAE(nn.Module):
    r"""A VAE (Kingma & Welling 2014): MLP encoder :math:`x \to (\mu, \log\sigma^2)` and decoder :math:`z \to \hat x`.

    For vectors or (flattened) images; the encoder defines :math:`q(z \mid x) = \mathcal N(\mu, e^{\mathrm{logvar}})`.

    Parameters
    ----------
    in_shape : tuple of int
        One sample's shape, e.g. ``(2,)`` or ``(1, 8, 8)``.
    latent_dim : int, optional
        Latent dimension (default 2).
    hidden : int, optional
        Width of the hidden layers (default 256).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a size is not a positive integer.
    """

    def __init__(self, in_shape, latent_dim: int = 2, hidden: int = 256):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        self.config = dict(in_shape=in_shape, latent_dim=check_int("latent_dim", latent_dim, low=1),
                           hidden=check_int("hidden", hidden, low=1))
        d = math.prod(in_shape)
        self.encoder = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, d))

    def encode(self, x):
        r""":math:`(\mu, \log\sigma^2)` of :math:`q(z \mid x)`; the log-variance is clamped to :math:`[-12, 8]` (keeps :math:`e^{\mathrm{logvar}}` finite).

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, *in_shape)``.

        Returns
        -------
        tuple of torch.Tensor
            ``(mu, logvar)``, each of shape ``(B, latent_dim)``.

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape.
        """
        if tuple(x.shape[1:]) != self.config["in_shape"]:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.config['in_shape']))}), got {tuple(x.shape)}")
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)   # keep exp(logvar) finite

    def decode(self, z):
        r"""The decoder mean :math:`\hat x(z)`.

        Parameters
        ----------
        z : torch.Tensor
            Latents, shape ``(B, latent_dim)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, *in_shape)``.
        """
        return self.decoder(z).reshape(-1, *self.config["in_shape"])

    def forward(self, x, generator: torch.Generator | None = None):
        """Encode, draw one :math:`z` by :func:`reparameterize`, decode.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, *in_shape)``.
        generator : torch.Generator, optional
            Source of the reparameterization noise.

        Returns
        -------
        tuple of torch.Tensor
            ``(x_hat, mu, logvar)``.
        """
        mu, logvar = self.encode(x)
        # z = mu + exp(logvar / 2) eps: gaussians.reparameterize without its argument checks (mu and
        # logvar come from the encoder), which would read them back from a GPU every training step
        eps = randn(mu.shape, generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def vae_loss(model: VAE, x: torch.Tensor, beta: float = 1.0, decoder_std: float = 0.2,
             generator: torch.Generator | None = None) -> dict:
    r"""The negative ELBO per example, in nats, with one reparameterized sample of :math:`z`.

    .. math::

       \text{recon} = -\log\mathcal N(x; \hat x, s^2 I) = \frac{\|x - \hat x\|^2}{2 s^2} + \frac D2\log(2\pi s^2),
       \qquad \text{kl} = \mathrm{KL}(q(z \mid x) \,\|\, \mathcal N(0, I)),

    ``loss = recon + beta * kl`` (:math:`\beta = 1` is the ELBO; :math:`s` = ``decoder_std``).

    Parameters
    ----------
    model : VAE
        The model.
    x : torch.Tensor
        Data, shape ``(B, *in_shape)``.
    beta : float, optional
        Weight of the KL term, :math:`\ge 0` (default 1).
    decoder_std : float, optional
        The decoder's fixed standard deviation :math:`s > 0` (default 0.2).
    generator : torch.Generator, optional
        Source of the reparameterization noise.

    Returns
    -------
    dict
        Scalars ``{"loss", "recon", "kl"}``, means over the batch.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``x`` is not a finite floating-point tensor of the model's shape, or a number is out of range.
    """
    check_tensor("x", x)
    beta = check_number("beta", beta, low=0)
    decoder_std = check_number("decoder_std", decoder_std, low=0, low_open=True)
    return _vae_loss(model, x, beta, decoder_std, generator)


def _vae_loss(model, x, beta: float, decoder_std: float, generator) -> dict:
    """vae_loss without the checks, for training loops (no device-to-host sync)."""
    x_hat, mu, logvar = model(x, generator)
    d = x[0].numel()
    sq = ((x - x_hat) ** 2).flatten(1).sum(1)
    recon = sq / (2 * decoder_std ** 2) + 0.5 * d * math.log(2 * math.pi * decoder_std ** 2)
    kl = 0.5 * (mu ** 2 + torch.exp(logvar) - logvar - 1.0)     # gaussians.kl_std_normal, unchecked (as above)
    kl = kl.sum(1)
    return {"loss": (recon + beta * kl).mean(), "recon": recon.mean(), "kl": kl.mean()}
