r"""Discrete-time diffusion on categories, D3PM (Austin et al. 2021): uniform and absorbing transition
matrices (Sec. 3.1, App. A.2), the marginal :math:`q(x_t \mid x_0) = \mathrm{Cat}(\mathrm{onehot}(x_0) \bar Q_t)`
and the posterior :math:`q(x_{t-1} \mid x_t, x_0)` (Eq. 3), and the ELBO's categorical KL terms with the
:math:`x_0`-parameterization (Eq. 1, 4).

Conventions. A row-stochastic matrix :math:`Q[i, j] = q(x_t = j \mid x_{t-1} = i)`. The K data categories are
0..K-1; "absorbing" adds the mask state K (K + 1 states in all). Timesteps are indices t = 0..T-1 as in
`dl.Schedule` (index t is the paper's step t + 1): :math:`\bar Q_t = Q_0 Q_1 \cdots Q_t`, and :math:`x_{t-1}` at
t = 0 is :math:`x_0`. Both kinds mix the identity with an idempotent matrix U (:math:`UU = U`):
:math:`Q = (1 - \beta) I + \beta U` with :math:`U = \mathbf{1}\mathbf{1}^\top / K` (uniform) or
:math:`U = \mathbf{1} e_\text{mask}^\top` (absorbing), so :math:`\bar Q_t = \bar\alpha_t I + (1 - \bar\alpha_t) U`
with :math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`. Masked diffusion (`masked.py`) is the absorbing kind
in continuous time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import check_generator, check_int, check_number, check_tensor
from .schedules import cosine_schedule

KINDS = ("uniform", "absorbing")


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def num_states(kind: str, K: int) -> int:
    """K' = K for "uniform", K + 1 (the K data categories and the mask) for "absorbing"."""
    return K + 1 if _check_kind(kind) == "absorbing" else K


