"""The full DDPM bound: every term in closed form for a point mass with its exact model, and the
bound against the true negative log-likelihood for a Gaussian with the exact (oracle) model."""
import math

import pytest
import torch

import diffusion_lab as dl

S = dl.linear_schedule(T=50, beta_start=1e-3, beta_end=0.2)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _point_mass(c, schedule):
    ab_all = schedule.alpha_bars

    def exact(x, t, cond=None):  # eps = (x_t - sqrt(ab) c) / sqrt(1 - ab) exactly, so x0_hat = c
        ab = ab_all[t][:, None].to(x)
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()
    return exact


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_every_term_in_closed_form_for_a_point_mass(variance):
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    D = 3
    x0 = c.expand(4, D).clone()
    out = dl.ddpm_elbo(_point_mass(c, S), S, x0, generator=_gen(0), variance=variance)
    b, ab = S.betas, S.alpha_bars
    # L_T = KL(N(sqrt(ab_T) c, 1 - ab_T) || N(0, 1)), summed over dimensions.
    abT = ab[-1]
    L_T = float((0.5 * (abT * c ** 2 + (1 - abT) - torch.log(1 - abT) - 1)).sum())
    # L_0 = -log N(c; c, beta_1) (x0_hat = c exactly).
    L_0 = 0.5 * D * math.log(2 * math.pi * float(b[0]))
    # t >= 1: same means; KL between variances beta_tilde_t and the model's.
    bt = b[1:] * (1 - ab[:-1]) / (1 - ab[1:])
    model_var = bt if variance == "posterior" else b[1:]
    L_t = D * 0.5 * (torch.log(model_var / bt) + bt / model_var - 1)
    assert out["L_T"] == pytest.approx(L_T, rel=1e-9)
    assert out["L_0"] == pytest.approx(L_0, rel=1e-9)
    assert out["L_t"].shape == (S.T,) and float(out["L_t"][0]) == 0.0
    torch.testing.assert_close(out["L_t"][1:].double(), L_t, rtol=1e-7, atol=1e-10)
    total = L_0 + float(L_t.sum()) + L_T
    assert out["total_nats"] == pytest.approx(total, rel=1e-9)
    assert out["bits_per_dim"] == pytest.approx(total / (D * math.log(2)), rel=1e-9)
    assert out["per_example"].shape == (4,)
    assert float(out["per_example"].mean()) == pytest.approx(out["total_nats"], rel=1e-12)


def test_bound_is_tight_for_the_exact_model_of_a_gaussian():
    # Data N(mu, Sigma) with its exact epsilon (T = 1000, small betas) and the reverse variance
    # beta_t: the bound equals the true negative log-likelihood up to a small gap (measured:
    # gap 0.00 +- 0.04 nats over three seeds with 1000 examples). With 500 examples we test the
    # paired gap (bound - true NLL, per example) against 5 SE from below (a bound can't be
    # smaller than the NLL) and 5 SE + 0.05 nats from above. The posterior variance gives a looser
    # bound (~0.9 nats here): it must stay above the NLL.
    s = dl.linear_schedule()
    gm = dl.GaussianMixture([[1.0, -0.5]], covs=[[[1.0, 0.6], [0.6, 0.8]]])
    x, _ = gm.sample(500, _gen(1))
    x = x.double()
    nll = -gm.log_prob(x)
    gaps = {}
    for variance in ("beta", "posterior"):
        out = dl.ddpm_elbo(gm.eps_model(s), s, x, generator=_gen(2), variance=variance)
        d = out["per_example"] - nll
        gaps[variance] = (float(d.mean()), float(d.std()) / math.sqrt(500))
    gap, se = gaps["beta"]
    assert -5 * se < gap < 5 * se + 0.05, gaps
    gap_p, se_p = gaps["posterior"]
    assert gap_p > -5 * se_p and gap_p > gap, gaps


