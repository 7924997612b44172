"""Score side: Langevin and annealed Langevin against exact scores, denoising score matching on
data whose optimal score is known, the eps <-> score bridge, and bad input."""
import math
import re

import pytest
import torch

import diffusion_lab as dl

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
PREC = torch.linalg.inv(COV)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gauss_score(x):
    # grad log N(x; MU, COV) = -COV^{-1} (x - MU), written out independently of the library.
    return -(x.double() - MU) @ PREC.T


def _assert_gaussian_moments(x, mean, cov, bias=0.0):
    # Gaussian sampling theory: mean SE sqrt(C_ii / n), covariance SE sqrt((C_ii C_jj + C_ij^2) / n);
    # 5 SE bands (fixed seeds), plus a relative allowance `bias` for a known approximation.
    x = x.double()
    n = x.shape[0]
    sd = cov.diagonal().sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * sd / math.sqrt(n) + bias * sd).all()), (x.mean(0), mean)
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov ** 2) / n).sqrt()
    c = torch.cov(x.T)
    assert bool(((c - cov).abs() < 5 * se + bias * sd[:, None] * sd[None, :]).all()), (c, cov)


# ---------------------------------------------------------------------------------------
# Langevin
# ---------------------------------------------------------------------------------------
def test_langevin_step_by_hand():
    h = 0.03
    x = torch.randn(5, 2, generator=_gen(0))
    out = dl.langevin_sample(lambda y: -y, x, h, 3, generator=_gen(1))
    g = _gen(1)
    y = x.clone()
    for _ in range(3):
        y = y + h * (-y) + math.sqrt(2 * h) * torch.randn(5, 2, generator=g)
    torch.testing.assert_close(out, y)


def test_langevin_on_an_exact_gaussian_score_reaches_its_stationary_law():
    # Unadjusted Langevin on N(mu, Sigma) with step h is a Gaussian AR(1) chain whose stationary
    # covariance is exactly Sigma (I - h Sigma^{-1} / 2)^{-1} (it tends to Sigma as h -> 0).
    # 600 steps contract the start by (1 - h / 1.51)^600 < 1e-8; 4000 chains, 5 SE bands.
    h = 0.05
    stationary = COV @ torch.linalg.inv(torch.eye(2, dtype=torch.float64) - h * PREC / 2)
    x = dl.langevin_sample(_gauss_score, torch.zeros(4000, 2, dtype=torch.float64), h, 600, generator=_gen(2))
    _assert_gaussian_moments(x, MU, stationary)
    assert float((stationary - COV).abs().max()) < 0.05  # and that law is close to the target


def test_langevin_with_the_mixture_oracle_score_recovers_the_gaussian():
    # Same chain driven by GaussianMixture.score (the oracle); small step h = 0.01, so the
    # stationary covariance is within 1% of Sigma (formula above): 5 SE + 1%.
    gm = dl.GaussianMixture(MU[None], covs=COV[None])
    x = dl.langevin_sample(gm.score, torch.zeros(2000, 2), 0.01, 1500, generator=_gen(3))
    _assert_gaussian_moments(x, MU, COV, bias=0.01)


def test_langevin_callback_and_zero_steps():
    calls = []
    x = torch.zeros(3, 2)
    out = dl.langevin_sample(lambda y: -y, x, 0.1, 4, generator=_gen(4), callback=calls.append)
    assert [c["i"] for c in calls] == [0, 1, 2, 3] and torch.equal(calls[-1]["x"], out)
    assert torch.equal(dl.langevin_sample(lambda y: -y, x, 0.1, 0), x)


def test_annealed_langevin_by_hand():
    sigmas = torch.tensor([1.0, 0.5, 0.2])
    seen = []

    def score_model(x, sigma):
        seen.append(sigma.clone())
        return -x / (1 + sigma[:, None] ** 2)

    x = torch.randn(4, 2, generator=_gen(5))
    out = dl.annealed_langevin_sample(score_model, sigmas, x, 0.01, 2, generator=_gen(6))
    g = _gen(6)
    y = x.clone()
    for s in sigmas.tolist():
        a = 0.01 * s ** 2 / 0.2 ** 2  # step alpha_i = step_size sigma_i^2 / sigma_L^2 (Song & Ermon 2019, Alg. 1)
        for _ in range(2):
            y = y + a * (-y / (1 + s ** 2)) + math.sqrt(2 * a) * torch.randn(4, 2, generator=g)
    torch.testing.assert_close(out, y)
    assert len(seen) == 6 and all(v.shape == (4,) for v in seen)
    assert [float(v[0]) for v in seen] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.2, 0.2])


