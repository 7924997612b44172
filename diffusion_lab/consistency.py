r"""Consistency models (Song et al. 2023): the consistency function of the probability-flow ODE, its boundary-condition
parameterisation :math:`f = c_\text{skip}\, x + c_\text{out} F` (Song et al. 2023, Eq. 7 and Appendix C, in EDM's
units), one-step and multistep consistency sampling (Algorithm 1), and the exact consistency function of a Gaussian
mixture."""
from __future__ import annotations

import math

import torch

from ._checks import check_int, check_number, check_tensor, randn
from ._sampling import check_path, start
from .edm import karras_sigmas
from .mixtures import GaussianMixture
from .paths import check_time

METHODS = ("heun", "rk4")


def check_consistency_path(path):
    """A path on which x / alpha(t) is finite over [t_min, t_max] (the parameterisation divides by alpha)."""
    check_path(path)
    if not float(path.alpha(path.t_max)) > 0:
        raise ValueError(f"path must have alpha(t_max) > 0 for a consistency model (it works in x / alpha), got "
                         f"alpha({path.t_max}) = {float(path.alpha(path.t_max))}; use e.g. linear_path(t_max=0.999)")
    return path


def _ratio(path, t64):
    """EDM's noise level r(t) = sigma(t) / alpha(t) (float64)."""
    return path.sigma(t64) / path.alpha(t64)


class ConsistencyModel(torch.nn.Module):
    """A consistency model f(x, t, cond) on `path` built on a network F(x, t, cond) that takes float t in [0, 1]
    (e.g. dl.make_velocity_net). With r = sigma / alpha, r_min = r(t_min), a_min = alpha(t_min) and s = sigma_data,

    .. math::

        f(x, t) &= a_\\min \\Big[c_{skip}(t) \\frac{x}{\\alpha(t)} + c_{out}(t) F\\big(c_{in}(t) \\frac{x}{\\alpha(t)}, t\\big)\\Big],

        c_{skip} &= \\frac{s^2}{(r - r_\\min)^2 + s^2}, \\qquad c_{in} = \\frac{1}{\\sqrt{s^2 + r^2}},

        c_{out} &= \\frac{s (r - r_\\min)}{\\sqrt{s^2 + r^2}}

    (Song et al. 2023, Appendix C, written for any Gaussian path). At t = t_min, c_skip = 1 and c_out = 0, so
    f(x, t_min) = x exactly, whatever the weights: the boundary condition holds by construction.

    Parameters
    ----------
    net : torch.nn.Module
        The free-form network F(x, t, cond) -> tensor of x's shape.
    path : GaussianPath
        The path whose probability-flow ODE f solves; alpha(t_max) must be > 0.
    sigma_data : float
        The data's standard deviation s (EDM's default 0.5).

    Raises
    ------
    TypeError
        If net is not a torch.nn.Module or path is not a diffusion_lab path.
    ValueError
        If sigma_data <= 0 or alpha(t_max) = 0.
    """

    def __init__(self, net: torch.nn.Module, path, sigma_data: float = 0.5):
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"net must be a torch.nn.Module F(x, t, cond), got {type(net).__name__}")
        self.net = net
        self.path = check_consistency_path(path)
        self.sigma_data = check_number("sigma_data", sigma_data, low=0, low_open=True)
        self.config = dict(getattr(net, "config", {}), sigma_data=self.sigma_data)

    def times(self, t, like: torch.Tensor) -> torch.Tensor:
        """t as float64 (B,) on the CPU, checked to lie in [t_min, t_max]; t_min and t_max rounded to like's
        dtype count as t_min and t_max (so a float32 t = t_min gives f = x exactly)."""
        path = self.path
        t64 = check_time(t).reshape(-1).expand(like.shape[0]).clone()
        for end in (path.t_min, path.t_max):
            t64[t64 == float(torch.tensor(end, dtype=like.dtype))] = end
        if bool((t64 < path.t_min).any()) or bool((t64 > path.t_max).any()):
            raise ValueError(f"t must be in [t_min, t_max] = [{path.t_min:.4g}, {path.t_max:.4g}] of the model's path, "
                             f"got values from {float(t64.min()):.4g} to {float(t64.max()):.4g}")
        return t64

    def coefficients(self, t, like: torch.Tensor):
        """(c_skip a_min / alpha, c_out a_min, c_in / alpha), computed in float64, cast to like's dtype and device,
        each of shape (B, 1, ...)."""
        path, s = self.path, self.sigma_data
        t64 = self.times(t, like)
        a, r = path.alpha(t64), _ratio(path, t64)
        a_min, r_min = float(path.alpha(path.t_min)), float(_ratio(path, torch.tensor(path.t_min, dtype=torch.float64)))
        c = torch.stack([a_min * s ** 2 / ((r - r_min) ** 2 + s ** 2) / a,        # skip, boundary: a_min / a_min = 1
                         a_min * s * (r - r_min) / torch.sqrt(s ** 2 + r ** 2),   # out, boundary: 0
                         1 / (a * torch.sqrt(s ** 2 + r ** 2))])                   # in
        c = c.to(like.dtype).to(like.device).reshape(3, -1, *([1] * (like.ndim - 1)))
        return c[0], c[1], c[2]

    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        """f(x, t, cond): the network's output mixed with x by the coefficients above.

        Parameters
        ----------
        x : torch.Tensor
            A batch (B, ...) of states on the path at time t.
        t : float or torch.Tensor
            The time, a number or one per row (B,), in [t_min, t_max] of the path.
        cond : optional
            Passed on to the network.

        Returns
        -------
        torch.Tensor
            The estimate of the clean data, x's shape and dtype; x itself at t = t_min.

        Raises
        ------
        ValueError
            If t lies outside [t_min, t_max].
        """
        skip, out, c_in = self.coefficients(t, x)
        if isinstance(t, torch.Tensor):       # the net computes with t on x's device (the trainers pass CPU times)
            t = t.to(x.device, non_blocking=True)
        return skip * x + out * self.net(c_in * x, t, cond)


