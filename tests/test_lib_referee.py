"""Library items from the referee's reading (issue 18): DDIM's eta bound, the DDPM-as-score wrapper
(the sigma it divides by, the log-SNR ladder) and annealed Langevin's step in Song & Ermon's form.
Each test names the wrong formula it catches."""
import math

import numpy as np
import pytest
import torch

import diffusion_lab as dl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _eta_bound(ab, ab_prev):
    # 1 - ab_prev - sigma^2 >= 0 with sigma^2 = eta^2 (1 - ab_prev)/(1 - ab) (1 - ab/ab_prev)
    # <=> eta^2 <= (1 - ab) ab_prev / (ab_prev - ab), written out from Song et al. 2021, Eq. 16.
    return math.sqrt((1 - ab) * ab_prev / (ab_prev - ab))


# ---------------------------------------------------------------------------------------
# ddim_step: too large an eta raises instead of clamping the direction's variance at 0


def test_ddim_step_raises_above_the_eta_bound_and_names_it():
    s = dl.linear_schedule()
    ab = s.alpha_bars
    xt, eps, z = (torch.randn(4, 2, generator=_gen(i)) for i in range(3))
    for t, t_prev in [(999, 979), (500, 499), (100, 0), (20, 10)]:
        bound = _eta_bound(float(ab[t]), float(ab[t_prev]))
        assert bound > 1
        dl.ddim_step(s, xt, eps, t, t_prev, eta=bound * (1 - 1e-9), noise=z)       # just inside: fine
        # The old code clamped 1 - ab_prev - sigma^2 at 0 and returned x_prev with variance
        # sigma^2 > 1 - ab_prev; a wrong bound (e.g. eta <= 1) fails one of the two calls.
        with pytest.raises(ValueError, match=r"eta must be <= ([0-9.]+) .*got eta = ") as err:
            dl.ddim_step(s, xt, eps, t, t_prev, eta=bound * (1 + 1e-6), noise=z)
        stated = float(err.value.args[0].split("eta must be <= ")[1].split(" ")[0])
        assert stated == pytest.approx(bound, rel=1e-5)


def test_ddim_step_at_eta_one_never_trips_on_rounding():
    # eta = 1 is inside the bound everywhere (bound >= 1); 1 - ab_prev - sigma^2 can round to -1e-17.
    for s in [dl.linear_schedule(), dl.cosine_schedule()]:
        x = torch.randn(1000, 1, generator=_gen(4), dtype=torch.float64)
        t = torch.arange(1, 1000)
        for stride in [1, 7, 50]:
            tt, tp = t[stride - 1:], t[stride - 1:] - stride
            out = dl.ddim_step(s, x[:tt.numel()], x[:tt.numel()], tt, tp, eta=1.0, noise=x[:tt.numel()])
            assert bool(torch.isfinite(out).all())
        # the last step (ab_prev = 1) has sigma = 0, so any eta is allowed there
        dl.ddim_step(s, x[:3], x[:3], 5, -1, eta=10.0, noise=x[:3])
        # exactly at the bound, 1 - ab_prev - sigma^2 rounds to as low as -9e-15 (about a third of all
        # pairs round below 0): the documented tolerance must absorb that (a zero tolerance fails here)
        ab = s.alpha_bars
        for t in range(1, 1000, 37):
            for t_prev in range(0, t, 11):
                eta = _eta_bound(float(ab[t]), float(ab[t_prev]))
                dl.ddim_step(s, x[:2], x[:2], t, t_prev, eta=eta, noise=x[:2])