def test_annealed_langevin_with_the_exact_noise_score_recovers_a_two_mode_mixture():
    # Target at the last level is p_{sigma_L} = mixture * N(0, sigma_L^2 I). Weights 0.7 / 0.3:
    # plain Langevin could not move mass between the modes, annealing must. The approximation
    # (finite steps per level, ULA bias) measured with 20000 chains: weight off by <= 0.01 and
    # covariance by ~1%; with n = 2000 we allow 5 SE + 3% (moments) and 5 SE + 0.01 (weights).
    gm = dl.GaussianMixture([[-1.5, 0.0], [1.5, 0.5]], stds=[0.5, 0.5], weights=[0.7, 0.3], labels=[0, 1])
    sigmas = dl.geometric_sigmas(3.0, 0.1, 8)
    x0 = 3 * torch.randn(2000, 2, generator=_gen(7))
    x = dl.annealed_langevin_sample(gm.noise_score_model(), sigmas, x0, 0.005, 100, generator=_gen(8))
    n = x.shape[0]
    frac = gm.class_log_probs(x).argmax(1).double().mean().item()
    assert abs(frac - 0.3) < 5 * math.sqrt(0.21 / n) + 0.01, frac
    target_cov = gm.covariance() + 0.1 ** 2 * torch.eye(2, dtype=torch.float64)
    xd = x.double()
    sd = target_cov.diagonal().sqrt()
    assert bool(((xd.mean(0) - gm.mean()).abs() < 5 * sd / math.sqrt(n) + 0.03 * sd).all()), xd.mean(0)
    ref = gm.sample(100_000, _gen(9))[0].double() + 0.1 * torch.randn(100_000, 2, generator=_gen(10), dtype=torch.float64)
    r = ref - gm.mean()
    se = (r[:, :, None] * r[:, None, :]).std(0) / math.sqrt(n)
    assert bool(((torch.cov(xd.T) - target_cov).abs() < 5 * se + 0.03 * sd[:, None] * sd[None, :]).all())


def test_geometric_sigmas():
    s = dl.geometric_sigmas(5.0, 0.01, 10)
    assert s.shape == (10,)
    assert float(s[0]) == pytest.approx(5.0) and float(s[-1]) == pytest.approx(0.01)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.01 / 5.0) ** (1 / 9)), rtol=1e-5, atol=0)
    assert float(dl.geometric_sigmas(2.0, 2.0, 1)[0]) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------
# denoising score matching
# ---------------------------------------------------------------------------------------
def test_dsm_loss_is_zero_for_the_exact_score_of_a_point_mass():
    # Data all equal to c: p_sigma = N(c, sigma^2 I) and its score -(x - c) / sigma^2 equals the
    # DSM target -z / sigma exactly, whatever sigma each sample draws.
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    exact = lambda x, sigma: -(x - c) / sigma[:, None] ** 2  # noqa: E731
    loss = dl.dsm_loss(exact, c.expand(128, 3).clone(), [0.1, 0.5, 2.0], generator=_gen(11))
    assert loss.ndim == 0 and loss.item() < 1e-20


def test_dsm_loss_of_the_gaussian_oracle_matches_theory():
    # Data N(0, I): p_sigma = N(0, (1 + sigma^2) I), exact score -x / (1 + sigma^2). Then
    # sigma s + z = (z - sigma x) / (1 + sigma^2) has variance 1 / (1 + sigma^2) per coordinate,
    # while the zero score leaves z (variance 1). So loss(oracle) / loss(0) = mean_i 1 / (1 + sigma_i^2),
    # whatever the loss's constant factors. n = 8192 * 2 squared normals: SE of each mean
    # < sqrt(2 / n) = 0.011 relative; 5 SE on the ratio => 0.08 relative (generous: both use the same draws).
    sigmas = [0.2, 1.0, 3.0]
    x = torch.randn(8192, 2, generator=_gen(12), dtype=torch.float64)
    oracle = lambda y, sigma: -y / (1 + sigma[:, None] ** 2)  # noqa: E731
    zero = lambda y, sigma: torch.zeros_like(y)  # noqa: E731
    ratio = dl.dsm_loss(oracle, x, sigmas, generator=_gen(13)).item() / dl.dsm_loss(zero, x, sigmas, generator=_gen(13)).item()
    expected = sum(1 / (1 + s ** 2) for s in sigmas) / 3
    assert abs(ratio - expected) < 0.08 * expected


def test_dsm_loss_absolute_value_zero_score_and_oracle():
    # The docstring's convention: loss = mean_batch 1/2 sigma^2 ||s + z / sigma||^2, summed over
    # the D dimensions. The zero score leaves 1/2 ||z||^2, so E[loss] = D / 2 whatever the data
    # and sigma; the exact score of N(0, I) data noised to N(0, (1 + sigma^2) I) leaves
    # (z - sigma x) / (1 + sigma^2), so E[loss] = D / 2 * mean_i 1 / (1 + sigma_i^2).
    # Dropping the 1/2 doubles both; a mean over dimensions divides them by D = 3.
    # Per sample ||.||^2 / 2 has variance <= D / 2 = 1.5: with n = 8192 the SE is < 0.014; 5 SE => 0.07.
    D, n = 3, 8192
    sigmas = [0.2, 1.0, 3.0]
    x = torch.randn(n, D, generator=_gen(30), dtype=torch.float64)
    zero = lambda y, sigma: torch.zeros_like(y)  # noqa: E731
    oracle = lambda y, sigma: -y / (1 + sigma[:, None] ** 2)  # noqa: E731
    assert abs(dl.dsm_loss(zero, x, sigmas, generator=_gen(31)).item() - D / 2) < 0.07
    expected = D / 2 * sum(1 / (1 + s ** 2) for s in sigmas) / 3
    assert abs(dl.dsm_loss(oracle, x, sigmas, generator=_gen(32)).item() - expected) < 0.07


