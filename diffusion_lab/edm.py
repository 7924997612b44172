r"""Karras et al. 2022 (EDM): the noise levels of Eq. (5) and the deterministic Heun sampler (Algorithm 1) with
Algorithm 2's stochastic churn as an option, for any path and prediction. EDM works in
:math:`\tilde x = x/\alpha` with noise level :math:`s = \sigma/\alpha`, where
:math:`d\tilde x/ds = (\tilde x - D(\tilde x; s))/s` and :math:`D` is the denoiser :math:`\hat x_0`.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_int, check_number, check_tensor, randn
from ._sampling import check_path, start
from .ode import check_start
from .predictions import to_pair


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    r"""``n`` descending noise levels of Karras et al. (2022, Eq. 5), no trailing zero.

    .. math:: \sigma_i = \Big(\sigma_\max^{1/\rho} + \tfrac{i}{n-1}\big(\sigma_\min^{1/\rho} - \sigma_\max^{1/\rho}\big)\Big)^\rho, \quad i = 0, \dots, n-1;

    ``n = 1`` gives ``[sigma_max]``.

    Parameters
    ----------
    n : int
        Number of levels, :math:`\ge 1`.
    sigma_min, sigma_max : float, optional
        :math:`0 < \sigma_\min < \sigma_\max` (defaults 0.002 and 80).
    rho : float, optional
        :math:`\rho > 0` (default 7).

    Returns
    -------
    torch.Tensor
        float64 on the CPU, shape ``(n,)``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is out of range or ``sigma_min >= sigma_max``.
    """
    n = check_int("n", n, low=1)
    sigma_min = check_number("sigma_min", sigma_min, low=0, low_open=True)
    sigma_max = check_number("sigma_max", sigma_max, low=0, low_open=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be smaller than sigma_max, got sigma_min = {sigma_min} and sigma_max = {sigma_max}")
    rho = check_number("rho", rho, low=0, low_open=True)
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


@torch.no_grad()
def edm_sample(model, path, shape, sigmas, prediction: str = "eps", cond=None,
               generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, callback=None, *,
               method: str = "heun", churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
               s_noise: float = 1.0, device=None) -> torch.Tensor:
    r"""EDM sampling (Karras et al. 2022): the deterministic Heun sampler (Algorithm 1), with Algorithm 2's stochastic churn as an option.

    EDM works in :math:`\tilde x = x/\alpha` with noise level :math:`s = \sigma/\alpha`, where
    :math:`d\tilde x/ds = (\tilde x - D(\tilde x; s))/s` and :math:`D` is the denoiser :math:`\hat x_0`; any path and
    prediction. ``churn > 0`` adds Algorithm 2's noise: :math:`\gamma = \min(\text{churn}/N, \sqrt2 - 1)` where
    :math:`s_{t\min} \le s \le s_{t\max}`, :math:`\hat s = (1 + \gamma)\,s`.

    Parameters
    ----------
    model : callable
        A continuous-time model ``model(x, t, cond) -> prediction`` with float ``t`` of shape ``(B,)``
        (a discrete-time model goes through :func:`discrete_model`; guide with :func:`cfg`).
    path : GaussianPath
        The path, e.g. :func:`vp_path`, :func:`linear_path`, :func:`schedule_path`.
    shape : tuple of int
        The output shape ``(B, ...)``.
    sigmas : sequence of float or torch.Tensor
        The noise levels in :math:`\sigma/\alpha` of ``path``, positive and strictly decreasing (e.g.
        :func:`karras_sigmas`); a final 0 is appended.
    prediction : {"eps", "x0", "v", "score", "velocity"}, optional
        What ``model`` returns (default ``"eps"``).
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`x_T` and of the churn noise.
    x_T : torch.Tensor, optional
        :math:`\tilde x` at ``sigmas[0]`` (default ``sigmas[0]`` times :math:`\mathcal N(0, I)`).
    callback : callable, optional
        Called after every step with ``{"i", "sigma", "sigma_next", "x", "x0_hat"}``.
    method : {"heun", "euler"}, optional
        ``"heun"`` (Algorithm 1; :math:`2N - 1` calls for :math:`N` sigmas; default) or ``"euler"`` (:math:`N` calls).
    churn : float, optional
        :math:`S_\text{churn} \ge 0` (default 0: deterministic).
    s_tmin, s_tmax : float, optional
        The range of :math:`s` where churn applies (default everywhere).
    s_noise : float, optional
        :math:`S_\text{noise} \ge 0` (default 1).
    device : torch.device or str, optional
        Where to sample.

    Returns
    -------
    torch.Tensor
        :math:`\tilde x = x` at :math:`s = 0`, of shape ``shape``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``path`` is not a path, or a tensor argument is not a floating-point tensor.
    ValueError
        If an option is unknown or out of range, ``prediction`` cannot give :math:`x_0` where
        :math:`\alpha(t_\max) = 0`, a shape is wrong, or the model's output holds NaN or inf; also if
        ``sigmas`` is not positive and strictly decreasing, or churn raises the noise level above the
        path's range.
    """
    check_path(path)
    check_start(path, prediction)
    if method not in ("heun", "euler"):
        raise ValueError(f"method must be one of ('heun', 'euler'), got {method!r}")
    sig = check_tensor("sigmas", torch.as_tensor(sigmas, dtype=torch.float64)).cpu().reshape(-1)
    if sig.numel() < 1 or bool((sig <= 0).any()) or bool((sig[1:] >= sig[:-1]).any()):
        raise ValueError(f"sigmas must be positive and strictly decreasing (a final 0 is added), got {sig.tolist()[:6]}")
    churn = check_number("churn", churn, low=0)
    s_noise = check_number("s_noise", s_noise, low=0)
    N = sig.numel()
    gam = [min(churn / N, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0 for s in sig.tolist()]
    hat = sig * (1 + torch.tensor(gam, dtype=torch.float64))
    levels = sig.tolist() + [0.0]
    t_sig = path.t_of_ratio(sig).tolist()                 # sigmas outside the path's range: an error
    if bool((hat > path.sigma(path.t_max) / path.alpha(path.t_max)).any()):
        raise ValueError(f"churn = {churn} raises the noise level to {float(hat.max()):.4g}, above this path's "
                         f"largest sigma/alpha {float(path.sigma(path.t_max) / path.alpha(path.t_max)):.4g}: "
                         "lower churn or s_tmax, or start from smaller sigmas")
    t_hat = path.t_of_ratio(hat).tolist()
    co = lambda t: tuple(float(f(t)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))  # noqa: E731
    C_sig, C_hat = [co(t) for t in t_sig], [co(t) for t in t_hat]
    x, call = start(model, shape, prediction, cond, generator, x_T, callback, device, levels[0])

    def denoise(xt, t, c, i):
        """D(x~; s): the model sees x = alpha x~ at the t where sigma/alpha = s."""
        return to_pair(call(c[0] * xt, t, i), c[0] * xt, prediction, *c)[0]

    for i in range(N):
        s, s_next, s_hat = levels[i], levels[i + 1], float(hat[i])
        if gam[i] > 0:                                   # Algorithm 2, lines 5-6
            x = x + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        x0 = denoise(x, t_hat[i], C_hat[i], i)
        d = (x - x0) / s_hat                             # Algorithm 1, line 4
        x_new = x + (s_next - s_hat) * d
        if method == "heun" and s_next > 0:              # second-order correction (lines 6-8)
            d2 = (x_new - denoise(x_new, t_sig[i + 1], C_sig[i + 1], i)) / s_next
            x_new = x + (s_next - s_hat) * (d + d2) / 2
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_new, "x0_hat": x0})
        x = x_new
    call.finish()
    return x
