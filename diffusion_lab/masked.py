r"""Masked (absorbing-state) diffusion in continuous time (Sahoo et al. 2024, MDLM, Eq. 10; Shi et al. 2024, MD4,
Eq. 5): the ELBO as a weighted cross-entropy on the masked tokens, ancestral unmasking, the NLL in bits per token.

At time t in [0, 1] each token of :math:`x_0` has been replaced by the mask K with probability t
(:math:`\alpha(t) = 1 - t`). This is D3PM's "absorbing" kind (`categorical.py`) with
``categorical_schedule(K, T, "linear")`` in the limit :math:`T \to \infty`: step s of T has
:math:`\bar\alpha = 1 - s/T`, its ELBO term (`d3pm_kl`) is :math:`1/s` times the masked cross-entropy seen at
:math:`t = s/T`, and the sum over s is a Riemann sum of the continuous-time ELBO

.. math::

   L = \int_0^1 \frac{-\alpha'(t)}{1 - \alpha(t)}\,
   \mathbb{E}_{x_t} \Big[ \sum_{i \text{ masked}} -\log p_\theta(x_0^i \mid x_t, t) \Big]\, dt,

with :math:`-\alpha'/(1 - \alpha) = 1/t`; the discrete sum approaches it at rate :math:`O(1/T)`.
The model contract: ``model(x_t, t, cond=None)`` -> logits of shape ``(*x_t.shape, K)`` over the K data categories,
:math:`x_t` long in [0, K] (K = mask), t float of shape (B,).
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ._checks import FiniteWatch, check_callback, check_generator, check_int, check_shape, check_tensor
from .categorical import check_tokens
from .ddpm import _check_cond, _check_model, model_device
from .nets import TokenMLP
from .train import _config, _init_model, dropped_labels, fit


def _resolve_K(model, K) -> int:
    if K is None:
        config = getattr(model, "config", None)
        K = config.get("K") if isinstance(config, dict) else None
        if K is None:
            raise ValueError(f"K (the number of data categories; the mask token is K) is required for a model "
                             f"without config['K'] ({type(model).__name__})")
    return check_int("K", K, low=2)


def _logits(model, xt, t, cond, K: int, check_finite: bool = True) -> torch.Tensor:
    out = model(xt, t, cond)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (*xt.shape, K):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return logits of shape {(*xt.shape, K)} (one per data category), got {got}")
    if check_finite and not bool(torch.isfinite(out).all()):
        raise ValueError(f"model returned non-finite logits (NaN or inf) at t in [{float(t.min()):.4g}, "
                         f"{float(t.max()):.4g}]: the model is broken or diverged")
    return out


def _masked_ce(logits, x0, masked) -> torch.Tensor:
    """(B,) sum over the masked tokens of -log softmax(logits)[x_0]."""
    logp = torch.log_softmax(logits.float(), -1).gather(-1, x0[..., None]).squeeze(-1)
    return -(logp * masked).flatten(1).sum(1)


def _loss(model, x0, cond, g, K: int, t=None, check: bool = False) -> torch.Tensor:
    B, L = x0.shape[0], x0[0].numel()
    if t is None:   # low-discrepancy times (MDLM Sec. 3.5.1): one uniform offset, B evenly spaced strata, t in (0, 1]
        u = torch.rand((), generator=g, dtype=torch.float64)
        t = 1 - (u + torch.arange(B, dtype=torch.float64) / B) % 1
    t = t.to("cpu", torch.float64)
    masked = torch.rand(x0.shape, generator=g, dtype=torch.float64) < t.reshape(-1, *([1] * (x0.ndim - 1)))
    masked = masked.to(x0.device, non_blocking=True)
    xt = torch.where(masked, K, x0)
    t_dev = t.float().to(x0.device, non_blocking=True)
    logits = _logits(model, xt, t_dev, cond, K, check)
    return (_masked_ce(logits, x0, masked) / t_dev).mean() / L      # (1/t) weighted CE, nats per token


def _check_common(model, x0, cond, generator, K):
    _check_model(model)
    K = _resolve_K(model, K)
    x0 = check_tokens("x0", x0, K)
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch of token sequences (B, L, ...), got shape {tuple(x0.shape)}")
    _check_cond(cond, x0.shape[0])
    check_generator(generator)
    return x0, K


def masked_diffusion_loss(model, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None, *,
                          K: int | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
    """The continuous-time masked-diffusion loss (MDLM Eq. 10, MD4 Eq. 5), a weighted cross-entropy:
    :math:`\\mathbb{E}_{t, x_t}\\big[\\tfrac{1}{t} \\sum_{i:\\, x_t^i = K} -\\log p_\\theta(x_0^i \\mid x_t, t)\\big] / L`.

    Its expectation is the continuous-time ELBO (in nats per token), the T -> infinity limit of the absorbing
    D3PM bound with categorical_schedule(K, T, "linear") (see the module docstring).

    Parameters
    ----------
    model : callable
        model(x_t, t, cond) -> logits ``(*x_t.shape, K)``.
    x0 : torch.Tensor
        Integer tokens (B, L, ...) in [0, K); L is the number of tokens per sequence (all trailing dims).
    cond : torch.Tensor, optional
        Integer labels (B,).
    generator : torch.Generator, optional
        Draws t (low-discrepancy: one offset, B strata) and the masks, on the CPU.
    K : int, optional
        Number of data categories; read from model.config["K"] when not given.
    t : torch.Tensor, optional
        Fixed times (B,) in (0, 1] instead of random ones (for plots and tests).

    Returns
    -------
    torch.Tensor
        Scalar: the batch mean of the weighted cross-entropy, nats per token.

    Raises
    ------
    TypeError
        If the tokens are not integers or ``t`` is not a tensor.
    ValueError
        Tokens outside [0, K), bad cond or t values, or logits of the wrong shape or non-finite.
    """
    x0, K = _check_common(model, x0, cond, generator, K)
    if t is not None:
        check_tensor("t", t)
        if t.shape != (x0.shape[0],) or bool((t <= 0).any()) or bool((t > 1).any()):
            raise ValueError(f"t must have shape ({x0.shape[0]},) with values in (0, 1], got shape {tuple(t.shape)}")
    return _loss(model, x0, cond, generator, K, t, check=True)


def _count_weights(L: int, steps: int | None):
    """For m = 1..L masked tokens: c_m (float64 (L,)) and, for `steps` steps, the probabilities (L, steps)
    of the step s = 1..steps given m. See masked_diffusion_nll."""
    m = torch.arange(1, L + 1, dtype=torch.float64)
    if steps is None:
        return 1 / m, None
    s = torch.arange(1, steps + 1, dtype=torch.float64) / steps                      # t = s / T
    logw = -torch.log(s * steps)[None] + m[:, None] * torch.log(s)[None] + torch.xlogy(L - m[:, None], 1 - s[None])
    log_binom = math.lgamma(L + 1) - torch.lgamma(m + 1) - torch.lgamma(L - m + 1)                # float64 throughout
    logW = torch.logsumexp(logw, 1)
    # steps = 1 masks every token (W_m = 0 for m < L): those m get weight 0 and any step (there is one)
    probs = torch.where(torch.isfinite(logW)[:, None], torch.exp(logw - logW[:, None]), 1.0)
    return torch.exp(log_binom + logW), probs


@torch.no_grad()
def masked_diffusion_nll(model, x0: torch.Tensor, steps: int | None = None, cond=None,
                         generator: torch.Generator | None = None, *, K: int | None = None) -> torch.Tensor:
    """An unbiased one-draw estimate of each sequence's negative ELBO, in bits per token: the continuous-time
    bound (steps=None, MDLM Eq. 10), or the discrete-time absorbing D3PM bound with `steps` steps (the model
    that `masked_diffusion_sample(..., steps=steps)` samples from; equal in expectation to the sum of `d3pm_kl`
    terms with categorical_schedule(K, steps, "linear")). The bound is >= the model's true NLL.

    Estimator (bounded weights, unlike the 1/t of the loss). Sort the bound by the number m of masked tokens:
    :math:`L = \\sum_{m=1}^{L} c_m\\, \\mathbb{E}[f(M, t)]`, f the masked cross-entropy for a uniformly drawn set M
    of m positions, t drawn given m; continuous time: :math:`c_m = 1/m`, :math:`t \\sim \\mathrm{Beta}(m, L - m + 1)`
    (the m-th smallest of L uniforms); `steps` = T: :math:`c_m = \\binom{L}{m} W_m`, :math:`t = s/T` with
    :math:`P(s) = w_m(s)/W_m`, :math:`w_m(s) = \\tfrac{1}{s}(s/T)^m (1 - s/T)^{L-m}`. One m ~ U{1..L} per sequence.

    Parameters
    ----------
    model : callable
        model(x_t, t, cond) -> logits ``(*x_t.shape, K)``.
    x0 : torch.Tensor
        Integer tokens (B, L, ...) in [0, K).
    steps : int, optional
        None for continuous time, else the number of discrete steps (>= 1).
    cond : torch.Tensor, optional
        Integer labels (B,).
    generator : torch.Generator, optional
    K : int, optional
        Read from model.config["K"] when not given.

    Returns
    -------
    torch.Tensor
        (B,) float64 on the CPU: per-sequence estimates in bits per token; their mean estimates the bound.

    Raises
    ------
    TypeError
        If the tokens are not integers or ``steps`` is not an integer.
    ValueError
        Bad token values, steps < 1, bad cond, or logits of the wrong shape or non-finite.
    """
    x0, K = _check_common(model, x0, cond, generator, K)
    if steps is not None:
        steps = check_int("steps", steps, low=1)
    B, L = x0.shape[0], x0[0].numel()
    c, step_probs = _count_weights(L, steps)
    m = torch.randint(1, L + 1, (B,), generator=generator)                           # masked tokens per sequence
    u = torch.rand(B, L, generator=generator, dtype=torch.float64)
    kth = u.sort(1).values.gather(1, (m - 1)[:, None]).squeeze(1)                    # m-th smallest of L uniforms
    if steps is None:
        t = kth
    else:
        t = (torch.multinomial(step_probs[m - 1], 1, generator=generator).squeeze(1) + 1).double() / steps
    masked = (u <= kth[:, None]).reshape(x0.shape).to(x0.device)                    # exactly m masked, uniformly
    xt = torch.where(masked, K, x0)
    logits = _logits(model, xt, t.float().to(x0.device), cond, K)
    f = _masked_ce(logits, x0, masked).cpu().double()
    return c[m - 1] * f / math.log(2)


@torch.no_grad()
def masked_diffusion_sample(model, shape, steps: int = 100, cond=None, generator: torch.Generator | None = None, *,
                            K: int | None = None, callback=None, progress: bool = False) -> torch.Tensor:
    """Ancestral unmasking (MDLM Sec. 3.3 / MD4 Alg. 2): start all masked at t = 1; on the grid t_i = 1 - i/steps,
    each still-masked token is revealed between t and s < t with probability (alpha(s) - alpha(t)) / (1 - alpha(t))
    = (t - s) / t, its value drawn from softmax(logits); revealed tokens never change. At s = 0 all are revealed.
    Its log-likelihood bound is masked_diffusion_nll(..., steps=steps).

    Parameters
    ----------
    model : callable
        model(x_t, t, cond) -> logits ``(*x_t.shape, K)``; wrap with dl.cfg(model, scale) for guidance on logits.
    shape : tuple of int
        (B, L, ...) of the tokens to draw.
    steps : int
        Number of unmasking steps, >= 1.
    cond : torch.Tensor, optional
        Integer labels (B,).
    generator : torch.Generator, optional
        Draws on the CPU, moved to the model's device.
    K : int, optional
        Read from model.config["K"] when not given.
    callback : callable, optional
        Called after each step with {"step": i, "t": s, "x": x_s}.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    torch.Tensor
        long tokens of `shape` in [0, K).

    Raises
    ------
    TypeError
        If ``steps`` or ``shape`` has the wrong type.
    ValueError
        steps < 1, bad shape or cond, or logits of the wrong shape or non-finite.
    """
    _check_model(model)
    K = _resolve_K(model, K)
    shape = check_shape("shape", shape)
    steps = check_int("steps", steps, low=1)
    _check_cond(cond, shape[0])
    check_generator(generator)
    check_callback(callback)
    device = model_device(model)
    x = torch.full(shape, K, dtype=torch.long, device=device)
    ts = 1 - torch.arange(steps + 1, dtype=torch.float64) / steps
    # non-finite logits: checked at once on the CPU; on an accelerator flagged there and read once, after the loop
    watch = FiniteWatch(device, lambda w: f"model returned non-finite logits (NaN or inf) at step {w[0]} "
                                          f"(t = {w[1]:.4g}): the model is broken or diverged")
    for i in tqdm(range(steps), desc="masked_diffusion_sample", disable=not progress):
        t, s = float(ts[i]), float(ts[i + 1])
        logits = _logits(model, x, torch.full((shape[0],), t, device=device), cond, K, check_finite=False)
        watch.check(logits, (i, t))
        cdf = torch.softmax(logits.float(), -1).cumsum(-1)                              # inverse-CDF draw
        u = torch.rand(shape, generator=generator).to(device, non_blocking=True)
        draw = (cdf < u[..., None]).sum(-1).clamp(max=K - 1)
        reveal = torch.rand(shape, generator=generator, dtype=torch.float64) < (t - s) / t    # on the CPU
        x = torch.where((x == K) & reveal.to(device, non_blocking=True), draw, x)
        if callback is not None:
            callback({"step": i, "t": s, "x": x})
    watch.done()
    return x


class MaskedOracle:
    """The exact denoiser of masked diffusion for a known distribution over short sequences, by enumeration.

    Called as model(x_t, t=None, cond=None), it returns the logits :math:`\\log p(x_0^i = k \\mid x_t)` for every
    position: the sum of p over the sequences that agree with the visible tokens, per value of position i. The
    exact posterior of a masked token depends on the visible tokens only, not on t (Ou et al. 2025), so t is
    ignored. At visible positions the row is one-hot, floored at 1e-30 so that the logits stay finite.

    Parameters
    ----------
    probs : torch.Tensor
        Probability table of shape (K,) * L over all :math:`K^L` sequences (keep :math:`K^L` small), summing to 1.

    Attributes
    ----------
    config : dict
        {"K": K, "sample_shape": (L,)}, so that the masked-diffusion functions find K.

    Raises
    ------
    ValueError
        probs not of shape (K,) * L, negative, or not summing to 1.
    """

    def __init__(self, probs: torch.Tensor):
        check_tensor("probs", probs)
        K, L = probs.shape[0], probs.ndim
        if any(n != K for n in probs.shape) or bool((probs < 0).any()) or abs(float(probs.sum()) - 1) > 1e-6:
            raise ValueError(f"probs must be a probability table of shape (K,) * L summing to 1, got shape "
                             f"{tuple(probs.shape)} and sum {float(probs.sum()):.6g}")
        self.config = {"K": check_int("K", K, low=2), "sample_shape": (L,)}
        self.p = probs.reshape(-1).double()                                            # (K^L,)
        self.states = torch.cartesian_prod(*[torch.arange(K)] * L).reshape(-1, L)      # (K^L, L)
        self.onehot = torch.nn.functional.one_hot(self.states, K).double()             # (K^L, L, K)

    def __call__(self, xt, t=None, cond=None):
        K = self.config["K"]
        seen = (xt[:, None, :] == self.states[None]) | (xt[:, None, :] == K)          # (B, K^L, L)
        w = self.p * seen.all(-1)                                                      # p(x_0) [x_0 agrees with x_t]
        post = torch.einsum("bs,slk->blk", w, self.onehot)
        # floored at 1e-30: a visible token's own row is one-hot, and logits must be finite
        return torch.log((post / post.sum(-1, keepdim=True)).clamp_min(1e-30)).float()


def train_masked_diffusion(tokens: torch.Tensor, labels: torch.Tensor | None = None, config=None, *,
                           K: int | None = None, model=None, device=None, callback=None, **overrides):
    """Train a token model with `masked_diffusion_loss` through the package's shared loop (seeded, EMA, clipping,
    progress bar, TrainingDivergedError; options as a TrainConfig or keywords; network options in config.net go to
    `dl.TokenMLP`). With labels, each is dropped to the null label with probability p_uncond (for dl.cfg).

    Parameters
    ----------
    tokens : torch.Tensor
        Integer tokens (N, L, ...) in [0, K).
    labels : torch.Tensor, optional
        Integer labels (N,).
    config : TrainConfig, optional
        Steps, batch size, learning rate, EMA, seed, p_uncond, net; keyword overrides as in `dl.train_ddpm`.
    K : int, optional
        Number of categories; tokens.max() + 1 when not given.
    model : torch.nn.Module, optional
        Train this model (model(x_t, t, cond) -> logits) instead of a new `dl.TokenMLP`.
    device : optional
        Where to train; the model's device by default.
    callback : callable, optional
        Called each step with {"step", "loss", "model"}.

    Returns
    -------
    model : torch.nn.Module
        The trained model (the EMA weights when ema_decay is set).
    losses : list of float
        The per-step losses (nats per token).

    Raises
    ------
    TypeError
        Tokens that are not an integer tensor; an unknown option or an option of the wrong type.
    ValueError
        Bad token values or labels.
    TrainingDivergedError
        When the loss becomes NaN or infinite.
    """
    config = _config(config, overrides)
    K = check_int("K", int(tokens.max()) + 1 if K is None and isinstance(tokens, torch.Tensor) else K, low=2)
    tokens = check_tokens("tokens", tokens, K)
    if tokens.ndim < 2:
        raise ValueError(f"tokens must be (N, L, ...), got shape {tuple(tokens.shape)}")
    _check_cond(labels, tokens.shape[0])
    num_classes = int(labels.max()) + 1 if labels is not None else None
    if model is None:
        model = _init_model(lambda: TokenMLP(tuple(tokens.shape[1:]), K, num_classes=num_classes, **config.net),
                            config.seed)
    device = model_device(model, device)
    model.to(device)
    x_all, y_all = tokens.to(device), (labels.to(device) if labels is not None else None)

    def loss_fn(idx, g):
        idx = idx.to(device, non_blocking=True)
        cond = dropped_labels(y_all, idx, g, config.p_uncond, num_classes)
        return _loss(model, x_all[idx], cond, g, K)
    return fit(model, loss_fn, config, tokens.shape[0], desc="train_masked_diffusion", callback=callback)