def test_dsm_loss_weighting_is_sigma_squared():
    # With lambda(sigma) = sigma^2, a score that is off by a constant vector d at noise level
    # sigma costs (proportionally) sigma^2 |d|^2 on top of the minimum: check the ratio between levels.
    c = torch.zeros(1, 2, dtype=torch.float64).expand(4096, 2).clone()
    d = torch.tensor([0.3, -0.4], dtype=torch.float64)
    off = lambda x, sigma: -(x - c) / sigma[:, None] ** 2 + d  # noqa: E731
    l_small = dl.dsm_loss(off, c, [0.5], generator=_gen(14)).item()
    l_big = dl.dsm_loss(off, c, [2.0], generator=_gen(14)).item()
    assert l_big / l_small == pytest.approx((2.0 / 0.5) ** 2, rel=1e-9)


def test_dsm_loss_deterministic_and_differentiable():
    net = dl.ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8)
    x = torch.randn(32, 2, generator=_gen(15))
    a = dl.dsm_loss(net, x, [0.1, 1.0], generator=_gen(16))
    b = dl.dsm_loss(net, x, [0.1, 1.0], generator=_gen(16))
    assert a.item() == b.item()
    a.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_score_mlp_shapes_and_sigma_scaling():
    net = dl.ScoreMLP(dim=3, hidden=16, depth=2, emb_dim=8)
    x = torch.randn(5, 3, generator=_gen(17))
    out = net(x, torch.full((5,), 0.3))
    assert out.shape == (5, 3) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(net(x, 0.3), out)  # a scalar sigma broadcasts
    # s(x, sigma) = f(x, log sigma) / sigma. Zero the last layer of the sigma embedding: then f no
    # longer depends on sigma, and sigma * s(x, sigma) must be the same for every sigma. Without
    # the 1/sigma output scaling the products would differ by the factor sigma (here up to 1e4).
    with torch.no_grad():
        net.emb[-1].weight.zero_()
        net.emb[-1].bias.zero_()
        sig = torch.tensor([0.01, 0.3, 1.0, 4.0, 100.0])
        f = [s_ * net(x, s_) for s_ in sig]
    for fi in f[1:]:
        torch.testing.assert_close(fi, f[0], rtol=1e-5, atol=1e-6)
    assert float(f[0].abs().max()) > 1e-2   # f is not trivially zero
    # per-row sigma: row i is scaled by its own 1 / sigma_i
    with torch.no_grad():
        rows = net(x, sig)
    torch.testing.assert_close(rows * sig[:, None], f[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# eps <-> score
# ---------------------------------------------------------------------------------------
def test_eps_to_score_recovers_the_exact_marginal_score():
    s = dl.linear_schedule()
    gm = dl.ring_mixture(4, radius=1.5, std=0.3)
    x = torch.randn(6, 2, generator=_gen(18), dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    score = dl.eps_to_score(gm.eps_model(s)(x, t), s, t)
    ab = s.alpha_bars[t]
    for i in range(6):
        exact = gm.score(x[i:i + 1], scale=ab[i].sqrt(), var=1 - ab[i])
        torch.testing.assert_close(score[i:i + 1], exact)


def test_ddpm_score_model_and_ddpm_sigmas():
    s = dl.linear_schedule()
    sig = dl.ddpm_sigmas(s, 5)
    ts = [999, 749, 500, 250, 0]
    torch.testing.assert_close(sig.double(), (1 - s.alpha_bars[ts]).sqrt(), rtol=1e-6, atol=0)
    gm = dl.ring_mixture(4, radius=1.5, std=0.3)
    score_model = dl.ddpm_score_model(gm.eps_model(s), s)
    x = torch.randn(5, 2, generator=_gen(19), dtype=torch.float64)
    out = score_model(x, sig)
    for i, t in enumerate(ts):
        ab = s.alpha_bars[t]
        torch.testing.assert_close(out[i:i + 1], gm.score(x[i:i + 1], scale=ab.sqrt(), var=1 - ab), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
X = torch.zeros(4, 2)
NAN = torch.tensor([[float("nan"), 0.0]] * 4)


def test_langevin_bad_input():
    f = lambda y: -y  # noqa: E731
    for h in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^step_size\b"):
            dl.langevin_sample(f, X, h, 5)
    with pytest.raises(TypeError, match=r"^step_size\b"):
        dl.langevin_sample(f, X, "0.1", 5)
    with pytest.raises(ValueError, match=r"^n_steps\b"):
        dl.langevin_sample(f, X, 0.1, -1)
    with pytest.raises(TypeError, match=r"^n_steps\b"):
        dl.langevin_sample(f, X, 0.1, 2.5)
    with pytest.raises(TypeError, match=r"^score_fn\b"):
        dl.langevin_sample(None, X, 0.1, 5)
    with pytest.raises(ValueError, match=r"^x\b"):
        dl.langevin_sample(f, NAN, 0.1, 5)
    with pytest.raises(ValueError, match=r"^score\b"):
        dl.langevin_sample(lambda y: y[:, :1], X, 0.1, 5)
    with pytest.raises(ValueError, match=r"^score\b"):
        dl.langevin_sample(lambda y: y * float("nan"), X, 0.1, 5)
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.langevin_sample(f, X, 0.1, 5, generator=0)


def test_annealed_langevin_bad_input():
    sm = lambda y, s: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"^sigmas\b"):
        dl.annealed_langevin_sample(sm, [1.0, 0.0], X, 0.1, 5)
    with pytest.raises(ValueError, match=r"^sigmas\b"):
        dl.annealed_langevin_sample(sm, [], X, 0.1, 5)
    with pytest.raises(ValueError, match=r"^sigmas\b"):
        dl.annealed_langevin_sample(sm, [1.0, float("nan")], X, 0.1, 5)
    with pytest.raises(ValueError, match=r"^step_size\b"):
        dl.annealed_langevin_sample(sm, [1.0], X, 0.0, 5)
    with pytest.raises(ValueError, match=r"^n_steps_each\b"):
        dl.annealed_langevin_sample(sm, [1.0], X, 0.1, 0)
    with pytest.raises(TypeError, match=r"^score_model\b"):
        dl.annealed_langevin_sample("model", [1.0], X, 0.1, 5)
    with pytest.raises(ValueError, match=r"^x\b"):
        dl.annealed_langevin_sample(sm, [1.0], NAN, 0.1, 5)


def test_geometric_sigmas_bad_input():
    with pytest.raises(ValueError, match=r"^sigma_max\b"):
        dl.geometric_sigmas(0.0, 0.01, 5)
    with pytest.raises(ValueError, match=r"^sigma_min\b"):
        dl.geometric_sigmas(1.0, -0.01, 5)
    with pytest.raises(ValueError, match=r"^sigma_min\b"):
        dl.geometric_sigmas(1.0, 2.0, 5)
    with pytest.raises(ValueError, match=r"^n\b"):
        dl.geometric_sigmas(1.0, 0.1, 0)


def test_dsm_loss_bad_input():
    sm = lambda y, s: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"^x\b"):
        dl.dsm_loss(sm, NAN, [1.0])
    with pytest.raises(ValueError, match=r"^sigmas\b"):
        dl.dsm_loss(sm, X, [-1.0])
    with pytest.raises(ValueError, match=r"^score_model\b"):
        dl.dsm_loss(lambda y, s: y[:, :1], X, [1.0])
    with pytest.raises(TypeError, match=r"^score_model\b"):
        dl.dsm_loss(None, X, [1.0])
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.dsm_loss(sm, X, [1.0], generator=3)


def test_eps_to_score_and_ddpm_sigmas_bad_input():
    s = dl.linear_schedule(T=10, beta_start=0.01, beta_end=0.2)
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.eps_to_score(X, s, 10)
    with pytest.raises(ValueError, match=r"^n\b"):
        dl.ddpm_sigmas(s, 11)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.eps_to_score(X, "linear", 1)


def test_score_helpers_reject_a_non_schedule():
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddpm_sigmas("linear", 3)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddpm_score_model(lambda x, t, cond=None: x, "linear")


def test_dsm_loss_rejects_a_non_generator():
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.dsm_loss(lambda y, s: -y, X, [1.0], generator=3)


def test_langevin_rejects_a_non_callable_callback():
    with pytest.raises(TypeError, match=r"^callback\b"):
        dl.langevin_sample(lambda y: -y, X, 0.1, 2, callback=5)


def test_annealed_langevin_is_silent_unless_progress_is_asked_for(capsys):
    score = lambda x, sigma: -x / (1 + sigma[:, None] ** 2)  # noqa: E731
    x0 = torch.zeros(4, 2)
    dl.annealed_langevin_sample(score, [1.0, 0.5, 0.1], x0, 0.01, 2, generator=_gen(40))
    assert capsys.readouterr() == ("", "")
    dl.annealed_langevin_sample(score, [1.0, 0.5, 0.1], x0, 0.01, 2, generator=_gen(40), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "annealed Langevin" in err and "3/3" in err
    assert re.search(r"(^|\r)annealed Langevin: ", err), err    # tqdm's label, not a substring of another


def test_dsm_loss_replayed_draw_by_draw_in_float64():
    # dsm_loss draws the sigma index first (uniform over `sigmas`), then z in x's dtype, both from
    # the generator; replayed by hand with a score that depends on sigma.
    g = _gen(50)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigmas = [0.1, 0.7, 2.0]
    score = lambda y, sigma: -0.3 * y / sigma[:, None]  # noqa: E731
    g = _gen(51)
    idx = torch.randint(0, 3, (64,), generator=g)
    z = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sig = torch.tensor(sigmas, dtype=torch.float32)[idx].double()[:, None]
    expected = 0.5 * ((sig * score(x + sig * z, sig[:, 0]) + z) ** 2).sum(1).mean()
    loss = dl.dsm_loss(score, x, sigmas, generator=_gen(51))
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected)


def test_score_mlp_config_and_bad_dim():
    net = dl.ScoreMLP(dim=3, hidden=16, depth=2, emb_dim=8)
    assert net.config == {"dim": 3, "hidden": 16, "depth": 2, "emb_dim": 8}
    assert dl.ScoreMLP(dim=1, hidden=8, depth=1, emb_dim=4)(torch.zeros(2, 1), 1.0).shape == (2, 1)
    with pytest.raises(ValueError, match=r"^dim must be an integer in \[1, inf\], got 0$"):
        dl.ScoreMLP(dim=0)


def test_ddpm_score_model_passes_cond_and_ddpm_sigmas_limits():
    s = dl.linear_schedule(T=20, beta_start=0.01, beta_end=0.3)
    seen = []

    def model(x, t, cond=None):
        seen.append(cond)
        return torch.ones_like(x)
    cond = torch.tensor([0, 1])
    out = dl.ddpm_score_model(model, s, cond=cond)(torch.zeros(2, 2), torch.tensor([0.5, 0.25]))
    assert seen[0] is cond
    # Divided by the sigma of the timestep it looks up (the nearest sqrt(1 - alpha_bar_t)), not by the
    # requested sigma: that is the score of a real marginal q_t (dividing by 0.5 and 0.25 was a bug).
    table = [math.sqrt(1 - float(a)) for a in s.alpha_bars]
    sig_t = [min(table, key=lambda v: abs(v - req)) for req in (0.5, 0.25)]
    assert all(abs(v - req) > 1e-3 for v, req in zip(sig_t, (0.5, 0.25)))   # the two conventions differ here
    torch.testing.assert_close(out, -torch.tensor([[1 / sig_t[0]] * 2, [1 / sig_t[1]] * 2]))
    one = dl.ddpm_sigmas(s, 1)   # n = 1 is allowed: the noisiest level only
    torch.testing.assert_close(one.double(), (1 - s.alpha_bars[-1:]).sqrt(), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"^n must be an integer in \[1, 20\], got 0$"):
        dl.ddpm_sigmas(s, 0)
    with pytest.raises(TypeError, match=r"^model must be callable as model\(x, t, cond=None\), got int$"):
        dl.ddpm_score_model(3, s)
    with pytest.raises(ValueError, match=r"^eps must be finite"):
        dl.eps_to_score(torch.tensor([[float("nan")]]), s, 1)
    with pytest.raises(TypeError, match=r"^score_model must be callable as score_model\(x, sigma\), got int$"):
        dl.dsm_loss(3, torch.zeros(2, 2), [1.0])


def test_geometric_sigmas_defaults_and_exact_bounds():
    torch.testing.assert_close(dl.geometric_sigmas(), torch.exp(torch.linspace(math.log(5.0), math.log(0.01), 10)))
    assert dl.geometric_sigmas(2.0, 2.0, 1).tolist() == pytest.approx([2.0])   # sigma_min = sigma_max, n = 1
    with pytest.raises(ValueError, match=r"^sigma_max must be in \(0, inf\], got 0.0$"):
        dl.geometric_sigmas(0.0, 0.01, 3)
    with pytest.raises(ValueError, match=r"^sigma_min must be in \(0, inf\], got 0.0$"):
        dl.geometric_sigmas(1.0, 0.0, 3)
    with pytest.raises(ValueError, match=r"^n must be an integer in \[1, inf\], got 0$"):
        dl.geometric_sigmas(1.0, 0.1, 0)


def test_langevin_samplers_argument_messages_and_bounds():
    score = lambda x, sigma=None: -x  # noqa: E731
    x = torch.zeros(3, 2)
    dl.annealed_langevin_sample(lambda y, s: -y, [1.0], x, 0.1, 1, generator=_gen(1))   # one step per level is allowed
    with pytest.raises(ValueError, match=r"^step_size must be in \(0, inf\], got 0.0$"):
        dl.annealed_langevin_sample(lambda y, s: -y, [1.0], x, 0.0, 1)
    with pytest.raises(ValueError, match=r"^n_steps_each must be an integer in \[1, inf\], got 0$"):
        dl.annealed_langevin_sample(lambda y, s: -y, [1.0], x, 0.1, 0)
    with pytest.raises(TypeError, match=r"^callback must be callable or None, got int$"):
        dl.annealed_langevin_sample(lambda y, s: -y, [1.0], x, 0.1, 1, callback=3)
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int$"):
        dl.annealed_langevin_sample(lambda y, s: -y, [1.0], x, 0.1, 1, generator=3)
    with pytest.raises(TypeError, match=r"^score_model must be callable as score_model\(x, sigma\), got int$"):
        dl.annealed_langevin_sample(3, [1.0], x, 0.1, 1)
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int$"):
        dl.langevin_sample(score, x, 0.1, 1, generator=3)
    with pytest.raises(TypeError, match=r"^score_fn must be callable, got int$"):
        dl.langevin_sample(3, x, 0.1, 1)
    with pytest.raises(ValueError, match=r"^n_steps must be an integer in \[0, inf\], got -1$"):
        dl.langevin_sample(score, x, 0.1, -1)
    with pytest.raises(ValueError, match=r"\(step 0\)$"):
        dl.langevin_sample(lambda y: y[:, :1], x, 0.1, 1)


# ---------------------------------------------------------------------------------------
# found by mutation testing (issue 17, run of 2026-12-06 08:01): each test names what it pins
# ---------------------------------------------------------------------------------------
def test_score_errors_name_the_step_or_level_and_what_came_back():
    x = torch.zeros(4, 2)
    short = lambda y, *a: y[:, :1]  # noqa: E731
    as_list = lambda y, *a: [0.0]  # noqa: E731
    shape = r"^score must return the input's shape \(4, 2\), got "
    with pytest.raises(ValueError, match=shape + r"\(4, 1\) \(step 0\)$"):
        dl.langevin_sample(short, x, 0.1, 3)
    with pytest.raises(ValueError, match=shape + r"list \(step 0\)$"):
        dl.langevin_sample(as_list, x, 0.1, 3)
    calls = []

    def nan_at_step_2(y):
        calls.append(1)
        return y * float("nan") if len(calls) == 3 else -y
    with pytest.raises(ValueError, match=r"^score returned non-finite values \(step 2\)$"):
        dl.langevin_sample(nan_at_step_2, x, 0.1, 5, generator=_gen(60))
    # annealed: the level is named by its sigma
    with pytest.raises(ValueError, match=shape + r"\(4, 1\) \(sigma = 1\)$"):
        dl.annealed_langevin_sample(short, [1.0, 0.5], x, 0.1, 2)
    with pytest.raises(ValueError, match=shape + r"list \(sigma = 1\)$"):
        dl.annealed_langevin_sample(as_list, [1.0, 0.5], x, 0.1, 2)
    nan_below_1 = lambda y, s: y * float("nan") if float(s[0]) < 1 else -y  # noqa: E731
    with pytest.raises(ValueError, match=r"^score returned non-finite values \(sigma = 0.5\)$"):
        dl.annealed_langevin_sample(nan_below_1, [1.0, 0.5], x, 0.1, 2, generator=_gen(61))


def test_langevin_samplers_check_the_generator_before_any_score_call():
    calls = []

    def score(y, *a):
        calls.append(1)
        return -y
    msg = r"^generator must be a torch.Generator or None, got int$"
    with pytest.raises(TypeError, match=msg):
        dl.langevin_sample(score, X, 0.1, 0, generator=3)       # zero steps: never drawn, still checked
    with pytest.raises(TypeError, match=msg):
        dl.langevin_sample(score, X, 0.1, 2, generator=3)
    with pytest.raises(TypeError, match=msg):
        dl.annealed_langevin_sample(score, [1.0, 0.5], X, 0.1, 2, generator=3)
    assert calls == []


def test_langevin_samplers_replayed_in_float64_draw_float64_noise():
    # The update written out, with the noise drawn from the same seed in float64 (x's dtype): noise
    # drawn in float32 and promoted would be other numbers (and float32-rounded).
    x = torch.randn(5, 2, generator=_gen(62), dtype=torch.float64)
    h = 0.03
    out = dl.langevin_sample(lambda y: -y, x, h, 3, generator=_gen(63))
    g, y = _gen(63), x.clone()
    for _ in range(3):
        y = y + h * (-y) + math.sqrt(2 * h) * torch.randn(5, 2, generator=g, dtype=torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)
    sigmas = [1.0, 0.5]
    out = dl.annealed_langevin_sample(lambda y, s: -y / (1 + s[:, None] ** 2), sigmas, x, 0.01, 2, generator=_gen(64))
    g, y = _gen(64), x.clone()
    for s in sigmas:
        a = 0.01 * s ** 2 / sigmas[-1] ** 2
        for _ in range(2):
            y = y + a * (-y / (1 + s ** 2)) + math.sqrt(2 * a) * torch.randn(5, 2, generator=g, dtype=torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)


def test_annealed_langevin_passes_sigma_in_x_dtype_and_calls_back_with_the_documented_keys():
    # sigma reaches the score model as a (B,) tensor in x's dtype (a float32 sigma would turn the
    # score, and so x, into float32 for a half-precision x); the callback gets {"level", "sigma", "i", "x"}.
    seen, calls = [], []

    def score(y, sigma):
        seen.append((sigma.dtype, sigma.device, tuple(sigma.shape)))
        return -y
    x = torch.zeros(3, 2, dtype=torch.float64)
    out = dl.annealed_langevin_sample(score, [1.0, 0.25], x, 0.01, 2, generator=_gen(65), callback=calls.append)
    assert seen == [(torch.float64, x.device, (3,))] * 4
    assert [sorted(c) for c in calls] == [["i", "level", "sigma", "x"]] * 4
    assert [(c["level"], c["sigma"], c["i"]) for c in calls] == [(0, 1.0, 0), (0, 1.0, 1), (1, 0.25, 0), (1, 0.25, 1)]
    assert calls[-1]["x"] is out and calls[0]["x"].shape == (3, 2)


def test_score_mlp_defaults_and_checkpoint_layout():
    # The documented defaults (dim 2, hidden 128, depth 3, emb_dim 64), and the parameter layout that
    # checkpoints.py saves and loads strictly by name: a reordered or dropped layer orphans saved files.
    assert dl.ScoreMLP().config == {"dim": 2, "hidden": 128, "depth": 3, "emb_dim": 64}
    net = dl.ScoreMLP(dim=3, hidden=16, depth=2, emb_dim=8)
    layout = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("blocks.")}
    assert layout == {"emb.0.weight": (8, 8), "emb.0.bias": (8,), "emb.2.weight": (8, 8), "emb.2.bias": (8,),
                      "inp.weight": (16, 3), "inp.bias": (16,),
                      "out.0.weight": (16,), "out.0.bias": (16,), "out.2.weight": (3, 16), "out.2.bias": (3,)}
    assert {k.split(".")[1] for k in net.state_dict() if k.startswith("blocks.")} == {"0", "1"}
    assert [type(m).__name__ for m in net.emb] == ["Linear", "SiLU", "Linear"]
    assert [type(m).__name__ for m in net.out] == ["LayerNorm", "SiLU", "Linear"]


def test_score_mlp_embeds_100_log_sigma(monkeypatch):
    """The documented embedding input 100 log sigma, which saved checkpoints depend on (issue 17: the factor
    changed to / 100 or * 101 survived every other test)."""
    from diffusion_lab import score as score_module
    seen = []
    real = score_module.timestep_embedding
    monkeypatch.setattr(score_module, "timestep_embedding", lambda t, dim: seen.append(t) or real(t, dim))
    sigma = torch.tensor([0.01, 0.5, 1.0, 50.0])
    dl.ScoreMLP()(torch.zeros(4, 2), sigma)
    torch.testing.assert_close(seen[0], 100 * torch.log(sigma), rtol=1e-6, atol=1e-6)


def test_score_mlp_output_in_x_dtype_for_a_float64_sigma():
    # sigma is cast to x's dtype: a float64 sigma tensor with float32 data must not make the score float64
    # (annealed Langevin would then carry x in float64, which MPS cannot).
    net = dl.ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8)
    x = torch.randn(3, 2, generator=_gen(66))
    with torch.no_grad():
        out64 = net(x, torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64))
        out32 = net(x, torch.tensor([0.1, 0.5, 2.0]))
    assert out64.dtype == torch.float32
    torch.testing.assert_close(out64, out32, rtol=0, atol=0)


