r"""Langevin dynamics and score matching: the unadjusted Langevin sampler, annealed Langevin
dynamics (Song & Ermon 2019, Algorithm 1), denoising score matching (Vincent 2011) with
:math:`\lambda(\sigma) = \sigma^2`, and the bridge :math:`\epsilon = -\sqrt{1 - \bar\alpha}\,\nabla\log q` to DDPM.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ._checks import FiniteWatch, check_callback, check_generator, check_int, check_number, check_tensor, randn
from .nets import ResMLPBlock, timestep_embedding
from .forward import _check_schedule
from .schedules import Schedule


def _check_score_output(s, x, where, watch):
    """The shape now (metadata, free); finiteness through `watch` (no per-step sync on a device)."""
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score must return the input's shape {tuple(x.shape)}, got {got} ({where})")
    watch.check(s, where)


def _score_watch(x):
    return FiniteWatch(x.device, lambda where: f"score returned non-finite values ({where})")


@torch.no_grad()
def langevin_sample(score_fn, x: torch.Tensor, step_size: float, n_steps: int, generator: torch.Generator | None = None,
                    callback=None) -> torch.Tensor:
    r"""Unadjusted Langevin dynamics on a known score (chapter 9, the book's :math:`\eta` form).

    .. math:: x \leftarrow x + \eta\, \nabla_x \log p(x) + \sqrt{2\eta}\, z, \qquad z \sim \mathcal N(0, I).

    It samples :math:`p` exactly only as :math:`\eta \to 0`: the bias grows with the step size.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x) -> grad log p(x)``, of ``x``'s shape.
    x : torch.Tensor
        Starting points, shape ``(B, ...)``.
    step_size : float
        :math:`\eta > 0`.
    n_steps : int
        Number of steps, :math:`\ge 0`.
    generator : torch.Generator, optional
        Source of the noise.
    callback : callable, optional
        Called after every step with ``{"i": step, "x": x}``.

    Returns
    -------
    torch.Tensor
        The final samples, of ``x``'s shape.

    Raises
    ------
    TypeError
        If ``score_fn`` or ``callback`` is not callable, or ``x`` is not a floating-point tensor.
    ValueError
        If ``step_size`` is not positive, ``n_steps`` is negative, or ``x`` or a score holds NaN or inf.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    check_tensor("x", x)
    step_size = check_number("step_size", step_size, low=0, low_open=True)
    n_steps = check_int("n_steps", n_steps, low=0)
    check_callback(callback)
    check_generator(generator)
    watch = _score_watch(x)
    for i in range(n_steps):
        s = score_fn(x)
        _check_score_output(s, x, f"step {i}", watch)
        x = x + step_size * s + math.sqrt(2 * step_size) * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"i": i, "x": x})
    watch.done()
    return x


def geometric_sigmas(sigma_max: float = 5.0, sigma_min: float = 0.01, n: int = 10) -> torch.Tensor:
    r"""A decreasing geometric ladder :math:`\sigma_\max = \sigma_1 > \dots > \sigma_n = \sigma_\min` (Song & Ermon 2019).

    Parameters
    ----------
    sigma_max, sigma_min : float, optional
        The largest and smallest levels, positive, ``sigma_min <= sigma_max`` (defaults 5.0 and 0.01).
    n : int, optional
        Number of levels, :math:`\ge 1` (default 10).

    Returns
    -------
    torch.Tensor
        The levels, shape ``(n,)``, decreasing.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is not a number in its range, or ``sigma_min > sigma_max``.
    """
    sigma_max = check_number("sigma_max", sigma_max, low=0, low_open=True)
    sigma_min = check_number("sigma_min", sigma_min, low=0, low_open=True)
    n = check_int("n", n, low=1)
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min must be <= sigma_max, got sigma_min = {sigma_min}, sigma_max = {sigma_max}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _check_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    if sigmas.numel() == 0 or not bool(torch.isfinite(sigmas).all()) or bool((sigmas <= 0).any()):
        raise ValueError(f"sigmas must be a non-empty sequence of positive finite numbers, got {sigmas.tolist()}")
    return sigmas


