r"""Noise schedules: linear (Ho et al. 2020, Sec. 4) and cosine (Nichol & Dhariwal 2021, Eq. 17).

Index convention (as in diffusers): integer ``t`` in ``[0, T-1]`` and
``alpha_bars[t]`` :math:`= \prod_{s \le t}` ``alphas[s]``, which is the paper's :math:`\bar\alpha_{t+1}`.
Everything is computed in float64; ``Schedule.at`` casts to the caller's dtype and device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import check_int, check_number, check_tensor


@dataclass(frozen=True)
class Schedule:
    r"""A variance schedule :math:`\beta_0, \dots, \beta_{T-1}` and the tables derived from it.

    Timestep ``t`` is an index in ``[0, T-1]``; ``alpha_bars[t]`` :math:`= \prod_{s \le t} (1 - \beta_s)`
    is the paper's :math:`\bar\alpha_{t+1}` (Ho et al. 2020 count from 1; diffusers counts as here).
    ``betas``, ``alphas`` and ``alpha_bars`` are float64 tensors of length ``T`` on the CPU; :meth:`at`
    casts to the caller's dtype and device.

    Parameters
    ----------
    betas : torch.Tensor
        The :math:`\beta_t`, shape ``(T,)``, each in :math:`(0, 1)`; stored as float64 on the CPU.
    name : str, optional
        A label (``"linear"``, ``"cosine"``; default ``"custom"``).

    Raises
    ------
    TypeError
        If ``betas`` is not a floating-point tensor.
    ValueError
        If ``betas`` is not 1-D and non-empty, holds NaN or inf, or has an entry outside :math:`(0, 1)`.
    """

    betas: torch.Tensor
    name: str = "custom"

    def __post_init__(self):
        b = self.betas
        check_tensor("betas", b)
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a 1-D tensor with at least one entry, got shape {tuple(b.shape)}")
        if bool((b <= 0).any()) or bool((b >= 1).any()):
            raise ValueError(f"every beta must be in (0, 1), got min {b.min().item():.3g} and max {b.max().item():.3g}")
        object.__setattr__(self, "betas", b.detach().to("cpu", torch.float64))

    @property
    def T(self) -> int:
        """The number of timesteps :math:`T`."""
        return int(self.betas.numel())

    @property
    def alphas(self) -> torch.Tensor:
        r""":math:`\alpha_t = 1 - \beta_t`, float64, shape ``(T,)``."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        r""":math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`, float64, shape ``(T,)``."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alpha_bars_prev(self) -> torch.Tensor:
        r""":math:`\bar\alpha_{t-1}`, with :math:`\bar\alpha_{-1} = 1` (no noise before the first step)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])

    @property
    def posterior_variances(self) -> torch.Tensor:
        r""":math:`\tilde\beta_t = \beta_t (1 - \bar\alpha_{t-1}) / (1 - \bar\alpha_t)` (Ho et al. 2020, Eq. 7); 0 at ``t = 0``."""
        return self.betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)

    @property
    def snr(self) -> torch.Tensor:
        r"""Signal-to-noise ratio :math:`\bar\alpha_t / (1 - \bar\alpha_t)`."""
        return self.alpha_bars / (1.0 - self.alpha_bars)

    def check_t(self, t, name: str = "t", low: int = 0) -> torch.Tensor:
        """Validate integer timesteps and return them as a long tensor.

        Parameters
        ----------
        t : int or torch.Tensor
            An int or an integer tensor of timesteps.
        name : str, optional
            The argument's name in error messages.
        low : int, optional
            The smallest allowed timestep (default 0); the largest is ``T - 1``.

        Returns
        -------
        torch.Tensor
            ``t`` as a ``torch.long`` tensor.

        Raises
        ------
        TypeError
            If ``t`` is not an int or holds non-integer values.
        ValueError
            If a timestep is outside ``[low, T - 1]``.
        """
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer timesteps, got dtype {t.dtype}")
            if t.numel() and (int(t.min()) < low or int(t.max()) > self.T - 1):
                raise ValueError(f"{name} must be in [{low}, {self.T - 1}] (T = {self.T}), got values from {int(t.min())} to {int(t.max())}")
            return t.long()
        return torch.tensor(check_int(name, t, low=low, high=self.T - 1))

    def at(self, values: torch.Tensor, t, like: torch.Tensor, dtype=None) -> torch.Tensor:
        r"""Gather ``values[t]`` and shape it to broadcast against ``like``.

        Form differences such as :math:`1 - \bar\alpha_t` on the float64 tables before gathering: in
        float32, :math:`1 - \bar\alpha_0 = 10^{-4}` keeps only about 3 significant digits.

        Parameters
        ----------
        values : torch.Tensor
            A table of shape ``(T,)``, e.g. ``schedule.alpha_bars``.
        t : int or torch.Tensor
            One timestep, or one per batch element, shape ``(B,)``.
        like : torch.Tensor
            A tensor of shape ``(B, ...)`` whose device and dtype the result takes.
        dtype : torch.dtype, optional
            Overrides ``like``'s dtype.

        Returns
        -------
        torch.Tensor
            Shape ``(B, 1, ..., 1)`` (as many singleton dimensions as ``like`` has) for tensor ``t``, a
            scalar tensor for int ``t``, on ``like``'s device.

        Raises
        ------
        TypeError
            If an argument is not of the type documented above.
        ValueError
            If ``t`` is not a valid timestep (see :meth:`check_t`), or has a number of entries other than ``B``.
        """
        out = gather(values, t, like, dtype)
        if out.ndim == 0:
            return out
        if out.shape[0] != like.shape[0]:
            raise ValueError(f"t has {out.shape[0]} entries but the batch has {like.shape[0]}")
        return out.reshape(-1, *([1] * (like.ndim - 1)))


def to_working(values: torch.Tensor, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Cast (on the CPU) to like's dtype (or `dtype`), then move to like's device: float64 never
    reaches the device (Apple's MPS has none). A host-to-device copy needs no sync: non_blocking."""
    return values.to(dtype or like.dtype).to(like.device, non_blocking=True)


def gather(values: torch.Tensor, t, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """values[t] (values: a float64 table on the CPU) in like's dtype on like's device, unchecked and
    without a device-to-host sync: integer t on the CPU is gathered there, then cast and moved; t on an
    accelerator gathers from the cast table moved there (the same numbers: a cast commutes with a gather)."""
    t = t if isinstance(t, torch.Tensor) else torch.tensor(t)
    if t.device.type == "cpu":
        return to_working(values[t.long()], like, dtype)
    return to_working(values, like, dtype).to(t.device)[t.long()].to(like.device)


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    r"""Betas linearly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4).

    Parameters
    ----------
    T : int, optional
        Number of timesteps, at least 1 (default 1000).
    beta_start, beta_end : float, optional
        :math:`\beta_0` and :math:`\beta_{T-1}`, each in :math:`(0, 1)` (defaults :math:`10^{-4}` and 0.02).

    Returns
    -------
    Schedule
        Named ``"linear"``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``T`` is not an integer :math:`\ge 1` or a beta is not a number in :math:`(0, 1)`.
    """
    T = check_int("T", T, low=1)
    beta_start = check_number("beta_start", beta_start, low=0, high=1, low_open=True, high_open=True)
    beta_end = check_number("beta_end", beta_end, low=0, high=1, low_open=True, high_open=True)
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    r"""The cosine schedule (Nichol & Dhariwal 2021, Eq. 17; diffusers' ``"squaredcos_cap_v2"``).

    .. math::

       \bar\alpha(t) = \frac{f(t)}{f(0)}, \qquad f(t) = \cos^2\!\Big(\frac{t/T + s}{1 + s}\,\frac{\pi}{2}\Big),

    with :math:`\beta_t = 1 - \bar\alpha(t+1)/\bar\alpha(t)` clipped at ``max_beta``.

    Parameters
    ----------
    T : int, optional
        Number of timesteps, at least 1 (default 1000).
    s : float, optional
        The offset :math:`s \ge 0` (default 0.008).
    max_beta : float, optional
        Upper clip for the betas, in :math:`(0, 1)` (default 0.999).

    Returns
    -------
    Schedule
        Named ``"cosine"``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is not a number in its range.
    """
    T = check_int("T", T, low=1)
    s = check_number("s", s, low=0)
    max_beta = check_number("max_beta", max_beta, low=0, high=1, low_open=True, high_open=True)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(min=1e-12, max=max_beta)
    return Schedule(betas, name="cosine")


def make_schedule(name: str = "linear", T: int = 1000) -> Schedule:
    """A schedule by name, with its default parameters, for ``T`` steps.

    Parameters
    ----------
    name : {"linear", "cosine"}, optional
        Which schedule (default ``"linear"``): :func:`linear_schedule` or :func:`cosine_schedule`.
    T : int, optional
        Number of timesteps, at least 1 (default 1000).

    Returns
    -------
    Schedule

    Raises
    ------
    ValueError
        If ``name`` is not ``"linear"`` or ``"cosine"``, or ``T < 1``.
    TypeError
        If ``T`` is not an integer.
    """
    if name == "linear":
        # Ho et al.'s betas are for T = 1000; scale them by 1000 / T (as Nichol & Dhariwal 2021 do)
        # so that alpha_bar_T is close to 0 for any T.
        T = check_int("T", T, low=1)
        scale = 1000 / T
        return linear_schedule(T, min(1e-4 * scale, 0.5), min(0.02 * scale, 0.999))
    if name == "cosine":
        return cosine_schedule(T)
    raise ValueError(f"schedule name must be 'linear' or 'cosine', got {name!r}")