def test_ddpm_sigmas_and_log_snr_ladders_defaults_written_out():
    # Defaults n = 10, t_min = 0 on the default linear schedule, computed in plain Python floats:
    # ddpm_sigmas at t = round(999 (1 - k / 9)) = 999, 888, ..., 0; the log-SNR ladder at the timesteps
    # nearest to 10 targets evenly spaced from log SNR(999) to log SNR(0).
    s = dl.linear_schedule()
    betas = s.betas.tolist()
    ab, p = [], 1.0
    for b in betas:
        p *= 1.0 - b
        ab.append(p)
    sig = lambda t: math.sqrt(1.0 - ab[t])  # noqa: E731
    ts = [999 - 111 * k for k in range(10)]
    assert dl.ddpm_sigmas(s).tolist() == pytest.approx([sig(t) for t in ts], rel=1e-6)
    lsnr = [math.log(a / (1.0 - a)) for a in ab]
    targets = [lsnr[-1] + k * (lsnr[0] - lsnr[-1]) / 9 for k in range(10)]
    nearest = [min(range(1000), key=lambda t: abs(lsnr[t] - v)) for v in targets]
    assert nearest[0] == 999 and nearest[-1] == 0
    assert dl.log_snr_timesteps(s).tolist() == nearest
    assert dl.log_snr_sigmas(s).tolist() == pytest.approx([sig(t) for t in nearest], rel=1e-6)


