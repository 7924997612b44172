"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student learns to take in one deterministic DDIM
step what its teacher takes in two, halving the number of sampling steps each round."""
from __future__ import annotations

import copy
import dataclasses

import torch

from ._checks import check_int, randn
from .ddim import _ddim_coefficients, _ddim_update, ddim_timesteps
from .ddpm import _check_model
from .forward import _check_schedule
from .schedules import Schedule, to_working
from .train import TrainConfig, _check_data, _config, dropped_labels, fit, setup


def student_targets(schedule: Schedule, steps: int):
    """For a teacher sampling with `steps` trailing DDIM timesteps: the student's steps // 2 timesteps t_j, the
    teacher's midpoints t'_j and the student's next timesteps t''_j (-1: the data), as CPU long tensors (3, steps // 2).
    Trailing spacing nests: the teacher's even-indexed timesteps are exactly the student's."""
    ts = ddim_timesteps(schedule.T, steps, "trailing") + [-1]
    return torch.tensor([ts[0:-1:2], ts[1::2], ts[2::2]])


def two_step_target(teacher, c1, c2, zt, t, t_mid, cond=None) -> torch.Tensor:
    """The eps~ whose single DDIM step t -> t'' lands where two teacher DDIM steps t -> t' -> t'' land
    (Salimans & Ho 2022, Algorithm 2). c1, c2: the eta = 0 DDIM coefficients of t -> t' and t' -> t''
    (ddim._ddim_coefficients, cast, broadcastable against zt); t, t_mid: the integer timesteps (B,)."""
    sqrt_1m_ab, sqrt_ab = c1[0], c1[1]
    a2, s2 = c2[2], c2[3]                                             # alpha and sigma of t''
    # 1.-2. two deterministic DDIM steps of the teacher (Song et al. 2021a, Eq. 12 with sigma = 0)
    z_mid, _ = _ddim_update(c1, zt, teacher(zt, t, cond), None, None)
    z_end, _ = _ddim_update(c2, z_mid, teacher(z_mid, t_mid, cond), None, None)
    # 3. z_t'' = a'' x~ + s'' (z_t - a_t x~) / s_t solved for x~, then eps~ = (z_t - a_t x~) / s_t
    ratio = s2 / sqrt_1m_ab
    x_tilde = (z_end - ratio * zt) / (a2 - ratio * sqrt_ab)
    return (zt - sqrt_ab * x_tilde) / sqrt_1m_ab


def _distill_loss(student, teacher, coefs, x0, cond, j, z):
    """|eps~ - eps_hat(z_t)|^2 at z_t = sqrt(ab) x0 + sqrt(1 - ab) z, the student's timesteps t_j (the SNR weighting
    of Salimans & Ho 2022, Sec. 4: the x-space error times alpha^2 / sigma^2)."""
    c1, c2 = [tuple(c[:, j]) for c in coefs[:2]]                      # each 5 x (B, 1, ...)
    zt = c1[1] * x0 + c1[0] * z
    t, t_mid = coefs[2][0][j], coefs[2][1][j]
    with torch.no_grad():
        eps_tilde = two_step_target(teacher, c1, c2, zt, t, t_mid, cond)
    return torch.mean((student(zt, t, cond) - eps_tilde) ** 2)


def progressive_distill(teacher: torch.nn.Module, schedule: Schedule, data: torch.Tensor,
                        labels: torch.Tensor | None = None, config: TrainConfig | None = None, *, teacher_steps: int = 64,
                        rounds: int = 1, device=None, callback=None, **overrides):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2) of a discrete-time eps-model.

    Round r (0-based) starts from a teacher sampling with N = teacher_steps / 2^r deterministic DDIM steps (trailing
    timesteps); the student, initialised as a copy of the teacher, is trained so that one DDIM step from z_t to t''
    lands where two teacher steps (t -> t' -> t'') land. The target,

    .. math::
        \\tilde x = \\frac{z_{t''} - (\\sigma_{t''} / \\sigma_t) z_t}{\\alpha_{t''} - (\\sigma_{t''} / \\sigma_t) \\alpha_t},
        \\qquad \\tilde\\epsilon = \\frac{z_t - \\alpha_t \\tilde x}{\\sigma_t},

    is regressed in eps space, :math:`|\\tilde\\epsilon - \\hat\\epsilon_\\theta(z_t, t)|^2` (the SNR weighting of
    Salimans & Ho's Sec. 4). Each round trains config.steps steps with a fresh optimiser and seed config.seed + r;
    the student then becomes the next teacher.

    Parameters
    ----------
    teacher : torch.nn.Module
        model(x, t, cond) -> eps with integer t (B,), trained on `schedule` (e.g. by dl.train_ddpm); not modified.
    schedule : Schedule
        The teacher's schedule.
    data : torch.Tensor
        (N, D) or (N, C, H, W) training data.
    labels : torch.Tensor, optional
        (N,) integer labels for a class-conditional teacher (dropped with p_uncond, teacher and student alike).
    config : TrainConfig, optional
        Training options per round (or keyword overrides: steps, lr, ema_decay, ...).
    teacher_steps : int
        The first teacher's DDIM steps; must be divisible by 2^rounds and at most schedule.T. (The training steps
        per round are config.steps, or the keyword steps=.)
    rounds : int
        Halvings, >= 1.

    Returns
    -------
    student : torch.nn.Module
        The final student, which samples with
        ``dl.ddim_sample(student, schedule, shape, steps=teacher_steps // 2**rounds)``.
    losses : list of list of float
        Each round's per-step losses.

    Raises
    ------
    TypeError
        A teacher that is not a torch.nn.Module; an argument of the wrong type.
    ValueError
        A teacher that returns the wrong shape or NaN, or is a continuous-time wrapper (it has a `path`); rounds < 1;
        teacher_steps not divisible by 2^rounds or above schedule.T; NaN data; labels of the wrong length.
    TrainingDivergedError
        If a loss becomes NaN or infinite.
    """
    _check_model(teacher)
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module (the student starts as its copy), got {type(teacher).__name__}")
    _check_schedule(schedule)
    if hasattr(teacher, "path"):
        raise ValueError("teacher must be a discrete-time eps-model on `schedule` (integer t), got a continuous-time "
                         "model with a path; pass the network itself")
    if getattr(teacher, "schedule", schedule) is not schedule:
        raise ValueError("teacher.schedule is not `schedule`: distil with the schedule the teacher was trained on")
    rounds = check_int("rounds", rounds, low=1)
    steps = check_int("teacher_steps", teacher_steps, low=2, high=schedule.T)
    if steps % 2 ** rounds:
        raise ValueError(f"teacher_steps must be divisible by 2^rounds = {2 ** rounds} (each round halves it), "
                         f"got {steps}")
    config = _config(config, overrides)
    _check_data(data, labels)
    teacher, device, x_all, y_all, k = setup(data, labels, config, copy.deepcopy(teacher), None, device)
    _probe(teacher, x_all[:8], schedule, y_all[:8] if y_all is not None else None)
    all_losses = []
    for r in range(rounds):
        teacher.eval().requires_grad_(False)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        ts = student_targets(schedule, steps // 2 ** r)                               # (3, M)
        # float64 on the CPU, once per round: the DDIM coefficients of t -> t' and t' -> t'', cast and moved
        coefs = [to_working(_ddim_coefficients(schedule, ts[i], ts[i + 1], 0.0), x_all)
                 .reshape(5, -1, *([1] * (x_all.ndim - 1))) for i in (0, 1)] + [ts.to(device)]   # (5, M, 1, ...)

        def loss_fn(idx, g, teacher=teacher, student=student, coefs=coefs, M=ts.shape[1]):
            idx = idx.to(device, non_blocking=True)
            x0, cond = x_all[idx], dropped_labels(y_all, idx, g, config.p_uncond, k)
            j = torch.randint(0, M, (x0.shape[0],), generator=g).to(device, non_blocking=True)
            z = randn(x0.shape, g, device=device, dtype=x0.dtype)
            return _distill_loss(student, teacher, coefs, x0, cond, j, z)
        round_config = dataclasses.replace(config, seed=config.seed + r)
        teacher, losses = fit(student, loss_fn, round_config, data.shape[0], desc=f"progressive_distill {r + 1}/{rounds}",
                              callback=callback)
        all_losses.append(losses)
    return teacher, all_losses


def _probe(teacher, x, schedule, cond):
    """One teacher call at the last timestep: right shape and finite, or ValueError."""
    out = teacher(x, torch.full((x.shape[0],), schedule.T - 1, dtype=torch.long, device=x.device), cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"teacher output must have the input's shape {tuple(x.shape)}, got {got}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("teacher output is not finite (NaN or inf): the teacher is broken")
