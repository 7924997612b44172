"""DDPM step, loss and sampler: closed-form checks against Algorithm 2 written by hand,
the loss on data whose exact epsilon is known, sampler plumbing, and bad input.
(The oracle checks of the sampler are in test_lib_samplers.py, the diffusers ones in
test_lib_diffusers.py.)"""
import math
import re

import pytest
import torch

import diffusion_lab as dl

S = dl.linear_schedule(T=20, beta_start=0.01, beta_end=0.3)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# ddpm_step
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("t", [1, 2, 10, 19])
def test_ddpm_step_is_algorithm_2(t, variance):
    # x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sigma_t z, with
    # sigma_t^2 = beta_tilde_t (posterior) or beta_t, written with the paper's formula.
    g = _gen(t)
    xt, eps, z = (torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(3))
    beta, ab = S.betas[t], S.alpha_bars[t]
    var = beta * (1 - S.alpha_bars[t - 1]) / (1 - ab) if variance == "posterior" else beta
    expected = (xt - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt() + var.sqrt() * z
    x_prev, x0_hat = dl.ddpm_step(S, xt, eps, t, z, variance=variance)
    torch.testing.assert_close(x_prev, expected)
    torch.testing.assert_close(x0_hat, (xt - (1 - ab).sqrt() * eps) / ab.sqrt())


def _posterior_mean_by_hand(x0, xt, t):
    # Ho et al. 2020, Eq. 7 written out: sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0
    #                                    + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t.
    beta, ab = S.betas[t], S.alpha_bars[t]
    ab_prev = S.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    return ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * xt


def test_ddpm_step_mean_is_the_posterior_mean_at_predicted_x0():
    # Algorithm 2's mean equals Eq. 7's posterior mean evaluated at x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t).
    g = _gen(1)
    xt, eps = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for t in (1, 7, 19):
        x_prev, x0_hat = dl.ddpm_step(S, xt, eps, t, torch.zeros_like(xt))
        expected_x0 = (xt - (1 - S.alpha_bars[t]).sqrt() * eps) / S.alpha_bars[t].sqrt()
        torch.testing.assert_close(x0_hat, expected_x0)
        torch.testing.assert_close(x_prev, _posterior_mean_by_hand(expected_x0, xt, t))


def test_ddpm_step_at_t0_returns_predicted_x0_without_noise():
    # At t = 0, alpha_bar_{-1} = 1, so the posterior mean is x0_hat itself and the variance is 0.
    g = _gen(2)
    xt, eps = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    x_prev, x0_hat = dl.ddpm_step(S, xt, eps, 0, None)
    expected = (xt - (1 - S.alpha_bars[0]).sqrt() * eps) / S.alpha_bars[0].sqrt()
    torch.testing.assert_close(x_prev, expected)
    torch.testing.assert_close(x0_hat, expected)
    x_prev2, _ = dl.ddpm_step(S, xt, eps, 0, torch.randn(4, 3, generator=g, dtype=torch.float64))
    torch.testing.assert_close(x_prev2, expected)


@pytest.mark.parametrize("clip", [1.0, 2.5])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_step_clip_x0_is_the_equation_written_out(clip, variance):
    # x0_hat = clamp((x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), -clip, clip), and the step is Eq. 7's
    # mean at the clipped x0_hat plus sigma_t z. The raw x0_hat has entries inside (-clip, clip) that
    # a halved clip range (or clamping x_t instead of x0_hat) would change, and entries beyond it.
    t = 5
    ab = S.alpha_bars[t]
    x0_raw = torch.tensor([[0.8, -0.6, 3.0], [-4.0, 0.45, 1.9]], dtype=torch.float64) * clip
    eps = torch.randn(2, 3, generator=_gen(3), dtype=torch.float64)
    xt = ab.sqrt() * x0_raw + (1 - ab).sqrt() * eps
    z = torch.randn(2, 3, generator=_gen(4), dtype=torch.float64)
    x_prev, x0_hat = dl.ddpm_step(S, xt, eps, t, z, variance=variance, clip_x0=clip)
    expected_x0 = torch.minimum(torch.maximum(x0_raw, torch.tensor(-clip)), torch.tensor(clip))
    torch.testing.assert_close(x0_hat, expected_x0)
    beta = S.betas[t]
    var = beta * (1 - S.alpha_bars[t - 1]) / (1 - ab) if variance == "posterior" else beta
    torch.testing.assert_close(x_prev, _posterior_mean_by_hand(expected_x0, xt, t) + var.sqrt() * z)
    # clipping changed the step: without it the result differs (the test is not vacuous)
    assert not torch.allclose(dl.ddpm_step(S, xt, eps, t, z, variance=variance)[0], x_prev)


# ---------------------------------------------------------------------------------------
# ddpm_loss
# ---------------------------------------------------------------------------------------
def test_ddpm_loss_is_zero_for_the_exact_epsilon_of_a_point_mass():
    # If all data equal c, the noise is recoverable: eps = (x_t - sqrt(ab_t) c) / sqrt(1 - ab_t).
    # The loss of that model is 0 only if x_t, t and the target noise are used consistently
    # (same t index for noising and for the model, the target being the added noise).
    s = dl.linear_schedule(T=100, beta_start=1e-3, beta_end=0.1)
    c = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    ab_all = s.alpha_bars

    def exact(x, t, cond=None):
        ab = ab_all[t][:, None]
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    x0 = c.expand(64, 3).clone()
    assert dl.ddpm_loss(exact, s, x0, generator=_gen(3)).item() < 1e-20


def test_ddpm_loss_of_the_gaussian_oracle_matches_theory():
    # Data N(0, I): x_t ~ N(0, I) for every t, the exact epsilon is sqrt(1 - ab_t) x_t and
    # Var(eps | x_t) = ab_t per coordinate. So E[loss(oracle)] / E[loss(0)] = mean_t ab_t
    # (the ratio does not depend on whether the loss averages or sums over coordinates).
    # Each per-element squared error has mean <= 1 and variance <= 2 (chi-square-like); with
    # n = 4096 * 4 elements the ratio's SE is < sqrt(3 / n) ~ 0.014; 5 SE => 0.07.
    s = dl.linear_schedule(T=50, beta_start=1e-3, beta_end=0.2)
    x0 = torch.randn(4096, 4, generator=_gen(4))
    ab_all = s.alpha_bars.float()
    oracle = lambda x, t, cond=None: (1 - ab_all[t])[:, None].sqrt() * x  # noqa: E731
    zero = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    l_oracle = dl.ddpm_loss(oracle, s, x0, generator=_gen(5)).item()
    l_zero = dl.ddpm_loss(zero, s, x0, generator=_gen(5)).item()
    assert abs(l_oracle / l_zero - s.alpha_bars.mean().item()) < 0.07


def test_ddpm_loss_absolute_scale_is_per_dimension():
    # Eq. 14 averaged over batch AND dimensions: the zero predictor costs E[eps^2] = 1 per
    # coordinate, whatever D; the oracle sqrt(1 - ab_t) x_t on N(0, I) data leaves the residual
    # ab_t eps - sqrt(ab_t (1 - ab_t)) x0 of variance ab_t, so E[loss] = mean_t ab_t.
    # A loss summed over the D = 4 coordinates would give 4 and 4 mean_t ab_t; a missing square
    # gives ~0 and a sign flip in the target 4 (zero predictor is unaffected, the oracle is not).
    # n = 4096 * 4 elements, each of variance <= 2: SE < sqrt(2 / n) = 0.011; 5 SE => 0.056.
    s = dl.linear_schedule(T=50, beta_start=1e-3, beta_end=0.2)
    x0 = torch.randn(4096, 4, generator=_gen(40))
    ab_all = s.alpha_bars.float()
    oracle = lambda x, t, cond=None: (1 - ab_all[t])[:, None].sqrt() * x  # noqa: E731
    zero = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    mean_ab = sum(math.prod(1 - (1e-3 + (0.2 - 1e-3) * k / 49) for k in range(t + 1)) for t in range(50)) / 50
    assert abs(dl.ddpm_loss(zero, s, x0, generator=_gen(41)).item() - 1.0) < 0.056
    assert abs(dl.ddpm_loss(oracle, s, x0, generator=_gen(42)).item() - mean_ab) < 0.056


def test_ddpm_loss_scalar_deterministic_differentiable_and_passes_cond():
    net = torch.nn.Linear(2, 2)
    seen = {}

    def model(x, t, cond=None):
        seen["t"], seen["cond"], seen["x"] = t, cond, x
        return net(x)

    x0 = torch.randn(16, 2, generator=_gen(6))
    cond = torch.arange(16) % 3
    loss = dl.ddpm_loss(model, S, x0, cond=cond, generator=_gen(7))
    assert loss.ndim == 0
    assert torch.equal(seen["cond"], cond)
    t = seen["t"]
    assert t.shape == (16,) and not t.dtype.is_floating_point
    assert int(t.min()) >= 0 and int(t.max()) <= S.T - 1 and len(set(t.tolist())) > 1
    loss.backward()
    assert net.weight.grad is not None and bool(torch.isfinite(net.weight.grad).all())
    again = dl.ddpm_loss(model, S, x0, cond=cond, generator=_gen(7))
    assert again.item() == loss.item()
    assert dl.ddpm_loss(model, S, x0, cond=cond, generator=_gen(8)).item() != loss.item()


def test_ddpm_loss_draws_timesteps_uniformly():
    # Record the t the loss draws; 20 classes, n = 20000: each count ~ Binomial(n, 1/20) with
    # SE sqrt(n p (1 - p)) ~ 31, so a 5 SE band around 1000 is +-155.
    counts = torch.zeros(S.T)

    def model(x, t, cond=None):
        counts.add_(torch.bincount(t, minlength=S.T).float())
        return torch.zeros_like(x)

    dl.ddpm_loss(model, S, torch.zeros(20_000, 1), generator=_gen(9))
    assert float((counts - 1000).abs().max()) < 155, counts


# ---------------------------------------------------------------------------------------
# ddpm_sample plumbing (oracle checks are in test_lib_samplers.py)
# ---------------------------------------------------------------------------------------
def _toy_model(x, t, cond=None):
    return 0.3 * torch.tanh(x) + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def test_ddpm_sample_callback_order_determinism_and_global_rng():
    calls = []
    state = torch.random.get_rng_state()
    x = dl.ddpm_sample(_toy_model, S, (5, 1, 3, 3), generator=_gen(10), callback=calls.append)
    assert torch.equal(state, torch.random.get_rng_state()), "the sampler touched the global RNG"
    assert x.shape == (5, 1, 3, 3) and bool(torch.isfinite(x).all())
    assert [c["t"] for c in calls] == list(range(S.T - 1, -1, -1))
    assert [c["i"] for c in calls] == list(range(S.T))
    assert torch.equal(calls[-1]["x"], x)
    torch.testing.assert_close(calls[-1]["x0_hat"], x)  # the last step returns x0_hat
    assert torch.equal(x, dl.ddpm_sample(_toy_model, S, (5, 1, 3, 3), generator=_gen(10)))
    assert not torch.equal(x, dl.ddpm_sample(_toy_model, S, (5, 1, 3, 3), generator=_gen(11)))


def test_ddpm_sample_replays_ddpm_step_by_hand():
    # The sampler = x_T ~ N(0, I) from the generator, then ddpm_step with fresh noise from the
    # same generator at every t >= 1, the model called with t of shape (B,).
    g = _gen(12)
    x = torch.randn(4, 2, generator=g)
    for t in range(S.T - 1, -1, -1):
        eps = _toy_model(x, torch.full((4,), t))
        noise = torch.randn(4, 2, generator=g) if t > 0 else None
        x, _ = dl.ddpm_step(S, x, eps, t, noise)
    torch.testing.assert_close(dl.ddpm_sample(_toy_model, S, (4, 2), generator=_gen(12)), x)


def test_ddpm_sample_passes_cond_and_t_to_the_model():
    seen = []

    def model(x, t, cond=None):
        seen.append((t.clone(), cond))
        return torch.zeros_like(x)

    cond = torch.tensor([2, 0, 1])
    dl.ddpm_sample(model, S, (3, 2), cond=cond, generator=_gen(13))
    assert len(seen) == S.T
    for k, (t, c) in enumerate(seen):
        assert torch.equal(t, torch.full((3,), S.T - 1 - k)) and torch.equal(c, cond)


def test_ddpm_sample_starts_from_the_given_xT():
    # With xT given, the sampler starts there and draws only the per-step noise from the generator:
    # replay Algorithm 2 by hand from xT (first draw = the noise of step T-1). A sampler that
    # validated xT and then drew a fresh x_T instead would differ in every row.
    net = torch.nn.Linear(2, 2).double()
    model = lambda x, t, cond=None: net(x)  # noqa: E731
    xT = 3.0 + torch.randn(3, 2, generator=_gen(14), dtype=torch.float64)   # far from N(0, I) draws
    g = _gen(15)
    x = xT.clone()
    with torch.no_grad():
        for t in range(S.T - 1, -1, -1):
            beta, ab = S.betas[t], S.alpha_bars[t]
            eps = net(x)
            mean = (x - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()
            if t > 0:
                var = beta * (1 - S.alpha_bars[t - 1]) / (1 - ab)
                x = mean + var.sqrt() * torch.randn(3, 2, generator=g, dtype=torch.float64)
            else:
                x = mean
    out = dl.ddpm_sample(model, S, (3, 2), generator=_gen(15), xT=xT)
    assert out.device.type == "cpu" and out.shape == (3, 2)
    torch.testing.assert_close(out, x)
    # the callback's first state came from xT, not from a fresh draw
    first = []
    dl.ddpm_sample(model, S, (3, 2), generator=_gen(15), xT=xT, callback=lambda d: first.append(d) if d["i"] == 0 else None)
    beta, ab = S.betas[-1], S.alpha_bars[-1]
    with torch.no_grad():
        x0_expected = (xT - (1 - ab).sqrt() * net(xT)) / ab.sqrt()
    torch.testing.assert_close(first[0]["x0_hat"], x0_expected)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
X = torch.zeros(2, 3)
NAN = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("t", [-1, 20, 10_000])
def test_ddpm_step_t_out_of_range(t):
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.ddpm_step(S, X, X, t, X)


def test_ddpm_step_bad_input():
    with pytest.raises(TypeError, match=r"^t\b"):
        dl.ddpm_step(S, X, X, 2.5, X)
    with pytest.raises(ValueError, match=r"^eps\b"):
        dl.ddpm_step(S, X, torch.zeros(2, 4), 3, X)
    with pytest.raises(ValueError, match=r"^xt\b"):
        dl.ddpm_step(S, NAN, X, 3, X)
    with pytest.raises(ValueError, match=r"^eps\b"):
        dl.ddpm_step(S, X, NAN, 3, X)
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.ddpm_step(S, X, X, 3, None)
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.ddpm_step(S, X, X, 3, NAN)
    with pytest.raises(ValueError, match=r"^variance\b"):
        dl.ddpm_step(S, X, X, 3, X, variance="large")


def test_ddpm_step_rejects_a_non_schedule():
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddpm_step("linear", X, X, 3, X)


def test_ddpm_step_rejects_noise_of_the_wrong_shape():
    # A (B, 1) noise would broadcast silently and give every coordinate the same noise.
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.ddpm_step(S, X, X, 3, torch.zeros(2, 1))


def test_ddpm_loss_bad_input():
    with pytest.raises(TypeError, match=r"^model\b"):
        dl.ddpm_loss("model", S, X)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddpm_loss(_toy_model, 1000, X)
    with pytest.raises(ValueError, match=r"^x0\b"):
        dl.ddpm_loss(_toy_model, S, NAN)
    with pytest.raises(TypeError, match=r"^x0\b"):
        dl.ddpm_loss(_toy_model, S, [[0.0]])
    with pytest.raises(ValueError, match=r"^cond\b"):
        dl.ddpm_loss(_toy_model, S, X, cond=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^cond\b"):
        dl.ddpm_loss(_toy_model, S, X, cond=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.ddpm_loss(_toy_model, S, X, generator=123)


def test_ddpm_sample_bad_input():
    with pytest.raises(TypeError, match=r"^model\b"):
        dl.ddpm_sample(None, S, (2, 3))
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddpm_sample(_toy_model, "linear", (2, 3))
    with pytest.raises(ValueError, match=r"^shape\b"):
        dl.ddpm_sample(_toy_model, S, (2, 0))
    with pytest.raises(TypeError, match=r"^shape\b"):
        dl.ddpm_sample(_toy_model, S, 5)
    with pytest.raises(TypeError, match=r"^shape\b"):
        dl.ddpm_sample(_toy_model, S, (2, 1.5))
    with pytest.raises(ValueError, match=r"^cond\b"):
        dl.ddpm_sample(_toy_model, S, (2, 3), cond=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"^xT\b"):
        dl.ddpm_sample(_toy_model, S, (2, 3), xT=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"^xT\b"):
        dl.ddpm_sample(_toy_model, S, (2, 3), xT=NAN)
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.ddpm_sample(_toy_model, S, (2, 3), generator="seed")


def test_ddpm_sample_rejects_a_broken_model():
    with pytest.raises(ValueError, match=r"^model\b"):
        dl.ddpm_sample(lambda x, t, cond=None: x[:, :1], S, (2, 3))
    with pytest.raises(ValueError, match=r"^model\b"):
        dl.ddpm_sample(lambda x, t, cond=None: x * float("nan"), S, (2, 3))


def test_ddpm_sample_rejects_a_non_callable_callback():
    with pytest.raises(TypeError, match=r"^callback\b"):
        dl.ddpm_sample(_toy_model, S, (2, 3), callback=5)


def test_ddpm_sample_variance_option():
    a = dl.ddpm_sample(_toy_model, S, (2, 3), generator=_gen(0), variance="beta")
    b = dl.ddpm_sample(_toy_model, S, (2, 3), generator=_gen(0), variance="posterior")
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"^variance\b"):
        dl.ddpm_sample(_toy_model, S, (2, 3), variance="fixed_large")



def test_ddpm_step_float32_is_as_accurate_as_float32_allows():
    # STYLE: schedules are computed in float64, then cast. At small t, 1 - alpha_bar_t ~ 1e-4;
    # computing it in float32 after the cast loses ~3 significant digits, and the posterior
    # coefficients divide by it. With coefficients formed in float64 and cast once, a float32
    # step differs from the float64 step by ~1e-6 for unit-scale inputs; 5e-5 leaves a wide
    # margin. At t = 0 the step must return x0_hat itself (c0 = 1, ct = 0).
    s = dl.linear_schedule()
    g = _gen(20)
    x, eps, z = (torch.randn(1000, 3, generator=g) for _ in range(3))
    for t in (0, 1, 2, 5, 50):
        out32, x0_32 = dl.ddpm_step(s, x, eps, t, z)
        out64, _ = dl.ddpm_step(s, x.double(), eps.double(), t, z.double())
        err = (out32.double() - out64).abs().max().item()
        assert err < 5e-5, f"t = {t}: float32 step off by {err:.2e}"
        if t == 0:
            torch.testing.assert_close(out32, x0_32, rtol=1e-6, atol=1e-6)


def test_ddpm_sample_is_silent_unless_progress_is_asked_for(capsys):
    # STYLE: long loops show a tqdm bar that callers can switch off; nothing else prints.
    dl.ddpm_sample(_toy_model, S, (2, 2), generator=_gen(30))
    assert capsys.readouterr() == ("", "")
    dl.ddpm_sample(_toy_model, S, (2, 2), generator=_gen(30), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "DDPM" in err and f"{S.T}/{S.T}" in err


def test_ddpm_loss_replayed_draw_by_draw_in_float64():
    # ddpm_loss = mean over batch and coordinates of (eps_theta(x_t, t) - eps)^2 with t drawn first
    # (uniform in [0, T-1]) and then eps, both from the generator, eps in x0's dtype. Replayed by
    # hand with a model whose output depends on t: float32 noise for float64 data, t drawn from
    # another stream, or t and eps swapped in order all change the value.
    g = _gen(50)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    model = lambda x, t, cond=None: 0.5 * x + 0.01 * t[:, None].to(x.dtype)  # noqa: E731
    g = _gen(51)
    t = torch.randint(0, S.T, (64,), generator=g)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    ab = S.alpha_bars[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    expected = ((0.5 * xt + 0.01 * t[:, None] - eps) ** 2).mean()
    loss = dl.ddpm_loss(model, S, x0, generator=_gen(51))
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------------------
# found by the mutation run of 2026-12-06 (CONTRIBUTING.md): each assert kills surviving mutants
# ---------------------------------------------------------------------------------------
def test_ddpm_messages_and_argument_checks_found_by_mutation():
    with pytest.raises(TypeError, match=r"^model must be callable as model\(x, t, cond=None\), got int$"):
        dl.ddpm_sample(5, S, (2, 3))
    with pytest.raises(ValueError, match=r"^cond must be None or an integer tensor of labels with shape \(2,\), got \(3,\)$"):
        dl.ddpm_sample(_toy_model, S, (2, 3), cond=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"^cond must be None or an integer tensor of labels with shape \(2,\), got list$"):
        dl.ddpm_sample(_toy_model, S, (2, 3), cond=[1, 0])
    with pytest.raises(ValueError, match=r"^model output must have the input's shape \(2, 3\), got \(2, 4\)$"):
        dl.ddpm_sample(lambda x, t, cond=None: torch.zeros(2, 4), S, (2, 3))
    with pytest.raises(ValueError, match=r"^model output must have the input's shape \(2, 3\), got NoneType$"):
        dl.ddpm_sample(lambda x, t, cond=None: None, S, (2, 3))
    with pytest.raises(ValueError, match=r"^model output must have the input's shape \(2, 3\), got list$"):
        dl.ddpm_sample(lambda x, t, cond=None: [0.0], S, (2, 3))
    with pytest.raises(ValueError, match=r"^t must be a single integer timestep for ddpm_step, got shape \(2,\)$"):
        dl.ddpm_step(S, torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match=r"^noise is required"):     # t = 1 is the last step with noise
        dl.ddpm_step(S, torch.zeros(2, 3), torch.zeros(2, 3), 1)
    # the generator is checked even where it would never be used (T = 1 with xT given)
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.ddpm_sample(_toy_model, dl.linear_schedule(T=1, beta_start=0.1, beta_end=0.1), (2, 3),
                       xT=torch.zeros(2, 3), generator="seed")
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^clip_x0 must be in \(0, inf\], got {bad}$"):
            dl.ddpm_sample(_toy_model, S, (2, 3), clip_x0=bad)


def test_ddpm_no_noise_at_t0_even_for_beta_variance_and_clip_x0_applied():
    # variance="beta" has sd = sqrt(beta_0) > 0 at t = 0 (the posterior variance is 0 there), so noise added at
    # t = 0 would show; ddpm_step ignores a given noise at t = 0 and ddpm_sample draws none.
    x, eps = torch.randn(4, 2, generator=_gen(20)), torch.randn(4, 2, generator=_gen(21))
    x0, x0_hat = dl.ddpm_step(S, x, eps, 0, torch.ones(4, 2), variance="beta")
    assert torch.equal(x0, x0_hat)
    calls = []
    out = dl.ddpm_sample(_toy_model, S, (4, 2), generator=_gen(22), variance="beta", callback=calls.append)
    assert torch.equal(out, calls[-1]["x0_hat"])
    # clip_x0 reaches every step: x0_hat stays in [-c, c] (unclipped it leaves it: checked below)
    big = lambda x, t, cond=None: -10 * torch.ones_like(x)  # noqa: E731
    calls = []
    dl.ddpm_sample(big, S, (4, 2), generator=_gen(23), clip_x0=0.5, callback=calls.append)
    assert all(float(c["x0_hat"].abs().max()) <= 0.5 for c in calls)
    calls = []
    dl.ddpm_sample(big, S, (4, 2), generator=_gen(23), callback=calls.append)
    assert float(calls[0]["x0_hat"].abs().max()) > 0.5


def test_ddpm_sample_float64_draws_float64_noise_and_runs_a_parameterless_module(capsys):
    # float64 xT: the sampler's noise is drawn in float64 (replayed by hand with the same generator)
    g = _gen(24)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    out = dl.ddpm_sample(_toy_model, S, (4, 2), xT=x.clone(), generator=_gen(25))
    g = _gen(25)
    for t in range(S.T - 1, -1, -1):
        eps = _toy_model(x, torch.full((4,), t))
        noise = torch.randn(4, 2, generator=g, dtype=torch.float64) if t > 0 else None
        x, _ = dl.ddpm_step(S, x, eps, t, noise)
    assert out.dtype == torch.float64 and torch.equal(out, x)

    class Zero(torch.nn.Module):     # no parameters: the sampling device falls back to the CPU
        def forward(self, x, t, cond=None):
            return torch.zeros_like(x)
    assert dl.ddpm_sample(Zero(), S, (2, 3), generator=_gen(26)).device.type == "cpu"
    # ddpm_loss without a generator draws on x0's device
    assert torch.isfinite(dl.ddpm_loss(_toy_model, S, torch.randn(4, 2, generator=_gen(27))))
    dl.ddpm_sample(_toy_model, S, (2, 3), generator=_gen(28), progress=True)
    assert re.search(r"(^|\r)DDPM: ", capsys.readouterr().err)      # tqdm's label, "DDPM: 100%|..."


def test_ddpm_loss_draws_t_on_the_generator_device_else_on_x0_device(monkeypatch):
    # Real accelerators refuse a generator drawing on another device (torch.randint(generator=cpu_gen,
    # device="cuda") raises); the simulated device does not check it, a spy on torch.randint does. t is drawn on
    # the generator's device (the book's CPU generator), and without a generator on x0's device (its own RNG, no
    # host-to-device copy); the loss on the device equals the CPU loss.
    from test_device_discipline import FAKE, run_on_device, spy_on_randint, to_host
    drawn = spy_on_randint(monkeypatch)
    model = lambda x, t, cond=None: 0.5 * x + 0.001 * t[:, None]  # noqa: E731
    s, x0 = dl.linear_schedule(100), torch.randn(16, 2, generator=_gen(80))
    loss, _ = run_on_device(lambda: dl.ddpm_loss(model, s, x0.to(FAKE), generator=_gen(81)))
    assert drawn == [torch.device("cpu")]
    torch.testing.assert_close(to_host(loss), dl.ddpm_loss(model, s, x0, generator=_gen(81)), rtol=0, atol=0)
    drawn.clear()
    loss, _ = run_on_device(lambda: dl.ddpm_loss(model, s, x0.to(FAKE)))
    assert drawn == [FAKE] and bool(torch.isfinite(to_host(loss)))
