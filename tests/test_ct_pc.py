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


# ---- survivors of the mutation run on pc.py (issue 17) --------------------------------------------------------
def _std_normal_eps(path, calls=None):
    """The exact eps-model for data N(0, I) on a VP path (x_t ~ N(0, I) at every t): E[eps | x_t] = sigma_t x_t, so
    the score is -x_t. Records (t, cond) of every call."""
    def model(x, t, cond=None):
        if calls is not None:
            calls.append((float(t[0]), cond))
        return path.sigma(t).to(x.dtype)[:, None] * x
    return model


def _langevin_by_hand(x, score, snr, g):
    """One corrector step (Song et al. 2021, Algorithm 5 with alpha_i = 1): eps = 2 (r mean||z|| / mean||s||)^2."""
    z = torch.randn(x.shape, generator=g, dtype=x.dtype)
    eps = 2 * (snr * float(z.norm(dim=1).mean()) / float(score.norm(dim=1).mean())) ** 2
    return x + eps * score + math.sqrt(2 * eps) * z


@pytest.mark.parametrize("predictor", ["sde", "ode"])
def test_pc_sample_replays_by_hand_with_the_default_corrector(predictor):
    """Algorithm 1 written out in float64 for data N(0, I) on VP (score -x, x0_hat = (x - sigma^2 x) / alpha), with
    the default corrector (one step, snr 0.16), over t_max = 1 ... t_min = 1e-3 (4 uniform times) and then 0:
    predictor x + (f x - g^2 s) h + sqrt(-g^2 h) z (SDE) or x + h (alpha' x0_hat + sigma' eps) (ODE), h = t_next - t,
    then the Langevin step at t_next unless t_next = 0, where the step returns x0_hat. The given x_T is the start,
    cond reaches every call, all noise is float64 from `generator`, the callback reports each step."""
    path = dl.vp_path()
    x_T = torch.randn(6, 2, generator=_gen(80), dtype=torch.float64)
    cond, calls, seen = torch.tensor([0, 1, 0, 1, 0, 1]), [], []
    out = dl.pc_sample(_std_normal_eps(path, calls), path, (6, 2), steps=4, predictor=predictor, cond=cond,
                       generator=_gen(81), x_T=x_T, callback=seen.append)
    ts = torch.linspace(1.0, 1e-3, 4, dtype=torch.float64).tolist() + [0.0]
    g, x, expected = _gen(81), x_T.clone(), []
    for i in range(4):
        t, tn = ts[i], ts[i + 1]
        tt = torch.tensor(t, dtype=torch.float64)
        a, s, da, ds, f, g2 = (float(v(tt)) for v in (path.alpha, path.sigma, path.d_alpha, path.d_sigma, path.f, path.g2))
        x0 = (x - s * s * x) / a
        if tn == 0:
            x_new = x0
        else:
            h = tn - t
            if predictor == "sde":
                x_new = x + (f * x + g2 * x) * h + math.sqrt(-g2 * h) * torch.randn(6, 2, generator=g, dtype=torch.float64)
            else:
                x_new = x + h * (da * x0 + ds * s * x)
            x_new = _langevin_by_hand(x_new, -x_new, 0.16, g)
        expected.append((i, t, tn, x_new, x0))
        x = x_new
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)
    assert len(calls) == 7 and all(c is cond for _, c in calls)
    assert [(c["i"], c["t"], c["t_next"]) for c in seen] == [e[:3] for e in expected]
    for c, e in zip(seen, expected):
        assert set(c) == {"i", "t", "t_next", "x", "x0_hat"}
        torch.testing.assert_close(c["x"], e[3], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c["x0_hat"], e[4], rtol=1e-10, atol=1e-10)


def test_pc_sample_defaults_and_a_single_step():
    """Defaults: 100 predictor steps and 1 corrector step after each but the last, 100 + 99 = 199 calls; steps = 1 is
    allowed: the one step goes to t = 0 and returns x0_hat = (x - sigma^2 x) / alpha = alpha x at t_max (VP)."""
    path, calls = dl.vp_path(), []
    dl.pc_sample(_std_normal_eps(path, calls), path, (2, 2), generator=_gen(82))
    assert len(calls) == 199
    x_T = torch.randn(3, 2, generator=_gen(83), dtype=torch.float64)
    out = dl.pc_sample(_std_normal_eps(path), path, (3, 2), steps=1, x_T=x_T)
    torch.testing.assert_close(out, float(path.alpha(1.0)) * x_T, rtol=1e-9, atol=1e-12)     # 1 - sigma^2 cancels


def test_langevin_correct_defaults_replayed_by_hand_where_sigma_is_1():
    """The default corrector (one step, snr 0.16) in float64 on VE(0.01, 1) at t = 1, where sigma = 1, alpha = 1
    (allowed: the score is undefined only where sigma or alpha is 0). Data N(0, I): x_t ~ N(0, 2 I), eps_hat =
    x / 2, score -x / 2; cond reaches the model."""
    path, calls = dl.ve_path(0.01, 1.0), []

    def model(x, t, cond=None):
        calls.append(cond)
        return path.sigma(t).to(x.dtype)[:, None] * x / (1 + path.sigma(t).to(x.dtype)[:, None] ** 2)
    x = math.sqrt(2) * torch.randn(5, 2, generator=_gen(84), dtype=torch.float64)
    cond = torch.tensor([1, 0, 1, 0, 1])
    out = dl.langevin_correct(model, path, x, 1.0, cond=cond, generator=_gen(85))
    torch.testing.assert_close(out, _langevin_by_hand(x, -x / 2, 0.16, _gen(85)), rtol=1e-12, atol=1e-12)
    assert len(calls) == 1 and calls[0] is cond


