r"""Time grids for the continuous-time samplers: where the steps go between :math:`t_\max` and 0.

Uniform in :math:`t`, quadratic in :math:`t` (Song et al. 2021a's "quad" DDIM spacing), uniform in log-SNR
(Lu et al. 2022a, Sec. 3.3) and Karras et al.'s :math:`\rho`-spacing of the noise level :math:`\sigma / \alpha`
(Karras et al. 2022, Eq. 5).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_int, check_number

#: The time grids :func:`sampling_times` knows (its ``spacing`` argument).
SPACINGS = ("uniform", "quadratic", "log_snr", "karras")


def sampling_times(path, steps: int, spacing: str = "uniform", rho: float = 7.0) -> list[float]:
    r"""``steps + 1`` strictly decreasing times from ``path.t_max`` to 0, as Python floats computed in float64.

    Parameters
    ----------
    path : GaussianPath
        The path (:func:`vp_path`, :func:`ve_path`, :func:`linear_path`, :func:`schedule_path`).
    steps : int
        Number of steps (:math:`\geq 1`). The first ``steps`` times run from ``t_max`` to ``t_min``; the last
        step goes to :math:`t = 0` (the samplers' denoising step) when ``t_min > 0``, as in ``ode.time_grid``.
    spacing : {"uniform", "quadratic", "log_snr", "karras"}, optional
        The grid (default ``"uniform"``). ``"uniform"``: equal steps in :math:`t`. ``"quadratic"``:
        :math:`t = t_\min + (t_\max - t_\min)\,u^2` for :math:`u` uniform on :math:`[0, 1]`, so the steps
        shrink towards the data. ``"log_snr"``: equal steps in :math:`\lambda = \log(\alpha^2 / \sigma^2)`.
        ``"karras"``: the noise level :math:`s = \sigma / \alpha` spaced so that :math:`s^{1/\rho}` is
        uniform (Karras et al. 2022, Eq. 5). With a single step every spacing gives ``[t_max, 0]``.
    rho : float, optional
        Karras' exponent :math:`\rho > 0` (default 7, as in EDM); used by ``"karras"`` only.

    Returns
    -------
    list of float
        ``steps + 1`` times, ``ts[0] = t_max``, ``ts[-1] = 0``.

    Raises
    ------
    TypeError
        If ``steps`` is not an integer or ``rho`` is not a real number.
    ValueError
        For an unknown ``spacing``, ``steps < 1``, ``rho <= 0``, or ``"log_snr"`` / ``"karras"`` on a path
        whose :math:`\sigma / \alpha` is infinite at ``t_max`` (:math:`\alpha(t_\max) = 0`, e.g.
        :func:`linear_path`) or zero at ``t_min`` (:math:`\sigma(t_\min) = 0`: the linear path, whose
        ``t_min`` is 0).
    """
    steps = check_int("steps", steps, low=1)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    rho = check_number("rho", rho, low=0, low_open=True)
    n = steps if path.t_min > 0 else steps + 1        # times from t_max to t_min inclusive
    t_hi, t_lo = float(path.t_max), float(path.t_min)
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)   # 1 at t_max, 0 at t_min
    if spacing == "uniform":                          # as ode.time_grid, bit for bit
        ts = torch.linspace(t_hi, t_lo, n, dtype=torch.float64)
    elif spacing == "quadratic":
        ts = t_lo + (t_hi - t_lo) * u ** 2
    else:
        a_hi, s_hi = float(path.alpha(t_hi)), float(path.sigma(t_hi))
        a_lo, s_lo = float(path.alpha(t_lo)), float(path.sigma(t_lo))
        if a_hi == 0 or s_lo == 0:
            raise ValueError(f"spacing {spacing!r} needs a finite, positive sigma/alpha at both ends, but this path has "
                             f"sigma/alpha = {s_hi / a_hi if a_hi else math.inf:.4g} at t_max = {t_hi} and "
                             f"{s_lo / a_lo:.4g} at t_min = {t_lo}; use 'uniform' or 'quadratic' on this path")
        r_hi, r_lo = s_hi / a_hi, s_lo / a_lo
        if spacing == "log_snr":                        # lambda = -2 log r, uniform between its ends
            ratios = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u)
        else:
            ratios = (r_lo ** (1 / rho) + (r_hi ** (1 / rho) - r_lo ** (1 / rho)) * u) ** rho
        ts = path.t_of_ratio(ratios.clamp(r_lo, r_hi))
        ts[0], ts[-1] = t_hi, t_lo                      # the ends exactly, not to bisection accuracy
    out = ts.tolist()
    if path.t_min > 0:
        out.append(0.0)
    if n == 1:                                          # one step: straight to the data
        out = [t_hi, 0.0]
    return out