def check_tokens(name: str, x, K: int, *, mask: bool = False) -> torch.Tensor:
    """Require an integer tensor with values in [0, K) (in [0, K] where the mask token K is allowed)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer tokens, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer tokens (e.g. torch.long), got dtype {x.dtype}")
    high = K if mask else K - 1
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > high):
        what = f"[0, {K}] ({K} = mask)" if mask else f"[0, {K - 1}]"
        raise ValueError(f"{name} must hold categories in {what}, got values from {int(x.min())} to {int(x.max())}")
    return x.long()


@dataclass(frozen=True)
class CategoricalSchedule:
    """The noise schedule of a categorical diffusion: per-step jump probabilities for K data categories.

    Unlike `dl.Schedule`, the last beta may be 1: D3PM's absorbing schedule ends with every token masked
    (:math:`\\bar\\alpha_T = 0`). Build one with `categorical_schedule`, or reuse a Gaussian schedule's betas:
    ``CategoricalSchedule(dl.cosine_schedule(T).betas, K)``.

    Parameters
    ----------
    betas : torch.Tensor
        (T,) jump probabilities :math:`\\beta_t \\in (0, 1]`, stored as float64 on the CPU.
    K : int
        Number of data categories, >= 2 (the mask of the absorbing kind is category K).
    name : str
        A label for printing.

    Raises
    ------
    ValueError
        betas not 1-D, empty, non-finite or outside (0, 1]; K < 2.
    """

    betas: torch.Tensor
    K: int
    name: str = "custom"

    def __post_init__(self):
        check_tensor("betas", self.betas)
        b = self.betas
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a 1-D tensor with at least one entry, got shape {tuple(b.shape)}")
        if bool((b <= 0).any()) or bool((b > 1).any()):
            raise ValueError(f"every beta must be in (0, 1], got min {b.min().item():.3g} and max {b.max().item():.3g}")
        check_int("K", self.K, low=2)
        object.__setattr__(self, "betas", b.detach().to("cpu", torch.float64))

    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @property
    def alpha_bars(self) -> torch.Tensor:
        r""":math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`: the probability that a token is still untouched."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def alpha_bars_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])

    def check_t(self, t, like: torch.Tensor) -> torch.Tensor:
        """Integer timesteps in [0, T-1]: an int, or a tensor of shape (B,) for like's batch of B."""
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"t must hold integer timesteps, got dtype {t.dtype}")
            if t.ndim != 1 or t.shape[0] != like.shape[0]:
                raise ValueError(f"t must be an int or have shape ({like.shape[0]},), got {tuple(t.shape)}")
        else:
            t = torch.tensor(check_int("t", t))
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.T - 1):
            raise ValueError(f"t must be in [0, {self.T - 1}] (T = {self.T}), got values from {int(t.min())} to {int(t.max())}")
        return t.long().cpu()


def categorical_schedule(K: int, T: int, name: str = "linear") -> CategoricalSchedule:
    """A categorical schedule by name.

    Parameters
    ----------
    K : int
        Number of data categories, >= 2.
    T : int
        Number of steps, >= 1.
    name : {"linear", "cosine"}
        "linear": :math:`\\beta_t = 1/(T - t)` for indices t = 0..T-1, so :math:`\\bar\\alpha_t = 1 - (t + 1)/T` falls
        linearly to 0 (Austin et al. 2021's :math:`1/(T - t + 1)` in their 1-based steps; with "absorbing" it is
        masked diffusion's :math:`\\alpha(t) = 1 - t` on the grid t = 1/T, ..., 1). "cosine": the betas of
        `dl.cosine_schedule(T)` (Nichol & Dhariwal 2021, Eq. 17), whose last :math:`\\bar\\alpha` is small but not 0.

    Returns
    -------
    CategoricalSchedule

    Raises
    ------
    ValueError
        T < 1, K < 2 or an unknown name.
    """
    T = check_int("T", T, low=1)
    if name == "linear":
        return CategoricalSchedule(1.0 / torch.arange(T, 0, -1, dtype=torch.float64), K, "linear")
    if name == "cosine":
        return CategoricalSchedule(cosine_schedule(T).betas, K, "cosine")
    raise ValueError(f"name must be 'linear' or 'cosine', got {name!r}")


def _matrix(kind: str, K: int, beta: torch.Tensor) -> torch.Tensor:
    """(1 - beta) I + beta U for beta of any shape (...,) -> (..., K', K'), float64."""
    n = num_states(kind, K)
    if kind == "uniform":
        U = torch.full((n, n), 1.0 / K, dtype=torch.float64)
    else:
        U = torch.zeros(n, n, dtype=torch.float64)
        U[:, K] = 1.0
    beta = beta.to(torch.float64)[..., None, None]
    return (1 - beta) * torch.eye(n, dtype=torch.float64) + beta * U


def transition_matrix(kind: str, K: int, beta: float) -> torch.Tensor:
    """One step's transition matrix :math:`Q_t = (1 - \\beta) I + \\beta U` (Austin et al. 2021, Sec. 3.1 and App. A.2).

    Parameters
    ----------
    kind : {"uniform", "absorbing"}
        "uniform": :math:`U = \\mathbf{1}\\mathbf{1}^\\top / K`, a jump to a uniformly drawn category. "absorbing":
        :math:`U = \\mathbf{1} e_K^\\top`, a jump to the mask state K, which never leaves.
    K : int
        Number of data categories, >= 2.
    beta : float
        Probability of a jump, in (0, 1] (beta = 1 is the last step of an absorbing schedule).

    Returns
    -------
    torch.Tensor
        float64 matrix of shape (K', K') with K' = K (uniform) or K + 1 (absorbing);
        :math:`Q[i, j] = q(x_t = j \\mid x_{t-1} = i)`, each row sums to 1.

    Raises
    ------
    ValueError
        Unknown kind (the message lists the allowed ones), K < 2, or beta outside (0, 1].
    """
    _check_kind(kind)
    K = check_int("K", K, low=2)
    beta = check_number("beta", beta, low=0, high=1, low_open=True)
    return _matrix(kind, K, torch.tensor(beta, dtype=torch.float64))


def cumulative_transition_matrix(schedule: CategoricalSchedule, t: int, kind: str) -> torch.Tensor:
    """The t-step transition matrix in closed form (Austin et al. 2021, Eq. 3):
    :math:`\\bar Q_t = Q_0 Q_1 \\cdots Q_t = \\bar\\alpha_t I + (1 - \\bar\\alpha_t) U`. U is idempotent
    (:math:`UU = U`), so the product of the one-step matrices collapses to this form.

    Parameters
    ----------
    schedule : CategoricalSchedule
    t : int
        Timestep index in [0, T-1].
    kind : {"uniform", "absorbing"}

    Returns
    -------
    torch.Tensor
        float64 (K', K'), K' = K or K + 1; row :math:`x_0` is :math:`q(x_t \\mid x_0)`.

    Raises
    ------
    TypeError
        If ``schedule`` is not a CategoricalSchedule or ``t`` is not an integer.
    ValueError
        If ``t`` is outside [0, T-1] or ``kind`` is unknown.
    """
    _check_schedule(schedule)
    _check_kind(kind)
    t = check_int("t", t, low=0, high=schedule.T - 1)
    return _matrix(kind, schedule.K, 1 - schedule.alpha_bars[t])


def _check_schedule(schedule):
    if not isinstance(schedule, CategoricalSchedule):
        raise TypeError(f"schedule must be a CategoricalSchedule (dl.categorical_schedule(K, T)), "
                        f"got {type(schedule).__name__}")


def _per_batch(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] (float64), shaped to broadcast against like (B, ...) and kept in float64 on like's device."""
    v = values[t]
    if v.ndim:
        v = v.reshape(-1, *([1] * (like.ndim - 1)))
    return v.to(like.device)


def categorical_q_sample(x0: torch.Tensor, t, schedule: CategoricalSchedule, kind: str,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw :math:`x_t \\sim \\mathrm{Cat}(\\mathrm{onehot}(x_0) \\bar Q_t)` in one step (Austin et al. 2021, Eq. 3).

    Each token is kept with probability alpha_bar_t and otherwise replaced by a draw from U's row: a
    uniform category (which may equal x_0) or the mask K.

    Parameters
    ----------
    x0 : torch.Tensor
        Integer tokens of shape (B, ...), values in [0, K).
    t : int or torch.Tensor
        Timestep index in [0, T-1], one int or an integer tensor of shape (B,).
    schedule : CategoricalSchedule
        Carries the betas and K.
    kind : {"uniform", "absorbing"}
    generator : torch.Generator, optional
        Source of randomness (drawn on the CPU, then moved to x0's device).

    Returns
    -------
    torch.Tensor
        long tensor of x0's shape with values in [0, K') .

    Raises
    ------
    TypeError
        If ``x0`` holds non-integer tokens, or ``schedule`` or ``t`` has the wrong type.
    ValueError
        If tokens are outside [0, K), ``t`` is outside [0, T-1] or ``kind`` is unknown.
    """
    _check_schedule(schedule)
    _check_kind(kind)
    K = schedule.K
    x0 = check_tokens("x0", x0, K)
    check_generator(generator)
    t = schedule.check_t(t, x0)
    ab = _per_batch(schedule.alpha_bars, t, x0)
    u = torch.rand(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
    if kind == "uniform":
        jump = torch.randint(0, K, x0.shape, generator=generator).to(x0.device)
    else:
        jump = torch.full_like(x0, K)
    return torch.where(u < ab, x0, jump)


def _marginal(x0_probs: torch.Tensor, ab: torch.Tensor, kind: str, K: int) -> torch.Tensor:
    """Row x_0 of Qbar: alpha_bar p + (1 - alpha_bar) U-row, for probabilities p (..., K') over x_0."""
    if kind == "uniform":
        return ab * x0_probs + (1 - ab) / K
    return ab * x0_probs + (1 - ab) * torch.nn.functional.one_hot(torch.tensor(K), K + 1).to(x0_probs)


def _posterior(x0_probs, xt, beta, ab_prev, kind: str, K: int) -> torch.Tensor:
    """Unnormalised sum_{x0} q(x_{t-1}, x_t | x0) p(x0) over x_{t-1}, shape (..., K').
    A one-hot p gives q(x_{t-1} | x_t, x_0) after normalising (Eq. 3); the model's p gives p_theta (Eq. 4)."""
    n = num_states(kind, K)
    onehot_t = torch.nn.functional.one_hot(xt, n).to(x0_probs)
    if kind == "uniform":              # Q_t[j, x_t] = (1 - beta) [j = x_t] + beta / K
        forward = (1 - beta) * onehot_t + beta / K
    else:                              # Q_t[j, x_t] = (1 - beta) [j = x_t] + beta [x_t = mask]
        forward = (1 - beta) * onehot_t + beta * (xt == K).to(x0_probs)[..., None]
    return forward * _marginal(x0_probs, ab_prev, kind, K)


def categorical_posterior(x0: torch.Tensor, xt: torch.Tensor, t, schedule: CategoricalSchedule, kind: str,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The posterior :math:`q(x_{t-1} \\mid x_t, x_0)` by Bayes' rule with the closed forms (Austin et al. 2021, Eq. 3).

    .. math::

        q(x_{t-1} \\mid x_t, x_0) = Q_t[x_{t-1}, x_t]\\,\\bar Q_{t-1}[x_0, x_{t-1}] / \\bar Q_t[x_0, x_t]

    Parameters
    ----------
    x0 : torch.Tensor
        Integer tokens (B, ...) in [0, K).
    xt : torch.Tensor
        Integer tokens of x0's shape in [0, K'), e.g. from `categorical_q_sample`.
    t : int or torch.Tensor
        Timestep index in [0, T-1] (int or (B,)); at t = 0 the posterior is onehot(x_0).
    schedule : CategoricalSchedule
    kind : {"uniform", "absorbing"}
    dtype : torch.dtype
        Output dtype; computed in float64, then cast.

    Returns
    -------
    torch.Tensor
        Probabilities of shape ``(*x0.shape, K')`` over :math:`x_{t-1}`, summing to 1.

    Raises
    ------
    TypeError
        If the tokens, ``t`` or ``schedule`` have the wrong type.
    ValueError
        Bad token values, t or kind; or a pair (:math:`x_0, x_t`) that the forward process cannot produce
        (:math:`\\bar Q_t[x_0, x_t] = 0`, e.g. an unmasked :math:`x_t` different from :math:`x_0` under "absorbing").
    """
    _check_schedule(schedule)
    _check_kind(kind)
    K = schedule.K
    x0 = check_tokens("x0", x0, K)
    xt = check_tokens("xt", xt, K, mask=kind == "absorbing")
    if xt.shape != x0.shape:
        raise ValueError(f"xt must have x0's shape {tuple(x0.shape)}, got {tuple(xt.shape)}")
    t = schedule.check_t(t, x0)
    n = num_states(kind, K)
    joint = _posterior(torch.nn.functional.one_hot(x0, n).double(), xt, _per_batch(schedule.betas, t, x0)[..., None],
                       _per_batch(schedule.alpha_bars_prev, t, x0)[..., None], kind, K)
    norm = joint.sum(-1, keepdim=True)     # = Qbar_t[x_0, x_t]
    if bool((norm == 0).any()):
        raise ValueError(f"xt is impossible given x0 under kind {kind!r} (q(x_t | x_0) = 0 at "
                         f"{int((norm == 0).sum())} position(s)); the posterior is undefined there")
    return (joint / norm).to(dtype)


def d3pm_kl(logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t, schedule: CategoricalSchedule,
            kind: str) -> torch.Tensor:
    """One ELBO term per token, :math:`L_{t-1} = \\mathrm{KL}(q(x_{t-1} \\mid x_t, x_0) \\,\\|\\, p_\\theta(x_{t-1} \\mid x_t))`
    in nats.

    Here :math:`p_\\theta(x_{t-1} \\mid x_t) \\propto \\sum_{\\tilde x_0} q(x_{t-1}, x_t \\mid \\tilde x_0)
    \\, \\tilde p_\\theta(\\tilde x_0 \\mid x_t)` (Austin et al. 2021, Eq. 4) and :math:`\\tilde p_\\theta = \\mathrm{softmax}`
    (logits). At t = 0 the posterior is onehot(x_0), so the term is the reconstruction :math:`-\\log p_\\theta(x_0 \\mid x_1)`.

    For "absorbing" the term is 0 on unmasked tokens and :math:`\\frac{\\bar\\alpha_{t-1} - \\bar\\alpha_t}{1 - \\bar\\alpha_t}
    (-\\log \\tilde p_\\theta(x_0 \\mid x_t))` on masked ones: masked diffusion's weighted cross-entropy (`masked.py`).

    Parameters
    ----------
    logits : torch.Tensor
        ``(*x0.shape, K)`` logits of :math:`\\tilde p_\\theta(x_0 \\mid x_t)` over the K data categories.
    x0, xt, t, schedule, kind
        As in `categorical_posterior`.

    Returns
    -------
    torch.Tensor
        ``(*x0.shape)`` KLs in nats, float64.
    """
    q = categorical_posterior(x0, xt, t, schedule, kind, dtype=torch.float64)
    K = schedule.K
    check_tensor("logits", logits)
    if logits.shape != (*x0.shape, K):
        raise ValueError(f"logits must have shape {(*x0.shape, K)}, got {tuple(logits.shape)}")
    t = schedule.check_t(t, x0)
    p0 = torch.softmax(logits.double(), -1)
    if kind == "absorbing":
        p0 = torch.nn.functional.pad(p0, (0, 1))        # the model never predicts x_0 = mask
    p = _posterior(p0, xt.long(), _per_batch(schedule.betas, t, x0)[..., None],
                   _per_batch(schedule.alpha_bars_prev, t, x0)[..., None], kind, K)
    p = p / p.sum(-1, keepdim=True)
    return torch.where(q > 0, q * (q.log() - p.log()), torch.zeros_like(q)).sum(-1)


def categorical_prior_kl(x0: torch.Tensor, schedule: CategoricalSchedule, kind: str) -> torch.Tensor:
    """The prior term :math:`L_T = \\mathrm{KL}(q(x_T \\mid x_0) \\,\\|\\, p(x_T))` of the D3PM bound
    (Austin et al. 2021, Eq. 1), with the chain's stationary prior p(x_T): uniform over the K categories, or all
    mass on the mask. It is 0 when :math:`\\bar\\alpha_T = 0`; for "absorbing" with :math:`\\bar\\alpha_T > 0` it is
    infinite (an unmasked x_T has prior probability 0).

    Parameters
    ----------
    x0 : torch.Tensor
        Integer tokens (B, ...) in [0, K).
    schedule : CategoricalSchedule
    kind : {"uniform", "absorbing"}

    Returns
    -------
    torch.Tensor
        float64 of x0's shape: the KL per token in nats (the same for every token).

    Raises
    ------
    TypeError
        If the tokens or ``schedule`` have the wrong type.
    ValueError
        If token values or ``kind`` are out of range.
    """
    _check_schedule(schedule)
    _check_kind(kind)
    K = schedule.K
    x0 = check_tokens("x0", x0, K)
    ab = schedule.alpha_bars[-1]
    if kind == "uniform":      # q puts ab + (1 - ab)/K on x_0 and (1 - ab)/K elsewhere
        on, off = ab + (1 - ab) / K, (1 - ab) / K
        kl = on * math.log(on * K) + ((K - 1) * off * math.log(off * K) if off > 0 else 0.0)
    else:
        kl = 0.0 if ab == 0 else math.inf
    return torch.full(x0.shape, float(kl), dtype=torch.float64)