def test_elbo_is_deterministic_given_a_generator():
    c = torch.tensor([0.3, 0.1], dtype=torch.float64)
    model = lambda x, t, cond=None: 0.5 * x  # noqa: E731
    x0 = torch.randn(8, 2, generator=_gen(3), dtype=torch.float64) + c
    a = dl.ddpm_elbo(model, S, x0, generator=_gen(4))
    b = dl.ddpm_elbo(model, S, x0, generator=_gen(4))
    assert a["total_nats"] == b["total_nats"]
    # a poor model has a larger bound than the exact one for the same data
    exact = dl.ddpm_elbo(_point_mass(c, S), S, c.expand(8, 2).clone(), generator=_gen(4))
    poor = dl.ddpm_elbo(model, S, c.expand(8, 2).clone(), generator=_gen(4))
    assert poor["total_nats"] > exact["total_nats"]


def test_elbo_bad_input():
    model = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"^x0\b"):
        dl.ddpm_elbo(model, S, torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"^x0\b"):
        dl.ddpm_elbo(model, S, x * float("nan"))
    with pytest.raises(ValueError, match=r"^variance\b"):
        dl.ddpm_elbo(model, S, x, variance="large")
    with pytest.raises(ValueError, match=r"^model\b"):
        dl.ddpm_elbo(lambda y, t, cond=None: y[:, :1], S, x)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddpm_elbo(model, "linear", x)
    with pytest.raises(TypeError, match=r"^model\b"):
        dl.ddpm_elbo(None, S, x)


def test_ddpm_elbo_passes_cond_to_every_model_call():
    s = dl.linear_schedule(T=5, beta_start=0.05, beta_end=0.3)
    seen = []

    def model(x, t, cond=None):
        seen.append(cond)
        return torch.zeros_like(x)
    cond = torch.tensor([1, 0])
    dl.ddpm_elbo(model, s, torch.zeros(2, 3), cond=cond, generator=torch.Generator().manual_seed(0))
    assert len(seen) == s.T and all(c is cond for c in seen)


def test_ddpm_elbo_draws_x_t_in_the_data_dtype_one_draw_per_t():
    # x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) z_t, with z_t the t-th draw of the generator, made in x0's dtype
    # (float64 here: float32 noise would agree only to float32 rounding).
    s = dl.linear_schedule(T=4, beta_start=0.05, beta_end=0.3)
    x0 = torch.randn(3, 2, generator=_gen(20), dtype=torch.float64)
    seen = []

    def model(x, t, cond=None):
        seen.append((int(t[0]), x.clone()))
        return torch.zeros_like(x)
    dl.ddpm_elbo(model, s, x0, generator=_gen(21))
    g = _gen(21)
    assert [t for t, _ in seen] == [0, 1, 2, 3]
    for t, xt in seen:
        z = torch.randn(3, 2, generator=g, dtype=torch.float64)
        ab = s.alpha_bars[t]
        torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * z, rtol=0, atol=1e-14)


def test_ddpm_elbo_smallest_T_and_broken_model_message_found_by_mutation():
    # Found by the mutation run of 2026-12-06 (CONTRIBUTING.md). T = 2 has one L_{t-1} term (t = 1), T = 1 none.
    zero = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    x0 = torch.randn(4, 3, generator=_gen(31))
    two = dl.ddpm_elbo(zero, dl.linear_schedule(T=2, beta_start=0.1, beta_end=0.2), x0, generator=_gen(32))
    assert two["L_t"].shape == (2,) and float(two["L_t"][0]) == 0.0 and float(two["L_t"][1]) > 0.01
    assert two["total_nats"] == pytest.approx(two["L_0"] + float(two["L_t"].sum()) + two["L_T"], rel=1e-6)   # L_0, L_T: float32 means
    one = dl.ddpm_elbo(zero, dl.linear_schedule(T=1, beta_start=0.1, beta_end=0.1), x0, generator=_gen(33))
    assert one["L_t"].tolist() == [0.0]
    nan = lambda x, t, cond=None: torch.full_like(x, float("nan") if int(t[0]) == 1 else 0.0)  # noqa: E731
    with pytest.raises(ValueError, match=r"^model output at step 1 \(t = 1\) is not finite"):
        dl.ddpm_elbo(nan, dl.linear_schedule(T=2, beta_start=0.1, beta_end=0.2), x0, generator=_gen(34))