def test_log_snr_timesteps_bounds_messages_and_a_repeated_timestep_at_n_2():
    s = dl.linear_schedule(T=10, beta_start=0.01, beta_end=0.2)
    assert dl.log_snr_timesteps(s, 1, 9).tolist() == [9]               # t_min = T - 1 with one level
    for args, msg in [((3, -1), r"t_min must be an integer in \[0, 9\], got -1"),
                      ((1, 10), r"t_min must be an integer in \[0, 9\], got 10"),
                      ((0, 0), r"n must be an integer in \[1, 10\], got 0"),
                      ((11, 0), r"n must be an integer in \[1, 10\], got 11"),
                      ((9, 2), r"n must be an integer in \[1, 8\], got 9")]:
        with pytest.raises(ValueError, match=f"^{msg}$"):
            dl.log_snr_timesteps(s, *args)
    # beta = 1e-17 leaves alpha_bar unchanged in float64 (1 - 1e-17 == 1), so log SNR(1) = log SNR(2):
    # two levels down to t_min = 1 land on one timestep, which must be refused even for n = 2.
    flat = dl.Schedule(torch.tensor([0.1, 0.2, 1e-17], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^n = 2 log-SNR levels down to t_min = 1 map two levels to the same "
                                         r"timestep t = 1 on this schedule; use fewer levels$"):
        dl.log_snr_timesteps(flat, 2, 1)


def test_ddpm_score_model_one_instance_serves_float32_then_float64():
    # sigma_t is the looked-up timestep's sqrt(1 - alpha_bar_t) in x's dtype, whatever dtype came first:
    # with eps = 1 the score is -1 / sigma_t, computed here in float64 from the betas
    s = dl.linear_schedule(T=20, beta_start=0.01, beta_end=0.3)
    sm = dl.ddpm_score_model(lambda x, t, cond=None: torch.ones_like(x), s)
    ab, p = [], 1.0
    for b in s.betas.tolist():
        p *= 1.0 - b
        ab.append(p)
    table = [math.sqrt(1.0 - a) for a in ab]
    req = [0.5, 0.25, 0.9]
    ts = [min(range(20), key=lambda t: abs(table[t] - r)) for r in req]
    expected = torch.tensor([[-1 / table[t]] * 2 for t in ts], dtype=torch.float64)
    out32 = sm(torch.zeros(3, 2), torch.tensor(req))
    out64 = sm(torch.zeros(3, 2, dtype=torch.float64), torch.tensor(req))
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(out32, expected.float())


# ---- the simulated accelerator of tests/test_device_discipline.py ---------------------------------
def test_score_samplers_and_nets_on_a_device_keep_sigma_there_and_give_the_cpu_numbers():
    from test_device_discipline import FAKE, _check, _mlp, _schedule, _seeded, run_on_device, to_host

    # annealed Langevin hands sigma to the model on x's device: a plain score function mixing it with x
    # fails on a real accelerator when sigma is left on the CPU
    score = lambda y, s: -y / (1 + s[:, None] ** 2)  # noqa: E731
    x = torch.randn(4, 2, generator=_gen(67))
    out, _ = run_on_device(lambda: dl.annealed_langevin_sample(score, [1.0, 0.5], x.to(FAKE), 0.01, 2, generator=_gen(68)))
    assert torch.equal(to_host(out), dl.annealed_langevin_sample(score, [1.0, 0.5], x, 0.01, 2, generator=_gen(68)))
    # ScoreMLP on the device, given sigma as a CPU tensor (0-d or (B,)); a Python number is moved the same
    # way, but torch.as_tensor(number, device=...) bypasses the simulation, so it is not tried here
    net = lambda: _seeded(lambda: dl.ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8))  # noqa: E731
    with torch.no_grad():
        ref = net()(x, 0.3)
        for sig in (torch.tensor(0.3), torch.full((4,), 0.3)):
            out, _ = run_on_device(lambda: net().to(FAKE)(x.to(FAKE), sig))
            torch.testing.assert_close(to_host(out), ref, rtol=0, atol=0)

    # a DDPM eps-model as a score model inside annealed Langevin: no sync per step (the table lookup stays
    # on the device: it copied sigma to the CPU every call, a sync per step), the CPU numbers
    def run(n, device):
        def go():
            sm = dl.ddpm_score_model(_mlp().to(device), _schedule(40))
            return dl.annealed_langevin_sample(sm, dl.geometric_sigmas(1.0, 0.1, n), x.to(device), 0.01, 2,
                                               generator=_gen(69))
        return go
    out, _ = _check("ddpm_score_model in annealed_langevin_sample", run(3, FAKE), run(6, FAKE))
    torch.testing.assert_close(to_host(out), run(6, "cpu")(), rtol=0, atol=0)
    # a float64 sigma given on the CPU is cast to float32 there, never moved to the device in float64
    sig64 = torch.tensor([0.9, 0.5, 0.2, 0.05], dtype=torch.float64)
    out, rec = run_on_device(lambda: dl.ddpm_score_model(_mlp().to(FAKE), _schedule(40))(x.to(FAKE), sig64))
    assert not rec.float64, rec.float64
    torch.testing.assert_close(to_host(out), dl.ddpm_score_model(_mlp(), _schedule(40))(x, sig64), rtol=0, atol=0)


