"""Predictor-corrector sampling: the Langevin corrector's fixed point on a Gaussian (closed form), the exact
mixture model sampled better with the corrector than without at few steps (oracle), diffusers'
ScoreSdeVeScheduler.step_correct (independent implementation), and bad input."""
import math

import pytest
import torch

import diffusion_lab as dl

M, C = torch.tensor([0.7, -0.7], dtype=torch.float64), 0.5
GAUSS = dl.GaussianMixture(M[None], stds=C)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("snr", [0.3, 0.6])
def test_corrector_settles_at_the_closed_form_variance(snr):
    """For p_t = N(mu, v I) the SNR rule gives eps = 2 r^2 v^2 / V at sample variance V, so Langevin steps settle at
    V = (1 + r^2) v (the norms' constants cancel). Started from exact samples of p_t (VP, t = 0.5), 30 steps:
    measured V / v = 1.085, 1.364 (expected 1.09, 1.36; 8000 x 2 values: s.e. 0.015); the mean stays alpha m.
    A noise of sqrt(eps) instead of sqrt(2 eps) gives 0.59, a step without the factor 2 gives 1.04 and 1.18
    (caught at snr 0.6), the score's sign flipped 14."""
    path = dl.vp_path()
    t = 0.5
    a, s = float(path.alpha(t)), float(path.sigma(t))
    v = a * a * C * C + s * s
    x = a * M + math.sqrt(v) * torch.randn(8000, 2, generator=_gen(1), dtype=torch.float64)
    y = dl.langevin_correct(GAUSS.path_model(path), path, x, t, n_steps=30, snr=snr, generator=_gen(2))
    ratio = float(((y - a * M) ** 2).mean()) / v
    print(f"snr {snr}: V / v = {ratio:.4f}, expected {1 + snr ** 2:.4f}")
    assert abs(ratio - (1 + snr ** 2)) < 0.08, ratio
    assert float((y.mean(0) - a * M).abs().max()) < 4 * math.sqrt(v * (1 + snr ** 2) / 8000)


def test_corrector_matches_diffusers_step_correct():
    """One corrector step on a VE path with the exact score equals diffusers' ScoreSdeVeScheduler.step_correct
    (its own noise from the same seed) to float32 rounding; a step size without the factor 2, or the norms
    summed over the batch instead of averaged, is off by O(1)."""
    diffusers = pytest.importorskip("diffusers")
    path = dl.ve_path(0.01, 50.0)
    t, snr = 0.4, 0.16
    x = float(path.sigma(t)) * torch.randn(64, 2, generator=_gen(3)) + M.float()
    score_model = GAUSS.path_model(path, "score")
    ours = dl.langevin_correct(score_model, path, x, t, n_steps=1, snr=snr, prediction="score", generator=_gen(4))
    sched = diffusers.ScoreSdeVeScheduler(snr=snr, sigma_min=0.01, sigma_max=50.0)
    sched.set_timesteps(10)
    score = score_model(x, torch.full((64,), t))
    ref = sched.step_correct(score, x, generator=_gen(4)).prev_sample
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_pc_without_corrector_is_the_reverse_sde():
    path = dl.vp_path()
    model = GAUSS.path_model(path)
    a = dl.pc_sample(model, path, (50, 2), steps=20, corrector_steps=0, generator=_gen(5))
    b = dl.sde_sample(model, path, (50, 2), steps=20, generator=_gen(5))
    assert torch.equal(a, b)


def test_pc_calls_the_network_as_documented():
    calls = []
    path = dl.vp_path()
    oracle = GAUSS.path_model(path)

    def model(x, t, cond=None):
        calls.append(float(t[0]))
        return oracle(x, t)
    dl.pc_sample(model, path, (8, 2), steps=7, corrector_steps=2, predictor="ode", generator=_gen(6))
    assert len(calls) == 7 + 2 * 6


def _spread(ring, x):
    """RMS distance per coordinate to the nearest component mean (the exact mixture's: 0.1)."""
    d = ((x[:, None, :].double() - ring.means[None]) ** 2).sum(-1).min(1).values
    return math.sqrt(float(d.mean()) / 2)


def test_corrector_fixes_the_few_step_ode_on_the_mixture():
    """Oracle: ring mixture (8 components, std 0.1) on a VE path (sigma 0.01 to 5). Euler on the probability-flow
    ODE with 10 steps makes the components too narrow (spread 0.085, exact 0.1; 2000 points, s.e. 0.0011); one
    corrector step per step (snr 0.3) restores it (0.098). Measured (plants too): a corrector with sqrt(eps) instead of
    sqrt(2 eps) in its noise leaves 0.075, one with the score's sign flipped 0.168."""
    ring = dl.ring_mixture()
    path = dl.ve_path(0.01, 5.0)
    model = ring.path_model(path)
    spread = {k: _spread(ring, dl.pc_sample(model, path, (2000, 2), steps=10, corrector_steps=k, snr=0.3,
                                            predictor="ode", generator=_gen(8))) for k in (0, 1)}
    assert spread[0] < 0.1 - 0.01, spread
    assert abs(spread[1] - 0.1) < 0.005, spread


def test_step_size_rule_closed_form():
    score = torch.tensor([[3.0, 4.0], [0.0, 5.0]])          # norms 5, 5
    noise = torch.tensor([[1.0, 0.0], [0.0, 2.0]])          # norms 1, 2
    assert dl.langevin_step_size(score, noise, 0.5) == pytest.approx(2 * (0.5 * 1.5 / 5) ** 2)


def test_bad_input():
    path = dl.vp_path()
    model = GAUSS.path_model(path)
    with pytest.raises(ValueError, match="snr"):
        dl.pc_sample(model, path, (4, 2), snr=0)
    with pytest.raises(ValueError, match="predictor"):
        dl.pc_sample(model, path, (4, 2), predictor="heun")
    with pytest.raises(ValueError, match="corrector_steps"):
        dl.pc_sample(model, path, (4, 2), corrector_steps=-1)
    with pytest.raises(TypeError, match="path"):
        dl.pc_sample(model, "vp", (4, 2))
    with pytest.raises(ValueError, match="t must be"):
        dl.langevin_correct(model, path, torch.zeros(4, 2), 0.0)
    with pytest.raises(ValueError, match="n_steps"):
        dl.langevin_correct(model, path, torch.zeros(4, 2), 0.5, n_steps=0)
    with pytest.raises(ValueError, match="shape"):
        dl.langevin_step_size(torch.ones(4, 2), torch.ones(4, 3), 0.1)
    with pytest.raises(ValueError, match="score is zero"):
        dl.langevin_step_size(torch.zeros(4, 2), torch.ones(4, 2), 0.1)