@torch.no_grad()
def annealed_langevin_sample(score_model, sigmas, x: torch.Tensor, step_size: float, n_steps_each: int,
                             generator: torch.Generator | None = None, callback=None, *, progress: bool = False) -> torch.Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1), in the book's :math:`\eta` form.

    For each :math:`\sigma_i` (decreasing), run ``n_steps_each`` Langevin steps on ``score_model(x, sigma_i)``:
    :math:`x \leftarrow x + \eta_i s + \sqrt{2\eta_i}\,z` with :math:`\eta_i = \eta\,\sigma_i^2/\sigma_L^2`, :math:`\eta` = ``step_size``
    (the same form as :func:`langevin_sample`). The paper writes the step as :math:`\frac{\alpha_i}{2} s + \sqrt{\alpha_i}\,z`
    with :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2`, so :math:`\eta_i = \alpha_i/2` and
    ``step_size`` :math:`= \epsilon/2` (:func:`langevin_delta_to_eta` converts).

    Parameters
    ----------
    score_model : callable
        ``score_model(x, sigma) -> score``; ``sigma`` is passed as a tensor of shape ``(B,)``.
    sigmas : sequence of float or torch.Tensor
        The decreasing noise levels :math:`\sigma_1 > \dots > \sigma_L`, positive.
    x : torch.Tensor
        Starting points, shape ``(B, ...)``.
    step_size : float
        :math:`\eta > 0` at the last level.
    n_steps_each : int
        Langevin steps per level, :math:`\ge 1`.
    generator : torch.Generator, optional
        Source of the noise.
    callback : callable, optional
        Called after every step with ``{"level": i, "sigma": sigma_i, "i": step, "x": x}``.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    torch.Tensor
        The final samples, of ``x``'s shape.

    Raises
    ------
    TypeError
        If ``score_model`` or ``callback`` is not callable, or ``x`` is not a floating-point tensor.
    ValueError
        If ``sigmas`` is empty or not positive and finite, a number is out of range, or a score holds NaN or inf.
    """
    if not callable(score_model):
        raise TypeError(f"score_model must be callable as score_model(x, sigma), got {type(score_model).__name__}")
    sigmas = _check_sigmas(sigmas)
    check_tensor("x", x)
    step_size = check_number("step_size", step_size, low=0, low_open=True)
    n_steps_each = check_int("n_steps_each", n_steps_each, low=1)
    check_callback(callback)
    check_generator(generator)
    sigma_last = float(sigmas[-1])
    watch = _score_watch(x)
    for level, sigma in enumerate(tqdm(sigmas.tolist(), desc="annealed Langevin", disable=not progress)):
        eta_i = step_size * sigma ** 2 / sigma_last ** 2       # = alpha_i / 2 in Song & Ermon's Algorithm 1
        sig = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        for i in range(n_steps_each):
            s = score_model(x, sig)
            _check_score_output(s, x, f"sigma = {sigma:.4g}", watch)
            x = x + eta_i * s + math.sqrt(2 * eta_i) * randn(x.shape, generator, device=x.device, dtype=x.dtype)
            if callback is not None:
                callback({"level": level, "sigma": sigma, "i": i, "x": x})
    watch.done()
    return x


def dsm_loss(score_model, x: torch.Tensor, sigmas, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Denoising score matching over a set of noise levels (Vincent 2011; Song & Ermon 2019, Eqs. 5-6).

    For :math:`\tilde x = x + \sigma z` the target score is :math:`-z/\sigma`; with :math:`\lambda(\sigma) = \sigma^2`,

    .. math::

       L = \operatorname{mean}_\text{batch}\ \tfrac12\,\sigma^2\, \big\| s_\theta(\tilde x, \sigma) + z/\sigma \big\|^2

    (summed over dimensions), with :math:`\sigma` drawn uniformly from ``sigmas`` per sample.

    Parameters
    ----------
    score_model : callable
        ``score_model(x, sigma) -> score``, ``sigma`` of shape ``(B,)``.
    x : torch.Tensor
        Clean data, shape ``(B, ...)``.
    sigmas : sequence of float or torch.Tensor
        The noise levels, positive and finite.
    generator : torch.Generator, optional
        Source of :math:`\sigma` and :math:`z`.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError
        If ``score_model`` is not callable or ``x`` is not a floating-point tensor.
    ValueError
        If ``sigmas`` is empty or has a non-positive or non-finite entry, or ``x`` holds NaN or inf.
    """
    if not callable(score_model):
        raise TypeError(f"score_model must be callable as score_model(x, sigma), got {type(score_model).__name__}")
    check_tensor("x", x)
    check_generator(generator)
    return _dsm_loss(score_model, x, _check_sigmas(sigmas).to(x.device), generator)


def _dsm_loss(score_model, x, sigmas, generator) -> torch.Tensor:
    """dsm_loss without the checks (sigmas already checked and on x's device): no device-to-host sync."""
    gen_device = generator.device if generator is not None else x.device
    idx = torch.randint(0, sigmas.numel(), (x.shape[0],), generator=generator, device=gen_device).to(x.device)
    sigma = sigmas[idx].to(x.dtype)
    shape = (-1,) + (1,) * (x.ndim - 1)
    z = randn(x.shape, generator, device=x.device, dtype=x.dtype)
    s = score_model(x + sigma.reshape(shape) * z, sigma)
    if s.shape != x.shape:
        raise ValueError(f"score_model must return the input's shape {tuple(x.shape)}, got {tuple(s.shape)}")
    per_sample = ((sigma.reshape(shape) * s + z) ** 2).flatten(1).sum(1)
    return 0.5 * per_sample.mean()


class ScoreMLP(nn.Module):
    r"""A noise-conditional score network for vectors, :math:`s_\theta(x, \sigma) = f_\theta(x, \log\sigma)/\sigma`.

    The :math:`1/\sigma` output scaling is Song & Ermon (2020, Sec. 3.3): :math:`f_\theta` then predicts
    :math:`-z`, a target of unit scale at every level. The level enters as the sinusoidal embedding of
    :math:`100\log\sigma` (the range of DDPM's timesteps, so that levels a few percent apart get distinct
    embeddings); a saved checkpoint depends on this factor.

    Parameters
    ----------
    dim : int, optional
        Data dimension (default 2).
    hidden : int, optional
        Width of the hidden layers (default 128).
    depth : int, optional
        Number of hidden layers (default 3).
    emb_dim : int, optional
        Size of the embedding of :math:`\log\sigma` (default 64).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``dim`` is not a positive integer.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        self.config = dict(dim=check_int("dim", dim, low=1), hidden=hidden, depth=depth, emb_dim=emb_dim)
        self.emb_dim = emb_dim
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([ResMLPBlock(hidden, emb_dim) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, sigma):
        r"""The score :math:`s_\theta(x, \sigma)`.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, dim)``.
        sigma : torch.Tensor
            Noise levels, shape ``(B,)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, dim)``.
        """
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.emb(timestep_embedding(torch.log(sigma) * 100.0, self.emb_dim))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h) / sigma[:, None]


def eps_to_score(eps: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
    r"""The score from a noise prediction: :math:`\nabla_{x_t}\log q(x_t) = -\epsilon / \sqrt{1 - \bar\alpha_t}`.

    The noise predictor is a scaled score (chapter 9, "The bridge to DDPM").

    Parameters
    ----------
    eps : torch.Tensor
        A noise prediction, shape ``(B, ...)``.
    schedule : Schedule
        The variance schedule.
    t : int or torch.Tensor
        One timestep, or one per example, shape ``(B,)``.

    Returns
    -------
    torch.Tensor
        The score, of ``eps``'s shape.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``eps`` is not a finite floating-point tensor, or ``t`` is not a valid timestep.
    """
    _check_schedule(schedule)
    check_tensor("eps", eps)
    t = schedule.check_t(t)
    return -eps / (1 - schedule.at(schedule.alpha_bars, t, eps)).sqrt()


def ddpm_score_model(model, schedule: Schedule, cond=None):
    r"""View a DDPM :math:`\epsilon`-model as a noise-conditional score :math:`s(x, \sigma)` on the forward marginals.

    With :math:`\sigma = \sqrt{1 - \bar\alpha_t}`: each requested :math:`\sigma` is mapped to the timestep
    :math:`t` whose :math:`\sqrt{1 - \bar\alpha_t}` is closest, and :math:`s = -\epsilon_\theta(x, t)/\sqrt{1 - \bar\alpha_t}`
    with that timestep's :math:`\sigma` (chapter 9's Eq. ch09-eps-score), so a :math:`\sigma` between two table
    entries still gets the score of a real marginal :math:`q_t`. Drive it with a ladder from
    :func:`log_snr_sigmas` (evenly spaced in log-SNR); the evenly-spaced-in-:math:`t` ladder of
    :func:`ddpm_sigmas` jumps from about 0.36 to 0.01 in its last step on the linear schedule and leaves
    annealed Langevin samples blurred (chapter 9).

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat``.
    schedule : Schedule
        The schedule the model was trained with.
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``, passed to every call.

    Returns
    -------
    callable
        ``score_model(x, sigma)`` with ``sigma`` of shape ``(B,)``.

    Raises
    ------
    TypeError
        If ``model`` is not callable or ``schedule`` is not a :class:`Schedule`.
    """
    _check_schedule(schedule)
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, cond=None), got {type(model).__name__}")
    table64 = (1 - schedule.alpha_bars).sqrt()                 # float64, on the CPU
    tables = {}                                                # (device, dtype) -> the tables there, copied once

    def score_model(x, sigma):
        key = (x.device, x.dtype)
        if key not in tables:   # cast on the CPU (MPS has no float64), then moved: no copy or sync per call
            tables[key] = (table64.float().to(x.device), table64.to(x.dtype).to(x.device))
        table, table_x = tables[key]
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).to(x.device)
        t = torch.argmin((table[None, :] - sigma[:, None]).abs(), dim=1)   # the lookup stays on x's device
        eps = model(x, t, cond)
        sigma_t = table_x[t]                                   # the looked-up timestep's sigma, in x's dtype
        return -eps / sigma_t.reshape((-1,) + (1,) * (x.ndim - 1))
    return score_model


def ddpm_sigmas(schedule: Schedule, n: int = 10) -> torch.Tensor:
    r"""``n`` decreasing noise levels :math:`\sqrt{1 - \bar\alpha_t}` at evenly spaced timesteps from ``T-1`` to 0.

    On the linear schedule most of these levels sit near :math:`\sigma = 1` and the last step jumps from
    about 0.36 to 0.01; for annealed Langevin prefer :func:`log_snr_sigmas` (chapter 9 compares the two).

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    n : int, optional
        Number of levels, in ``[1, T]`` (default 10).

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``, decreasing.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``n`` is not an integer in ``[1, T]``.
    """
    _check_schedule(schedule)
    n = check_int("n", n, low=1, high=schedule.T)
    ts = torch.linspace(schedule.T - 1, 0, n).round().long()
    return (1 - schedule.alpha_bars[ts]).sqrt().float()


def log_snr_timesteps(schedule: Schedule, n: int = 10, t_min: int = 0) -> torch.Tensor:
    r"""``n`` distinct decreasing timesteps from ``T-1`` down to ``t_min``, evenly spaced in log-SNR.

    The log signal-to-noise ratio is :math:`\log\big(\bar\alpha_t / (1 - \bar\alpha_t)\big)`; each target is
    mapped to the nearest timestep.

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    n : int, optional
        Number of timesteps, in ``[1, T - t_min]`` (default 10).
    t_min : int, optional
        The last timestep (default 0).

    Returns
    -------
    torch.Tensor
        Integer timesteps, shape ``(n,)``, decreasing.

    Raises
    ------
    ValueError
        If two targets map to the same timestep (``n`` too large), or an argument is out of range.
    TypeError
        If ``n`` or ``t_min`` is not an integer.
    """
    _check_schedule(schedule)
    t_min = check_int("t_min", t_min, low=0, high=schedule.T - 1)
    n = check_int("n", n, low=1, high=schedule.T - t_min)
    log_snr = torch.log(schedule.snr)                           # float64, decreasing in t
    targets = torch.linspace(float(log_snr[-1]), float(log_snr[t_min]), n, dtype=torch.float64)
    ts = (log_snr[None, :] - targets[:, None]).abs().argmin(dim=1)
    if n > 1 and bool((ts[1:] >= ts[:-1]).any()):
        i = int((ts[1:] >= ts[:-1]).nonzero()[0])
        raise ValueError(f"n = {n} log-SNR levels down to t_min = {t_min} map two levels to the same timestep "
                         f"t = {int(ts[i + 1])} on this schedule; use fewer levels")
    return ts


def log_snr_sigmas(schedule: Schedule, n: int = 10, t_min: int = 0) -> torch.Tensor:
    r"""The noise levels :math:`\sqrt{1 - \bar\alpha_t}` at :func:`log_snr_timesteps`.

    The ladder to use with :func:`ddpm_score_model` and :func:`annealed_langevin_sample`.

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    n : int, optional
        Number of levels (default 10).
    t_min : int, optional
        The last timestep (default 0).

    Returns
    -------
    torch.Tensor
        float32, shape ``(n,)``, decreasing.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        As for :func:`log_snr_timesteps`.
    """
    ts = log_snr_timesteps(schedule, n, t_min)
    return (1 - schedule.alpha_bars[ts]).sqrt().float()