def consistency_times(path, steps: int) -> list[float]:
    r"""`steps` descending times for multistep sampling.

    The times are :math:`t_\text{max}`, then the first steps - 1 interior points of a Karras grid
    (:math:`\rho = 7`) of steps + 1 noise levels :math:`r = \sigma / \alpha` from :math:`r(t_\text{max})` down to
    :math:`r(t_\text{min})`, mapped back to t.

    Parameters
    ----------
    path : GaussianPath
        The path; it needs :math:`\alpha(t_\text{max}) > 0`.
    steps : int
        Number of times, >= 1.

    Returns
    -------
    list of float
        The ``steps`` times, descending, the first one ``path.t_max``.

    Raises
    ------
    TypeError
        If ``path`` is not a diffusion_lab path or ``steps`` is not an integer.
    ValueError
        If ``steps`` < 1 or :math:`\alpha(t_\text{max})` is not positive on the path.
    """
    check_consistency_path(path)
    steps = check_int("steps", steps, low=1)
    r_lo, r_hi = (float(_ratio(path, torch.tensor(t, dtype=torch.float64))) for t in (path.t_min, path.t_max))
    r = karras_sigmas(steps + 1, max(r_lo, 1e-12 * r_hi), r_hi)[1:steps]
    return [float(path.t_max)] + [float(t) for t in path.t_of_ratio(r)]


@torch.no_grad()
def consistency_sample(model, path, shape, steps: int = 1, cond=None, generator: torch.Generator | None = None,
                       x_T: torch.Tensor | None = None, callback=None, *, times=None, device=None) -> torch.Tensor:
    """One-step or multistep consistency sampling (Song et al. 2023, Algorithm 1).

    x = f(x_T, t_max); then for each further time tau: re-noise x (a sample at t_min) to tau,
    :math:`x_\\tau = k x + \\sqrt{\\sigma(\\tau)^2 - k^2 \\sigma(t_\\min)^2}\\, z` with
    :math:`k = \\alpha(\\tau) / \\alpha(t_\\min)`, so that x_tau has the marginal of the path at tau, and jump again,
    x = f(x_tau, tau). Network calls: `steps`.

    Parameters
    ----------
    model : callable
        model(x, t, cond) -> f(x, t), float t of shape (B,), e.g. a ConsistencyModel.
    path : GaussianPath
        The path the model was trained on.
    shape : tuple of int
        (B, ...), the shape of the batch of samples.
    steps : int
        Network calls, >= 1.
    cond : torch.Tensor, optional
        Integer labels (B,) for a class-conditional model (wrap it with dl.cfg to guide).
    generator : torch.Generator, optional
        Draws x_T ~ sigma(t_max) N(0, I) (unless given) and the re-noising noise.
    x_T : torch.Tensor, optional
        The start, of shape `shape`, on the model's device.
    callback : callable, optional
        Gets {"i", "t", "x"} after each jump.
    times : sequence of float, optional
        The `steps` descending jump times in (t_min, t_max]; default consistency_times(path, steps).

    Returns
    -------
    torch.Tensor
        Samples of shape `shape` (at t_min of the path).

    Raises
    ------
    TypeError
        For a model that is not callable, or times, shape, cond, generator or x_T of the wrong type.
    ValueError
        For steps < 1, bad times, shape, cond, generator or x_T; a model output of the wrong shape or not finite.
    """
    check_consistency_path(path)
    steps = check_int("steps", steps, low=1)
    if times is None:
        times = consistency_times(path, steps)
    else:
        times = [check_number("times entry", t, low=path.t_min, high=path.t_max, low_open=True) for t in times]
        if len(times) != steps or any(b >= a for a, b in zip(times, times[1:])):
            raise ValueError(f"times must be {steps} (= steps) strictly decreasing times in (t_min, t_max], got {times}")
    x, call = start(model, shape, "x0", cond, generator, x_T, callback, device, float(path.sigma(times[0])))
    a_min, s_min = float(path.alpha(path.t_min)), float(path.sigma(path.t_min))
    for i, tau in enumerate(times):
        if i > 0:                                  # Algorithm 1: re-noise from t_min to tau
            k = float(path.alpha(tau)) / a_min
            std = math.sqrt(max(float(path.sigma(tau)) ** 2 - (k * s_min) ** 2, 0.0))
            x = k * x + std * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        x = call(x, tau, i)
        if callback is not None:
            callback({"i": i, "t": tau, "x": x})
    call.finish()
    return x