def test_ddim_step_at_the_bound_keeps_the_marginal():
    # Closed form: with x_t = sqrt(ab) x0 + sqrt(1 - ab) e and the true e, x_prev has variance 1 - ab_prev
    # around sqrt(ab_prev) x0 for every allowed eta; at the bound the direction term vanishes.
    s = dl.linear_schedule()
    t, t_prev = 600, 400
    ab, ab_prev = float(s.alpha_bars[t]), float(s.alpha_bars[t_prev])
    n = 200_000
    e, z = torch.randn(n, 1, generator=_gen(5), dtype=torch.float64), torch.randn(n, 1, generator=_gen(6), dtype=torch.float64)
    x0 = 0.7
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * e
    out = dl.ddim_step(s, xt, e, t, t_prev, eta=_eta_bound(ab, ab_prev), noise=z)
    var = out.var().item()
    # SE of a sample variance: v sqrt(2/n) = 0.3% of v; 5 SE. Clamping eta = 1.5 x the bound would give 2.25 x.
    assert abs(var / (1 - ab_prev) - 1) < 5 * math.sqrt(2 / n)
    assert abs(out.mean().item() - math.sqrt(ab_prev) * x0) < 5 * math.sqrt((1 - ab_prev) / n)


# ---------------------------------------------------------------------------------------
# ddpm_score_model: divide by the looked-up timestep's sigma


def test_ddpm_score_model_divides_by_the_sigma_of_the_timestep_it_uses():
    s = dl.linear_schedule(T=10, beta_start=0.05, beta_end=0.3)   # a coarse table: entries far apart
    table = (1 - s.alpha_bars).sqrt()
    gm = dl.GaussianMixture(torch.tensor([[1.0, -0.5], [-1.0, 0.8]]), stds=torch.tensor([0.4, 0.6]))
    score_model = dl.ddpm_score_model(gm.eps_model(s), s)
    x = torch.randn(6, 2, generator=_gen(7), dtype=torch.float64)
    # requests between table entries, nearer to t = 2, 3, 5 (not on them)
    ts = [2, 3, 5, 2, 3, 5]
    req = torch.tensor([0.7 * table[t] + 0.3 * table[t + 1] for t in ts], dtype=torch.float64)
    out = score_model(x, req)
    for i, t in enumerate(ts):
        ab = s.alpha_bars[t]
        exact = gm.score(x[i:i + 1], scale=ab.sqrt(), var=1 - ab)       # score of the marginal q_t
        torch.testing.assert_close(out[i:i + 1], exact, rtol=1e-5, atol=1e-6)
    # dividing by the requested sigma instead is off by sigma / table[t], here 2.7% to 6.5%
    assert float((req / table[ts]).sub(1).abs().min()) > 0.02


# ---------------------------------------------------------------------------------------
# the log-SNR ladder


def test_log_snr_timesteps_against_numpy():
    # (the cosine schedule's log-SNR plunges in its last steps, so 10 levels collide at t = 999 there:
    # that case raises, see the bad-input test)
    for s in [dl.linear_schedule(), dl.linear_schedule(T=50, beta_start=1e-3, beta_end=0.1)]:
        ab = s.alpha_bars.numpy()
        lsnr = np.log(ab) - np.log1p(-ab)                    # independent: numpy, log form
        for n, t_min in [(10, 0), (6, 3), (1, 0), (2, 0)]:
            ts = dl.log_snr_timesteps(s, n, t_min)
            targets = np.linspace(lsnr[-1], lsnr[t_min], n)
            expect = np.abs(lsnr[None, :] - targets[:, None]).argmin(1)
            assert ts.tolist() == expect.tolist()
            assert ts[0] == s.T - 1 and (n == 1 or ts[-1] == t_min)
            torch.testing.assert_close(dl.log_snr_sigmas(s, n, t_min).double(),
                                       torch.from_numpy(np.sqrt(1 - ab[expect])), rtol=1e-6, atol=0)
    # evenly spaced in log-SNR, not in t (a linspace in t would give 999, 888, ..., 0)
    assert dl.log_snr_timesteps(dl.linear_schedule(), 10).tolist() == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]