def test_dsm_loss_draws_the_levels_on_the_generator_device_else_on_x_device(monkeypatch):
    # Real accelerators refuse a generator drawing on another device (torch.randint(generator=cpu_gen,
    # device="cuda") raises), which the simulated device does not check: a spy does. The index of sigma is
    # drawn on the generator's device (the book's CPU generator), without a generator on x's device (its
    # own RNG, no host-to-device copy), as randn draws z; the levels are looked up on x's device.
    from test_device_discipline import FAKE, run_on_device, spy_on_randint, to_host
    drawn = spy_on_randint(monkeypatch)
    sm = lambda y, s: -y / (1 + s[:, None] ** 2)  # noqa: E731
    x = torch.randn(16, 2, generator=_gen(70))
    sigmas = [0.1, 0.5, 2.0]
    loss, _ = run_on_device(lambda: dl.dsm_loss(sm, x.to(FAKE), sigmas, generator=_gen(71)))
    assert drawn == [torch.device("cpu")]
    torch.testing.assert_close(to_host(loss), dl.dsm_loss(sm, x, sigmas, generator=_gen(71)), rtol=0, atol=0)
    drawn.clear()
    loss, _ = run_on_device(lambda: dl.dsm_loss(sm, x.to(FAKE), sigmas))
    assert drawn == [FAKE] and bool(torch.isfinite(to_host(loss)))