def transport(mixture: GaussianMixture, path, x: torch.Tensor, t, t_end: float, steps: int = 100,
              method: str = "rk4", cond=None) -> torch.Tensor:
    """Solve the probability-flow ODE dx/dt = alpha' E[x0 | x_t] + sigma' E[eps | x_t] of `mixture` on `path` from
    (x, t) to t_end, in float64 on the CPU, with `steps` uniform steps per sample (t may differ between samples)
    of Heun's method or classical RK4. Returns float64 (B, D)."""
    velocity = mixture.path_model(path, "velocity")
    x = x.detach().to("cpu", torch.float64)
    t64 = check_time(t).reshape(-1).expand(x.shape[0])
    h = ((t_end - t64) / steps)[:, None]                                # (B, 1), negative going towards the data

    def v(y, s):
        return velocity(y, s.reshape(-1).clamp(0, 1), cond)
    for k in range(steps):
        s = t64 + k * h[:, 0]
        k1 = v(x, s)
        if method == "heun":
            x = x + h / 2 * (k1 + v(x + h * k1, s + h[:, 0]))
        else:
            k2 = v(x + h / 2 * k1, s + h[:, 0] / 2)
            k3 = v(x + h / 2 * k2, s + h[:, 0] / 2)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + v(x + h * k3, s + h[:, 0]))
    return x


@torch.no_grad()
def exact_consistency_function(mixture: GaussianMixture, path, x: torch.Tensor, t, steps: int = 100,
                               method: str = "rk4", cond=None) -> torch.Tensor:
    r"""The exact consistency function of a Gaussian mixture: where the probability-flow ODE under the mixture's
    exact velocity takes (x, t) at :math:`t = t_\text{min}` (Song et al. 2023, Sec. 3:
    :math:`f(x_t, t) = x_{t_\text{min}}`).

    Parameters
    ----------
    mixture : GaussianMixture
        The data distribution; its posterior means give the exact velocity.
    path : GaussianPath
        The path x_t = alpha(t) x_0 + sigma(t) eps.
    x : torch.Tensor
        Points x_t of shape (B, D).
    t : float or torch.Tensor
        Their times in [t_min, t_max], a number or shape (B,).
    steps : int
        Solver steps per sample (uniform in t from t to t_min), >= 1.
    method : str
        "rk4" (classical Runge-Kutta, 4 velocity evaluations a step) or "heun" (2).
    cond : torch.Tensor, optional
        Labels (B,) for a labelled mixture (the ODE of p(x | c)).

    Returns
    -------
    torch.Tensor
        f(x, t) of shape (B, D), in x's dtype and on x's device.

    Raises
    ------
    TypeError
        If mixture is not a GaussianMixture, path not a path, x not a floating tensor.
    ValueError
        If steps < 1, method unknown, x not (B, D) or not finite, t outside [t_min, t_max] or of the wrong shape.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a diffusion_lab GaussianMixture, got {type(mixture).__name__}")
    check_path(path)
    check_tensor("x", x)
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (B, {mixture.dim}), got {tuple(x.shape)}")
    steps = check_int("steps", steps, low=1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    t64 = check_time(t)
    if t64.ndim > 1 or (t64.ndim == 1 and t64.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a number or have shape ({x.shape[0]},), got {tuple(t64.shape)}")
    if bool((t64 < path.t_min).any()) or bool((t64 > path.t_max).any()):
        raise ValueError(f"t must be in [t_min, t_max] = [{path.t_min:.4g}, {path.t_max:.4g}], got values from "
                         f"{float(t64.min()):.4g} to {float(t64.max()):.4g}")
    out = transport(mixture, path, x, t64, path.t_min, steps, method, cond)
    return out.to(x.dtype).to(x.device)