def test_step_size_rule_for_a_small_score():
    """Mean score norm below 1 (0.5) is a valid score: eps = 2 (r mean||z|| / mean||s||)^2 = 2 (0.5 * 1.5 / 0.5)^2."""
    score = torch.tensor([[0.3, 0.4], [0.0, 0.5]])          # norms 0.5, 0.5
    noise = torch.tensor([[1.0, 0.0], [0.0, 2.0]])          # norms 1, 2
    assert dl.langevin_step_size(score, noise, 0.5) == pytest.approx(2 * (0.5 * 1.5 / 0.5) ** 2)


def _m(x, t, cond=None):
    return torch.zeros_like(x)


_SNR = r"^snr must be in \(0, inf\], got {}$"


@pytest.mark.parametrize("call, match", [
    (lambda: dl.pc_sample(_m, dl.vp_path(), (4, 2), steps=0), r"^steps must be an integer in \[1, inf\], got 0$"),
    (lambda: dl.pc_sample(_m, dl.vp_path(), (4, 2), corrector_steps=-1),
     r"^corrector_steps must be an integer in \[0, inf\], got -1$"),
    (lambda: dl.pc_sample(_m, dl.vp_path(), (4, 2), snr=0.0), _SNR.format("0.0")),
    (lambda: dl.pc_sample(_m, dl.linear_path(), (4, 2)), r"^prediction 'eps' cannot give x0 where alpha\(t\) = 0 "
                                                         r"\(t_max = 1.0\); use a path with t_max < 1"),
    (lambda: dl.pc_sample(_m, dl.vp_path(), (4, 2), callback=5), r"^callback must be callable or None, got int$"),
    (lambda: dl.langevin_step_size(torch.ones(4, 2), torch.ones(4, 2), 0.0), _SNR.format("0.0")),
    (lambda: dl.langevin_step_size(torch.ones(4, 2), torch.ones(4, 2), -1.0), _SNR.format("-1.0")),
    (lambda: dl.langevin_step_size([[1.0, 1.0]], torch.ones(1, 2), 0.1), r"^score must be a torch.Tensor, got list$"),
    (lambda: dl.langevin_step_size(torch.ones(1, 2), [[1.0, 1.0]], 0.1), r"^noise must be a torch.Tensor, got list$"),
    (lambda: dl.langevin_step_size(torch.zeros(4, 2), torch.ones(4, 2), 0.1),
     r"^score is zero for the whole batch: the SNR rule gives no step size$"),
    (lambda: dl.langevin_correct(_m, dl.vp_path(), [[1.0, 1.0]], 0.5), r"^x must be a torch.Tensor, got list$"),
    (lambda: dl.langevin_correct(_m, dl.vp_path(), torch.zeros(4, 2), 1.5), r"^t must be in \(0, 1\], got 1.5$"),
    (lambda: dl.langevin_correct(_m, dl.vp_path(), torch.zeros(4, 2), 0.5, n_steps=0),
     r"^n_steps must be an integer in \[1, inf\], got 0$"),
    (lambda: dl.langevin_correct(_m, dl.vp_path(), torch.zeros(4, 2), 0.5, snr=0.0), _SNR.format("0.0")),
    (lambda: dl.langevin_correct(_m, dl.linear_path(), torch.zeros(4, 2), 1.0, prediction="x0"),
     r"^t = 1.0 has sigma\(t\) = 1, alpha\(t\) = 0: the score is undefined there$"),
])
def test_pc_bad_input_messages_found_by_mutation(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("bad_call", [0, 1, 3, 4])
def test_broken_model_is_reported_at_its_predictor_step(bad_call):
    """Calls of pc_sample(steps=3, corrector_steps=1): predictor 0, corrector 0, predictor 1, corrector 1, predictor 2
    (the denoising step, no corrector). A NaN at call k is reported with its predictor step and the t of that call;
    langevin_correct reports its only step as 0."""
    path, ts = dl.vp_path(), []

    def model(x, t, cond=None):
        ts.append(float(t[0]))
        return x * float("nan") if len(ts) == bad_call + 1 else torch.zeros_like(x)
    with pytest.raises(ValueError) as err:
        if bad_call == 0:
            dl.langevin_correct(model, path, torch.ones(4, 2), 0.5)
        else:
            dl.pc_sample(model, path, (4, 2), steps=3, generator=_gen(86))
    step = {0: 0, 1: 0, 3: 1, 4: 2}[bad_call]
    assert str(err.value) == (f"model output at step {step} (t = {ts[-1]:.4g}) is not finite (NaN or inf): "
                              "the model is broken or diverged")


def test_pc_parameterless_model_samples_on_the_given_device():
    """device= is where a model without parameters is sampled (simulated accelerator of test_device_discipline)."""
    from test_device_discipline import FAKE, OnDevice, run_on_device
    out, rec = run_on_device(lambda: dl.pc_sample(lambda x, t, cond=None: 0.5 * x, dl.vp_path(), (4, 2), steps=3,
                                                  generator=_gen(87), device=FAKE))
    assert isinstance(out, OnDevice) and not rec.float64