def test_log_snr_ladder_drives_annealed_langevin_to_the_target():
    # Oracle: the exact eps of a Gaussian, viewed as a score, on the log-SNR ladder to t = 0 must
    # land on q_0 = N(sqrt(ab_0) mu, ab_0 s^2 + 1 - ab_0). The even-in-t ladder (ddpm_sigmas) jumps from
    # sigma 0.36 to 0.01 in its last step and leaves the spread too wide at the same budget.
    s = dl.linear_schedule()
    mu, sd = torch.tensor([[1.0, -1.0]]), 0.3
    gm = dl.GaussianMixture(mu, stds=torch.tensor([sd]))
    score = dl.ddpm_score_model(gm.eps_model(s), s)
    ab0 = float(s.alpha_bars[0])
    v0 = ab0 * sd ** 2 + 1 - ab0
    # eta = 1.5e-4 at sigma_L = 0.01 (1.5 at sigma = 1, still stable for the N(0, 1) there); 100 steps a level.
    n, step = 1500, 1.5e-4
    spreads = {}
    for name, ladder in [("log-snr", dl.log_snr_sigmas(s, 10)), ("even-t", dl.ddpm_sigmas(s, 10))]:
        x = dl.annealed_langevin_sample(score, ladder, torch.randn(n, 2, generator=_gen(8)), step, 100,
                                        generator=_gen(9))
        spreads[name] = x.std(0)
    # SE of a sample std: sd / sqrt(2n) ~ 1.8%; 5 SE plus ULA's bias (eta / 4 v0 ~ 4e-4).
    assert bool(((spreads["log-snr"] / math.sqrt(v0) - 1).abs() < 5 / math.sqrt(2 * n) + 1e-3).all())
    assert bool((spreads["even-t"] > 1.2 * math.sqrt(v0)).all())


def test_log_snr_timesteps_bad_input():
    s = dl.linear_schedule(T=10, beta_start=0.01, beta_end=0.2)
    with pytest.raises(ValueError, match="n"):
        dl.log_snr_timesteps(s, 0)
    with pytest.raises(ValueError, match="n"):
        dl.log_snr_timesteps(s, 9, t_min=2)               # only 8 timesteps in [2, 9]
    with pytest.raises(ValueError, match="t_min"):
        dl.log_snr_timesteps(s, 3, t_min=10)
    with pytest.raises(TypeError, match="n"):
        dl.log_snr_timesteps(s, 2.5)
    with pytest.raises(TypeError, match="schedule"):
        dl.log_snr_sigmas("linear", 3)
    with pytest.raises(ValueError, match=r"n = 60 .*same timestep"):
        dl.log_snr_timesteps(dl.linear_schedule(), 60)   # log-SNR falls by ~0.8 from t = 0 to 1: levels collide
    with pytest.raises(ValueError, match="same timestep t = 999"):
        dl.log_snr_timesteps(dl.cosine_schedule(), 10)   # its log-SNR drops steeply at the noisy end


# ---------------------------------------------------------------------------------------
# annealed Langevin: the step is eta_i = alpha_i / 2 of Song & Ermon's Algorithm 1


def test_annealed_langevin_is_algorithm_1_with_epsilon_twice_step_size():
    # Algorithm 1 written in the paper's own form: alpha_i = epsilon sigma_i^2 / sigma_L^2,
    # x <- x + alpha_i / 2 s + sqrt(alpha_i) z. The package's step_size must be epsilon / 2;
    # a library that used alpha_i = step_size ... as the eta-form step would differ by a factor 2.
    sigmas = torch.tensor([1.0, 0.5, 0.2])
    score = lambda x, sg: -x / (0.3 ** 2 + sg[:, None] ** 2)
    x0 = torch.randn(64, 2, generator=_gen(10))
    epsilon = 2e-3
    gen = _gen(11)
    x = x0.clone()
    for sg in sigmas.tolist():
        alpha = epsilon * sg ** 2 / sigmas[-1].item() ** 2
        for _ in range(4):
            x = x + alpha / 2 * score(x, torch.full((64,), sg)) + math.sqrt(alpha) * torch.randn(x.shape, generator=gen)
    lib = dl.annealed_langevin_sample(score, sigmas, x0, dl.langevin_delta_to_eta(epsilon), 4, generator=_gen(11))
    torch.testing.assert_close(lib, x, rtol=1e-6, atol=1e-6)
