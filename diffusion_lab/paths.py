r"""Gaussian probability paths :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon`, :math:`t \in [0, 1]` (:math:`t = 0` data,
:math:`t = 1` noise), and the forward SDE :math:`dx = f(t)\,x\,dt + g(t)\,dw` that has the same marginals (Song et al.
2021, Eqs. 5 and 11; Kingma et al. 2021, Appendix A). A path is four functions of :math:`t`: :math:`\alpha`,
:math:`\sigma` and their time derivatives.

Every method takes ``t`` as a float or a tensor and returns a float64 tensor on the CPU: coefficients are
computed in float64 and cast by the caller (float64 never goes to an accelerator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import check_number, check_tensor
from .schedules import Schedule


def check_time(t, name: str = "t") -> torch.Tensor:
    """t (a number or a floating tensor) as float64 on the CPU, required to lie in [0, 1]."""
    if isinstance(t, torch.Tensor):
        check_tensor(name, t)
        t64 = t.detach().to("cpu", torch.float64)
    else:
        t64 = torch.tensor(check_number(name, t), dtype=torch.float64)
    if t64.numel() and (bool((t64 < 0).any()) or bool((t64 > 1).any())):
        raise ValueError(f"{name} must be in [0, 1] (0 = data, 1 = noise), got values from "
                         f"{float(t64.min()):.4g} to {float(t64.max()):.4g}")
    return t64


class GaussianPath:
    r"""Base class of the Gaussian paths :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon`, :math:`t \in [0, 1]`.

    Subclasses give four methods of ``t`` (a float or a tensor; each returns a float64 tensor on the CPU):
    ``alpha``, ``sigma`` and their time derivatives ``d_alpha``, ``d_sigma``. The forward SDE
    :math:`dx = f(t)\,x\,dt + g(t)\,dw` with the same marginals (:meth:`f`, :meth:`g2`) and the log-SNR
    follow from them.

    Attributes
    ----------
    t_min : float
        Where samplers stop and likelihoods start (a path may be singular at its ends).
    t_max : float
        Where samplers start and likelihoods stop.
    """

    t_min: float = 0.0
    t_max: float = 1.0

    def f(self, t) -> torch.Tensor:
        r"""Drift coefficient :math:`f(t) = \alpha'(t)/\alpha(t)` of :math:`dx = f x\,dt + g\,dw`.

        Parameters
        ----------
        t : float or torch.Tensor
            Times in :math:`[0, 1]`.

        Returns
        -------
        torch.Tensor
            float64 on the CPU, of ``t``'s shape.
        """
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t) -> torch.Tensor:
        r""":math:`g(t)^2 = \frac{d\sigma^2}{dt} - 2 f \sigma^2`, so that :math:`\operatorname{Var}[x_t \mid x_0] = \sigma(t)^2` (Kingma et al. 2021, Eq. 30).

        Parameters
        ----------
        t : float or torch.Tensor
            Times in :math:`[0, 1]`.

        Returns
        -------
        torch.Tensor
            float64 on the CPU, of ``t``'s shape.
        """
        s = self.sigma(t)
        return 2 * s * self.d_sigma(t) - 2 * self.f(t) * s ** 2

    def log_snr(self, t) -> torch.Tensor:
        r"""The log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha^2/\sigma^2)`, decreasing in :math:`t`.

        Parameters
        ----------
        t : float or torch.Tensor
            Times in :math:`[0, 1]`.

        Returns
        -------
        torch.Tensor
            float64 on the CPU, of ``t``'s shape.
        """
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_of_ratio(self, r) -> torch.Tensor:
        r"""The :math:`t` at which :math:`\sigma(t)/\alpha(t) = r` (EDM's :math:`\sigma`), by bisection in float64.

        Parameters
        ----------
        r : float or torch.Tensor
            Ratios in the path's range (:math:`r` increases with :math:`t`).

        Returns
        -------
        torch.Tensor
            float64 times, of ``r``'s shape.

        Raises
        ------
        ValueError
            If an ``r`` is outside the path's range of :math:`\sigma/\alpha` on :math:`[t_\min, t_\max]`.
        """
        r = torch.as_tensor(r, dtype=torch.float64).cpu()
        r_lo, r_hi = self.sigma(self.t_min) / self.alpha(self.t_min), self.sigma(self.t_max) / self.alpha(self.t_max)
        if bool((r < r_lo * (1 - 1e-6)).any()) or bool((r > r_hi * (1 + 1e-6)).any()):   # float32 sigmas pass
            raise ValueError(f"r must be in this path's range [{float(r_lo):.4g}, {float(r_hi):.4g}] "
                             f"(sigma/alpha between t_min and t_max), got {float(r.min()):.4g} to {float(r.max()):.4g}")
        lo, hi = torch.full_like(r, self.t_min), torch.full_like(r, self.t_max)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.sigma(mid) / self.alpha(mid) > r
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        return (lo + hi) / 2


@dataclass(frozen=True)
class VPPath(GaussianPath):
    r"""The variance-preserving path (Song et al. 2021b, Eq. 32).

    :math:`\beta(t) = \beta_\min + t(\beta_\max - \beta_\min)`, :math:`\alpha = \exp(-\tfrac12\int_0^t \beta)`,
    :math:`\sigma = \sqrt{1 - \alpha^2}`; :math:`f = -\beta/2`, :math:`g^2 = \beta`. :math:`\sigma'(0)` is
    infinite, so samplers stop at ``t_min`` = 1e-3 (Song et al.'s :math:`\epsilon`) and denoise.

    Parameters
    ----------
    beta_min, beta_max : float
        :math:`0 \le \beta_\min \le \beta_\max`, :math:`\beta_\max > 0` (defaults 0.1 and 20).
    t_min : float
        In :math:`(0, 1)` (default 1e-3).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a parameter is out of range.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3

    def __post_init__(self):
        check_number("beta_min", self.beta_min, low=0)
        check_number("beta_max", self.beta_max, low=self.beta_min)
        if self.beta_max <= 0:
            raise ValueError(f"beta_max must be positive (else nothing is noised), got {self.beta_max}")
        check_number("t_min", self.t_min, low=0, high=1, low_open=True, high_open=True)

    def beta(self, t):
        r""":math:`\beta(t)`.
        Parameters
        ----------
        t : float or torch.Tensor
            Times in :math:`[0, 1]`.

        Returns
        -------
        torch.Tensor
            float64 on the CPU, of ``t``'s shape.
        """
        return self.beta_min + check_time(t) * (self.beta_max - self.beta_min)

    def _int_beta(self, t):
        t = check_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def alpha(self, t):
        return torch.exp(-0.5 * self._int_beta(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._int_beta(t)))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return 0.5 * self.beta(t) * self.alpha(t) ** 2 / self.sigma(t)


@dataclass(frozen=True)
class VEPath(GaussianPath):
    r"""The variance-exploding path (Song et al. 2021b, Eq. 30).

    :math:`\alpha = 1`, :math:`\sigma(t) = \sigma_\min (\sigma_\max/\sigma_\min)^t`; :math:`f = 0`,
    :math:`g^2 = 2\sigma^2 \log(\sigma_\max/\sigma_\min)`. Not singular; the prior :math:`\mathcal N(0, \sigma_\max^2 I)`
    ignores :math:`x_0`.

    Parameters
    ----------
    sigma_min, sigma_max : float
        :math:`0 < \sigma_\min < \sigma_\max` (defaults 0.01 and 50).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a parameter is out of range.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        check_number("sigma_min", self.sigma_min, low=0, low_open=True)
        if not self.sigma_min < check_number("sigma_max", self.sigma_max, low=0, low_open=True):
            raise ValueError(f"sigma_min must be smaller than sigma_max, got sigma_min = {self.sigma_min} "
                             f"and sigma_max = {self.sigma_max}")

    def alpha(self, t):
        return torch.ones_like(check_time(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** check_time(t)

    def d_alpha(self, t):
        return torch.zeros_like(check_time(t))

    def d_sigma(self, t):
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)


@dataclass(frozen=True)
class LinearPath(GaussianPath):
    r"""The flow-matching / rectified-flow path :math:`\alpha = 1 - t`, :math:`\sigma = t` (Lipman et al. 2023; Liu et al. 2023).

    :math:`\alpha(1) = 0`, so an :math:`\epsilon`- or score-model cannot give :math:`x_0` at :math:`t = 1`: use
    ``t_max < 1`` for those.

    Parameters
    ----------
    t_max : float
        Where samplers start, in :math:`(0, 1]` (default 1).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``t_max`` is out of range.
    """

    t_max: float = 1.0

    def __post_init__(self):
        check_number("t_max", self.t_max, low=0, high=1, low_open=True)

    def alpha(self, t):
        return 1 - check_time(t)

    def sigma(self, t):
        return check_time(t).clone()

    def d_alpha(self, t):
        return -torch.ones_like(check_time(t))

    def d_sigma(self, t):
        return torch.ones_like(check_time(t))

    def t_of_ratio(self, r) -> torch.Tensor:
        """Closed form of GaussianPath.t_of_ratio: sigma / alpha = t / (1 - t) = r gives t = r / (1 + r)."""
        r = torch.as_tensor(r, dtype=torch.float64).cpu()
        r_hi = self.t_max / (1 - self.t_max) if self.t_max < 1 else math.inf
        if bool((r < 0).any()) or bool((r > r_hi * (1 + 1e-6)).any()):
            raise ValueError(f"r must be in this path's range [0, {r_hi:.4g}] (sigma/alpha up to t_max = {self.t_max}), "
                             f"got {float(r.min()):.4g} to {float(r.max()):.4g}")
        return torch.where(torch.isinf(r), torch.ones_like(r), r / (1 + r)).clamp(max=self.t_max)


@dataclass(frozen=True, eq=False)
class SchedulePath(GaussianPath):
    r"""The path of a discrete schedule: integer timestep :math:`n` sits at :math:`t = (n + 1)/T`, where :math:`\alpha(t)^2 = \bar\alpha_n`.

    In between, :math:`\log\bar\alpha` is linear in :math:`t`, i.e. a VP SDE with the piecewise-constant
    :math:`\beta(t) = -T\log(1 - \beta_n)` on :math:`(n/T, (n + 1)/T]`. ``t_min`` = :math:`1/T` (:math:`n = 0`).

    Parameters
    ----------
    schedule : Schedule
        The discrete schedule.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`Schedule`.
    """

    schedule: Schedule

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a diffusion_lab Schedule, got {type(self.schedule).__name__}")
        rates = -torch.log1p(-self.schedule.betas) * self.schedule.T                        # beta(t) per interval
        object.__setattr__(self, "_rates", rates)
        object.__setattr__(self, "_cum", torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(rates, 0) / self.schedule.T]))

    @property
    def t_min(self) -> float:
        """The time :math:`1/T` of timestep 0."""
        return 1.0 / self.schedule.T

    def beta(self, t):
        r"""The piecewise-constant :math:`\beta(t)`.
        Parameters
        ----------
        t : float or torch.Tensor
            Times in :math:`[0, 1]`.

        Returns
        -------
        torch.Tensor
            float64 on the CPU, of ``t``'s shape.
        """
        T = self.schedule.T
        n = (torch.ceil(check_time(t) * T) - 1).clamp(0, T - 1).long()
        return self._rates[n]

    def _int_beta(self, t):
        t, T = check_time(t), self.schedule.T
        n = torch.floor(t * T).clamp(0, T - 1).long()
        return self._cum[n] + (t - n.double() / T) * self._rates[n]

    alpha = VPPath.alpha
    sigma = VPPath.sigma
    d_alpha = VPPath.d_alpha
    d_sigma = VPPath.d_sigma

    def timestep(self, n) -> torch.Tensor:
        """The continuous time :math:`t = (n + 1)/T` of integer timestep :math:`n`.

        Parameters
        ----------
        n : int or torch.Tensor
            Timesteps in ``[0, T-1]``.

        Returns
        -------
        torch.Tensor
            float64 times.
        """
        return (torch.as_tensor(n, dtype=torch.float64) + 1) / self.schedule.T


def vp_path(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> VPPath:
    r"""A :class:`VPPath` (Song et al. 2021b's VP SDE), the default continuous-time diffusion.

    Parameters
    ----------
    beta_min, beta_max : float, optional
        The linear :math:`\beta(t)`'s ends (defaults 0.1 and 20).
    t_min : float, optional
        Where samplers stop (default 1e-3).

    Returns
    -------
    VPPath

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a parameter is out of range.
    """
    return VPPath(beta_min, beta_max, t_min)


def ve_path(sigma_min: float = 0.01, sigma_max: float = 50.0) -> VEPath:
    r"""A :class:`VEPath` (Song et al. 2021b's VE SDE).

    Parameters
    ----------
    sigma_min, sigma_max : float, optional
        Defaults 0.01 and 50.

    Returns
    -------
    VEPath

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If :math:`0 < \sigma_\min < \sigma_\max` fails.
    """
    return VEPath(sigma_min, sigma_max)


def linear_path(t_max: float = 1.0) -> LinearPath:
    r"""A :class:`LinearPath` :math:`x_t = (1 - t)\,x_0 + t\,\epsilon` (flow matching, rectified flow).

    Parameters
    ----------
    t_max : float, optional
        Where samplers start (default 1).

    Returns
    -------
    LinearPath

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``t_max`` is not in :math:`(0, 1]`.
    """
    return LinearPath(t_max)


def schedule_path(schedule: Schedule) -> SchedulePath:
    """The :class:`SchedulePath` of a discrete schedule, on which timestep :math:`n` sits at :math:`t = (n + 1)/T`.

    Parameters
    ----------
    schedule : Schedule
        The discrete schedule.

    Returns
    -------
    SchedulePath

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`Schedule`.
    """
    return SchedulePath(schedule)
