r"""The full DDPM variational bound for vector data (Ho et al. 2020, Eq. 5):
:math:`L = L_0 + \sum_{t \ge 2} L_{t-1} + L_T`, in nats and bits per dimension.

Paper times :math:`1..T` are indices ``0..T-1`` here. :math:`L_T = \mathrm{KL}(q(x_T \mid x_0) \,\|\, \mathcal N(0, I))`;
for :math:`t \ge 1`, :math:`L_{t-1} = \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t))`, evaluated
at one :math:`x_t \sim q(x_t \mid x_0)` per example; :math:`L_0 = -\log \mathcal N(x_0; \mu_\theta(x_1), \sigma_1^2)`
with :math:`\sigma_1^2 = \beta_1` (a continuous Gaussian decoder, so the bound is on the differential
entropy of the data).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_tensor, randn
from .ddpm import _call, _check_model, model_watch
from .forward import _check_schedule, _q_sample, posterior_coefficients
from .gaussians import gaussian_log_prob, kl_normal
from .schedules import Schedule, to_working


@torch.no_grad()
def ddpm_elbo(model, schedule: Schedule, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None,
              variance: str = "posterior") -> dict:
    r"""The full DDPM variational bound, term by term, for a batch of vectors (Ho et al. 2020, Eq. 5).

    :math:`L = L_0 + \sum_{t \ge 2} L_{t-1} + L_T` in the paper's times :math:`1..T` (indices ``0..T-1`` here), with
    :math:`L_T = \mathrm{KL}(q(x_T \mid x_0) \,\|\, \mathcal N(0, I))`,
    :math:`L_{t-1} = \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t))` at one
    :math:`x_t \sim q(x_t \mid x_0)` per example, and :math:`L_0 = -\log \mathcal N(x_0; \mu_\theta(x_1), \sigma_1^2)`
    with :math:`\sigma_1^2 = \beta_1`: a continuous Gaussian decoder, so the bound is on the differential
    entropy of the data.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat``.
    schedule : Schedule
        The variance schedule.
    x0 : torch.Tensor
        Data vectors, shape ``(B, D)``.
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of the :math:`x_t` draws.
    variance : {"posterior", "beta"}, optional
        The reverse variance of :math:`p_\theta` (see :func:`ddpm_step`).

    Returns
    -------
    dict
        ``"L_0"``, ``"L_T"`` (floats, nats per example), ``"L_t"`` (tensor ``(T,)``: ``L_t[t]`` for
        :math:`t \ge 1`, ``L_t[0] = 0``), ``"total_nats"`` (:math:`L_0 + \sum L_t + L_T` per example),
        ``"bits_per_dim"``, and ``"per_example"`` (shape ``(B,)``).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is invalid, ``x0`` is not of shape ``(B, D)``, or ``variance`` is unknown.
    """
    _check_model(model)
    _check_schedule(schedule)
    check_tensor("x0", x0)
    if x0.ndim != 2:
        raise ValueError(f"x0 must be vectors of shape (B, D), got {tuple(x0.shape)}")
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    B, D = x0.shape
    T = schedule.T
    # L_T: closed form KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, 1)), summed over dimensions
    ab_T = to_working(schedule.alpha_bars[-1], x0)
    L_T = kl_normal(ab_T.sqrt() * x0, torch.log(1 - ab_T).expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0)).sum(1)
    ab = schedule.alpha_bars
    sqrt_ab, sqrt_1m_ab = ab.sqrt(), (1 - ab).sqrt()          # float64 on the CPU, once
    watch = model_watch(x0.device)
    true_means, model_means, post_logvars, model_logvars = [], [], [], []
    for t in range(T):
        noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        xt = _q_sample(schedule, x0, t, noise, (sqrt_ab, sqrt_1m_ab))
        eps = _call(model, xt, torch.full((B,), t, device=x0.device, dtype=torch.long), cond)
        watch.check(eps, (t, t))
        x0_hat = (xt - schedule.at(sqrt_1m_ab, t, xt) * eps) / schedule.at(sqrt_ab, t, xt)   # Eq. 4 inverted
        c0, ct, post_var = posterior_coefficients(schedule, t, x0)
        mean_theta = c0 * x0_hat + ct * xt
        if t == 0:
            var0 = to_working(schedule.betas[0], x0)
            L_0 = -gaussian_log_prob(x0, mean_theta, torch.log(var0).expand_as(x0)).sum(1)
            continue
        model_var = post_var if variance == "posterior" else schedule.at(schedule.betas, t, x0)
        true_means.append(c0 * x0 + ct * xt)
        model_means.append(mean_theta)
        post_logvars.append(torch.log(post_var))
        model_logvars.append(torch.log(model_var))
    watch.done()
    per_t = torch.zeros(T, B, dtype=torch.float64)
    if T > 1:   # L_{t-1} for every t >= 1 in one call (its argument checks once, not once per step)
        lv1 = torch.stack(post_logvars).reshape(-1, 1, 1).expand(T - 1, B, D)
        lv2 = torch.stack(model_logvars).reshape(-1, 1, 1).expand(T - 1, B, D)
        per_t[1:] = kl_normal(torch.stack(true_means), lv1, torch.stack(model_means), lv2).sum(2).cpu().double()
    per_example = L_0.cpu().double() + per_t.sum(0) + L_T.cpu().double()
    total = float(per_example.mean())
    return {"L_0": float(L_0.mean()), "L_T": float(L_T.mean()), "L_t": per_t.mean(1), "total_nats": total,
            "bits_per_dim": total / (D * math.log(2)), "per_example": per_example}
