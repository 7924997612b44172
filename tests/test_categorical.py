"""D3PM (categorical.py): transition matrices and their closed-form products, q(x_t | x_0) against the
matrix row, the posterior against Bayes by enumeration for every (x_0, x_t, t), the KL terms against
torch.distributions, the discrete ELBO's O(1/T) convergence to masked diffusion's continuous-time ELBO,
and bad input."""
import math
import re

import numpy as np
import pytest
import torch

import diffusion_lab as dl
from diffusion_lab.categorical import num_states

KINDS = ("uniform", "absorbing")
K = 3


def _schedules():
    # "linear" ends with beta = 1 (everything masked / uniform); "cosine" has small and large betas.
    return [dl.categorical_schedule(K, 5, "linear"), dl.categorical_schedule(K, 5, "cosine"),
            dl.CategoricalSchedule(torch.tensor([0.3, 0.1, 0.6, 0.2], dtype=torch.float64), K)]


def _qbar_by_product(schedule, kind):
    """[Qbar_{-1} = I, Qbar_0, ..., Qbar_{T-1}] by multiplying the one-step matrices."""
    out = [torch.eye(num_states(kind, K), dtype=torch.float64)]
    for beta in schedule.betas.tolist():
        out.append(out[-1] @ dl.transition_matrix(kind, K, beta))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_transition_matrix_entries_and_rows(kind):
    beta = 0.3
    Q = dl.transition_matrix(kind, K, beta)
    n = num_states(kind, K)
    assert Q.shape == (n, n) and Q.dtype == torch.float64
    torch.testing.assert_close(Q.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)
    for i in range(n):
        for j in range(n):
            if kind == "uniform":
                want = (1 - beta) * (i == j) + beta / K
            else:       # stay, or jump to the mask K; the mask never leaves
                want = (1 - beta) * (i == j) + beta * (j == K) if i < K else float(j == K)
            assert Q[i, j].item() == pytest.approx(want, abs=1e-15), (i, j)


@pytest.mark.parametrize("kind", KINDS)
def test_cumulative_matrix_is_the_product_and_rows_sum_to_one(kind):
    for schedule in _schedules():
        prods = _qbar_by_product(schedule, kind)
        for t in range(schedule.T):
            Qbar = dl.cumulative_transition_matrix(schedule, t, kind)
            torch.testing.assert_close(Qbar, prods[t + 1], rtol=0, atol=1e-14)
            torch.testing.assert_close(Qbar.sum(1), torch.ones(Qbar.shape[0], dtype=torch.float64), rtol=0, atol=1e-14)
        # the plant alpha_bars_prev for alpha_bars would be off by one step: visible with these betas
        assert not torch.allclose(prods[-1], prods[-2], atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_q_sample_frequencies_match_the_row_of_qbar(kind):
    schedule = dl.categorical_schedule(K, 5, "cosine")
    n, g = 40000, torch.Generator().manual_seed(0)
    t = torch.tensor([1, 3])                           # one timestep per row: each row must use its own
    x0 = torch.tensor([[0] * n, [2] * n])
    xt = dl.categorical_q_sample(x0, t, schedule, kind, generator=g)
    assert xt.shape == x0.shape and xt.dtype == torch.long
    for row in range(2):
        want = dl.cumulative_transition_matrix(schedule, int(t[row]), kind)[x0[row, 0]]
        freq = torch.bincount(xt[row], minlength=len(want)).double() / n
        se = (want * (1 - want) / n).sqrt()
        assert bool(((freq - want).abs() <= 4.5 * se + 1e-12).all()), (row, freq, want)


@pytest.mark.parametrize("kind", KINDS)
def test_posterior_is_bayes_by_enumeration(kind):
    n = num_states(kind, K)
    for schedule in _schedules():
        prods = _qbar_by_product(schedule, kind)
        for t in range(schedule.T):
            Q = dl.transition_matrix(kind, K, float(schedule.betas[t]))
            for x0 in range(K):
                for xt in range(n):
                    evidence = prods[t + 1][x0, xt]          # q(x_t | x_0)
                    args = (torch.tensor([[x0]]), torch.tensor([[xt]]), t, schedule, kind)
                    if evidence == 0:                         # e.g. an unmasked x_t != x_0 (absorbing)
                        with pytest.raises(ValueError, match="impossible"):
                            dl.categorical_posterior(*args)
                        continue
                    bayes = Q[:, xt] * prods[t][x0] / evidence   # q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0)
                    got = dl.categorical_posterior(*args, dtype=torch.float64)[0, 0]
                    torch.testing.assert_close(got, bayes, rtol=0, atol=1e-13)


def _kl_by_enumeration(logits, x0, xt, t, schedule, kind):
    """KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) with p_theta (Austin et al. Eq. 4) from the matrices."""
    prods = _qbar_by_product(schedule, kind)
    Q = dl.transition_matrix(kind, K, float(schedule.betas[t]))
    p0 = torch.softmax(logits.double(), -1)
    n = num_states(kind, K)
    out = torch.zeros(x0.shape, dtype=torch.float64)
    for idx in np.ndindex(*x0.shape):
        a, b = int(x0[idx]), int(xt[idx])
        q = Q[:, b] * prods[t][a] / prods[t + 1][a, b]
        p = sum(Q[:, b] * prods[t][c] * p0[idx][c] for c in range(K))      # sum_c q(x_{t-1}, x_t | c) p(c)
        p = p / p.sum()
        out[idx] = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=q[:n]),
                                                     torch.distributions.Categorical(probs=p[:n]))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_d3pm_kl_against_torch_distributions_and_the_masked_form(kind):
    schedule = dl.categorical_schedule(K, 5, "cosine")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, K, (4, 6), generator=g)
    logits = torch.randn(4, 6, K, generator=g, dtype=torch.float64)
    for t in (0, 2, 4):
        xt = dl.categorical_q_sample(x0, t, schedule, kind, generator=g)
        got = dl.d3pm_kl(logits, x0, xt, t, schedule, kind)
        torch.testing.assert_close(got, _kl_by_enumeration(logits, x0, xt, t, schedule, kind), rtol=0, atol=1e-12)
        if t == 0:   # the reconstruction term -log p_theta(x_0 | x_1), p_theta(j | x_1) ~ Q_0[j, x_1] p~(j)
            Q0 = dl.transition_matrix(kind, K, float(schedule.betas[0]))[:K]           # rows j < K
            joint = Q0[:, xt].permute(1, 2, 0) * torch.softmax(logits, -1)             # (4, 6, K)
            want = -torch.log(joint.gather(-1, x0[..., None]).squeeze(-1) / joint.sum(-1))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        if kind == "absorbing":   # 0 on visible tokens; (ab_{t-1} - ab_t) / (1 - ab_t) * CE on masked ones
            ab, ab_prev = schedule.alpha_bars[t], schedule.alpha_bars_prev[t]
            ce = -torch.log_softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
            masked = xt == K
            want = torch.where(masked, (ab_prev - ab) / (1 - ab) * ce, torch.zeros_like(ce))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # a model that predicts x_0 exactly has KL 0 at every t
    exact = 60.0 * torch.nn.functional.one_hot(x0, K).double()
    xt = dl.categorical_q_sample(x0, 3, schedule, kind, generator=g)
    assert float(dl.d3pm_kl(exact, x0, xt, 3, schedule, kind).abs().max()) < 1e-12


def test_prior_kl_closed_form():
    x0 = torch.tensor([[0, 2]])
    cos = _schedules()[2]                       # alpha_bar_T = 0.7 * 0.9 * 0.4 * 0.8: far from 0
    ab = float(cos.alpha_bars[-1])
    row = dl.cumulative_transition_matrix(cos, cos.T - 1, "uniform")[0]
    want = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=row),
                                             torch.distributions.Categorical(probs=torch.full((K,), 1 / K, dtype=torch.float64)))
    assert ab == pytest.approx(0.2016)
    torch.testing.assert_close(dl.categorical_prior_kl(x0, cos, "uniform"),
                               torch.full((1, 2), float(want), dtype=torch.float64), rtol=1e-10, atol=0)
    assert bool(torch.isinf(dl.categorical_prior_kl(x0, cos, "absorbing")).all())   # unmasked x_T: prior prob 0
    lin = dl.categorical_schedule(K, 5, "linear")                                    # alpha_bar_T = 0
    assert float(dl.categorical_prior_kl(x0, lin, "absorbing").abs().max()) == 0
    assert float(dl.categorical_prior_kl(x0, lin, "uniform").abs().max()) < 1e-15


# ---------------------------------------------------------------------------------------
# The masked-diffusion ELBO is the many-step limit of the absorbing D3PM ELBO
# ---------------------------------------------------------------------------------------
L4, K4 = 3, 4


def _toy():
    """A distribution over the 64 sequences of length 3 on 4 symbols, with strongly correlated neighbours."""
    g = torch.Generator().manual_seed(0)
    states = torch.cartesian_prod(*[torch.arange(K4)] * L4)
    logit = 2.0 * ((states[:, 0] == states[:, 1]).double() + (states[:, 1] == states[:, 2]).double())
    p = torch.softmax(logit + 0.5 * torch.randn(64, generator=g, dtype=torch.float64), 0)
    return states, p


class _TimeDependent:
    """A model whose logits depend on t (the exact denoiser's, scaled by 0.3 + 2t): the continuous ELBO is then
    a genuine integral over t, which the discrete sum approximates."""

    def __init__(self, oracle):
        self.oracle, self.config = oracle, {"K": K4}

    def __call__(self, xt, t, cond=None):
        return self.oracle(xt) * (0.3 + 2 * t.float()[:, None, None])


def _enumerate_masks(states):
    masks = torch.cartesian_prod(*[torch.tensor([False, True])] * L4)                # (8, L)
    x0 = states.repeat_interleave(len(masks), 0)
    M = masks.repeat(len(states), 1)
    return x0, M, torch.where(M, K4, x0)


def _discrete_elbo(model, states, p, T):
    """Exact sum of the d3pm_kl terms (expectation over x_t by enumeration), bits per token under p."""
    schedule = dl.categorical_schedule(K4, T, "linear")
    x0, M, xt = _enumerate_masks(states)
    total = torch.zeros(len(x0), dtype=torch.float64)
    for t in range(T):
        ab = schedule.alpha_bars[t]
        w = torch.where(M, 1 - ab, ab).prod(1)                                         # q(x_t | x_0)
        ok = w > 0
        logits = model(xt[ok], torch.full((int(ok.sum()),), (t + 1) / T)).double()      # index t is time (t + 1) / T
        total[ok] += w[ok] * dl.d3pm_kl(logits, x0[ok], xt[ok], t, schedule, "absorbing").sum(1)
    return float((p * total.reshape(len(states), -1).sum(1)).sum()) / (L4 * math.log(2))


def _continuous_elbo(model, states, p, nodes=40):
    """int_0^1 (1/t) sum_M t^m (1 - t)^(L - m) CE(M, t) dt by Gauss-Legendre, bits per token under p."""
    x0, M, xt = _enumerate_masks(states)
    m = M.sum(1).double()
    u, w = np.polynomial.legendre.leggauss(nodes)
    total = torch.zeros(len(x0), dtype=torch.float64)
    for ui, wi in zip((u + 1) / 2, w / 2):
        logp = torch.log_softmax(model(xt, torch.full((len(x0),), float(ui))).double(), -1)
        ce = -(logp.gather(-1, x0[..., None]).squeeze(-1) * M).sum(1)
        total += wi * ui ** (m - 1) * (1 - ui) ** (L4 - m) * ce
    return float((p * total.reshape(len(states), -1).sum(1)).sum()) / (L4 * math.log(2))


def test_discrete_elbo_converges_to_the_continuous_masked_elbo_at_rate_1_over_T():
    states, p = _toy()
    oracle = dl.MaskedOracle(p.reshape(K4, K4, K4))
    H = float(-(p * p.log2()).sum()) / L4
    # Exact denoiser: the continuous ELBO equals the entropy exactly (each order of unmasking is an exact chain
    # rule; Ou et al. 2024), and each discrete bound lies above it, by about c / T.
    assert _continuous_elbo(oracle, states, p) == pytest.approx(H, abs=1e-9)
    for model in (oracle, _TimeDependent(oracle)):
        limit = _continuous_elbo(model, states, p)
        gaps = {T: _discrete_elbo(model, states, p, T) - limit for T in (4, 8, 16, 32, 64)}
        ratios = [gaps[T] / gaps[2 * T] for T in (8, 16, 32)]
        # first order: halving the step halves the gap (a rate of 1/T^2 would give 4, no convergence 1);
        # measured 2.00-2.01 (exact denoiser) and 2.09, 2.05, 2.02 (time-dependent: a 1/T^2 term fading)
        assert all(1.85 < r < 2.15 for r in ratios), ratios
        assert abs(gaps[64]) < 0.03
        # and the library's Monte Carlo NLL estimates the same two numbers
        g = torch.Generator().manual_seed(2)
        x0 = states[torch.multinomial(p, 20000, True, generator=g)]
        for steps, want in ((None, limit), (4, limit + gaps[4])):
            nll = dl.masked_diffusion_nll(model, x0, steps=steps, generator=g)
            se = float(nll.std()) / math.sqrt(len(nll))
            assert abs(float(nll.mean()) - want) < 4.5 * se, (steps, float(nll.mean()), want, se)
    # the T = 4 and T = 64 bounds are many standard errors apart: the estimator sees the gap
    assert gaps[4] - gaps[64] > 0.05


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
def test_bad_input():
    s = dl.categorical_schedule(K, 5)
    x0 = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"kind must be one of \('uniform', 'absorbing'\), got 'gaussian'"):
        dl.transition_matrix("gaussian", K, 0.1)
    with pytest.raises(ValueError, match="kind must be one of"):
        dl.categorical_q_sample(x0, 1, s, "mask")
    for beta in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta must be"):
            dl.transition_matrix("uniform", K, beta)
    with pytest.raises(ValueError, match=r"every beta must be in \(0, 1\]"):
        dl.CategoricalSchedule(torch.tensor([0.5, 1.2], dtype=torch.float64), K)
    with pytest.raises(ValueError, match="K must be"):
        dl.transition_matrix("uniform", 1, 0.1)
    with pytest.raises(ValueError, match=r"x0 must hold categories in \[0, 2\], got values from 0 to 3"):
        dl.categorical_q_sample(torch.tensor([[0, 3]]), 1, s, "uniform")
    with pytest.raises(ValueError, match="x0 must hold categories"):
        dl.categorical_q_sample(torch.tensor([[-1, 0]]), 1, s, "absorbing")
    with pytest.raises(TypeError, match="x0 must hold integer tokens"):
        dl.categorical_q_sample(x0.float(), 1, s, "uniform")
    with pytest.raises(ValueError, match=r"t must be in \[0, 4\]"):
        dl.categorical_q_sample(x0, 5, s, "uniform")
    with pytest.raises(TypeError, match="t must hold integer"):
        dl.categorical_q_sample(x0, torch.tensor([0.5]), s, "uniform")
    with pytest.raises(TypeError, match="schedule must be a CategoricalSchedule"):
        dl.categorical_q_sample(x0, 1, dl.linear_schedule(5), "uniform")
    with pytest.raises(ValueError, match=r"xt must hold categories in \[0, 2\]"):   # no mask under "uniform"
        dl.categorical_posterior(x0, torch.tensor([[0, 1, 3]]), 1, s, "uniform")
    with pytest.raises(ValueError, match="xt must have x0's shape"):
        dl.categorical_posterior(x0, torch.tensor([[0, 1]]), 1, s, "uniform")
    with pytest.raises(ValueError, match=r"logits must have shape \(1, 3, 3\)"):
        dl.d3pm_kl(torch.zeros(1, 3, 4), x0, x0, 1, s, "uniform")
    with pytest.raises(ValueError, match="logits must be finite"):
        dl.d3pm_kl(torch.full((1, 3, 3), float("nan")), x0, x0, 1, s, "uniform")
    with pytest.raises(ValueError, match="name must be 'linear' or 'cosine'"):
        dl.categorical_schedule(K, 5, "sqrt")


# ---------------------------------------------------------------------------------------
# Mutation-testing survivors (issue 17): exact messages, boundaries, dtypes, seeds, per-row t, device
# ---------------------------------------------------------------------------------------
def test_schedule_construction_messages_and_boundaries():
    b = torch.tensor([0.5, 1.0], dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^betas must be a torch.Tensor, got list$"):
        dl.CategoricalSchedule([0.5, 1.0], K)
    with pytest.raises(ValueError, match=r"^betas must be a 1-D tensor with at least one entry, got shape \(1, 2\)$"):
        dl.CategoricalSchedule(b[None], K)
    with pytest.raises(ValueError, match=r"^betas must be a 1-D tensor with at least one entry, got shape \(0,\)$"):
        dl.CategoricalSchedule(b[:0], K)
    for bad, lo, hi in (([0.0, 0.5], "0", "0.5"), ([-0.1, 0.5], "-0.1", "0.5"), ([0.5, 1.2], "0.5", "1.2")):
        with pytest.raises(ValueError, match=rf"^every beta must be in \(0, 1\], got min {lo} and max {hi}$"):
            dl.CategoricalSchedule(torch.tensor(bad, dtype=torch.float64), K)
    for k in (1, 0):
        with pytest.raises(ValueError, match=rf"^K must be an integer in \[2, inf\], got {k}$"):
            dl.CategoricalSchedule(b, k)
    one = dl.CategoricalSchedule(torch.tensor([1.0]), 2)          # one step, two categories: the smallest allowed
    assert one.T == 1 and one.K == 2 and one.name == "custom"
    # float32 input is stored as float64 (on the CPU) under the name betas
    s = dl.CategoricalSchedule(torch.tensor([0.25, 0.5], dtype=torch.float32), K)
    assert s.betas.dtype == torch.float64 and s.betas.device.type == "cpu" and s.betas.tolist() == [0.25, 0.5]
    assert s.alpha_bars.tolist() == [0.75, 0.375]                                 # (1 - 0.25), (1 - 0.25)(1 - 0.5)
    # categorical_schedule: T >= 1 named T, the names, the linear betas 1 / (T - t) in float64
    for T in (0, -2):
        with pytest.raises(ValueError, match=rf"^T must be an integer in \[1, inf\], got {T}$"):
            dl.categorical_schedule(K, T)
    lin1 = dl.categorical_schedule(K, 1)
    assert lin1.T == 1 and lin1.betas.tolist() == [1.0] and lin1.name == "linear"
    lin = dl.categorical_schedule(K, 7, "linear")
    assert lin.name == "linear" and lin.betas.dtype == torch.float64
    assert lin.betas.tolist() == [1.0 / (7 - t) for t in range(7)]               # exact float64 quotients
    cos = dl.categorical_schedule(K, 7, "cosine")
    assert cos.name == "cosine"


def test_t_and_k_messages_name_the_argument():
    s = dl.categorical_schedule(K, 5)
    x0 = torch.zeros(2, 3, dtype=torch.long)                 # B = 2, a second dimension of another size
    for bad in (torch.tensor([1, 2, 3]), torch.tensor([[1], [2]])):
        with pytest.raises(ValueError, match=rf"^t must be an int or have shape \(2,\), got {_shape_re(bad)}$"):
            dl.categorical_q_sample(x0, bad, s, "uniform")
    with pytest.raises(TypeError, match=r"^t must be an integer, got 1.5 \(float\)$"):
        dl.categorical_q_sample(x0, 1.5, s, "uniform")
    # cumulative_transition_matrix: t in [0, T - 1], named t
    for t in (-1, 5, 6):
        with pytest.raises(ValueError, match=rf"^t must be an integer in \[0, 4\], got {t}$"):
            dl.cumulative_transition_matrix(s, t, "uniform")
    with pytest.raises(TypeError, match=r"^schedule must be a CategoricalSchedule \(dl.categorical_schedule\(K, T\)\), "
                                        r"got Schedule$"):
        dl.cumulative_transition_matrix(dl.linear_schedule(5), 1, "uniform")
    # K = 2 is allowed: Q = (1 - beta) I + beta / 2 (uniform)
    Q = dl.transition_matrix("uniform", 2, 0.3)
    assert Q.tolist() == [[0.7 + 0.15, 0.15], [0.15, 0.7 + 0.15]]
    # x0 named x0 in the posterior and the prior KL
    msg = r"^x0 must hold categories in \[0, 2\], got values from 0 to 3$"
    with pytest.raises(ValueError, match=msg):
        dl.categorical_posterior(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]), 1, s, "uniform")
    with pytest.raises(ValueError, match=msg):
        dl.categorical_prior_kl(torch.tensor([[0, 3]]), s, "uniform")
    # the impossible pairs are counted: x0 = (0, 1, 2), xt = (1, 1, 0) unmasked under "absorbing": 2 positions
    with pytest.raises(ValueError, match=r"^xt is impossible given x0 under kind 'absorbing' \(q\(x_t \| x_0\) = 0 at "
                                        r"2 position\(s\)\); the posterior is undefined there$"):
        dl.categorical_posterior(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, 0]]), 1, s, "absorbing")
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int$"):
        dl.categorical_q_sample(x0, 1, s, "uniform", generator=0)


def _shape_re(t):
    return re.escape(str(tuple(t.shape)))


def test_posterior_dtype_and_per_row_t():
    s = _schedules()[2]                                        # betas 0.3, 0.1, 0.6, 0.2
    x0, xt = torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 2], [1, 2]])
    assert dl.categorical_posterior(x0, xt, 1, s, "uniform").dtype == torch.float32   # the documented default
    assert dl.categorical_posterior(x0, xt, 1, s, "uniform", dtype=torch.float16).dtype == torch.float16
    # per-row t = (1, 3): each row is Bayes' rule with its own step (closed form for "uniform", K = 3)
    t = torch.tensor([1, 3])
    got = dl.categorical_posterior(x0, xt, t, s, "uniform", dtype=torch.float64)
    betas, ab = [0.3, 0.1, 0.6, 0.2], [0.7, 0.63, 0.252, 0.2016]
    for r in range(2):
        beta, abp = betas[int(t[r])], ab[int(t[r]) - 1]
        for c in range(2):
            a, b = int(x0[r, c]), int(xt[r, c])
            w = [((1 - beta) * (j == b) + beta / K) * (abp * (j == a) + (1 - abp) / K) for j in range(K)]
            torch.testing.assert_close(got[r, c], torch.tensor(w, dtype=torch.float64) / sum(w), rtol=0, atol=1e-14)
    logits = torch.randn(2, 2, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kl = dl.d3pm_kl(logits, x0, xt, t, s, "uniform")
    for r in range(2):
        torch.testing.assert_close(kl[r], _kl_by_enumeration(logits[r:r + 1], x0[r:r + 1], xt[r:r + 1], int(t[r]),
                                                             s, "uniform")[0], rtol=0, atol=1e-12)


def test_prior_kl_when_nothing_has_moved():
    # betas so small that 1 - beta == 1 in float64: alpha_bar_T = 1, q(x_T | x_0) = onehot(x_0), KL to uniform = log K
    s = dl.CategoricalSchedule(torch.tensor([1e-20, 1e-20], dtype=torch.float64), K)
    assert float(s.alpha_bars[-1]) == 1.0
    assert dl.categorical_prior_kl(torch.tensor([[0, 2]]), s, "uniform").tolist() == [[math.log(K)] * 2]


@pytest.mark.parametrize("kind", KINDS)
def test_q_sample_draws_from_the_generator_alone(kind):
    # the documented draw: one float64 uniform per token, kept where u < alpha_bar_t, else U's row
    # ("uniform": a category from the same generator; "absorbing": the mask K); the global RNG is not used
    s = dl.categorical_schedule(K, 5, "cosine")
    x0 = torch.randint(0, K, (4, 50), generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 1, 2, 4])
    torch.manual_seed(1)
    got = dl.categorical_q_sample(x0, t, s, kind, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(2)
    u = torch.rand(x0.shape, generator=g, dtype=torch.float64)
    jump = torch.randint(0, K, x0.shape, generator=g) if kind == "uniform" else torch.full_like(x0, K)
    ab = torch.cumprod(1 - s.betas, 0)[t][:, None]
    assert torch.equal(got, torch.where(u < ab, x0, jump))


@pytest.mark.parametrize("kind", KINDS)
def test_on_the_simulated_device_gives_the_cpu_numbers(kind):
    # per-row t on the simulated accelerator of tests/test_device_discipline.py: a table left on the CPU
    # (a (B, ...) tensor mixed with device tensors) raises there, as on CUDA
    from test_device_discipline import OnDevice, fake_device, to_host
    s = dl.categorical_schedule(K, 5, "cosine")
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(0, K, (3, 4), generator=g)
    logits = torch.randn(3, 4, K, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 2, 4])
    xs = dl.categorical_q_sample(x0, t, s, kind, generator=torch.Generator().manual_seed(7))
    xt = xs.clone()
    if kind == "absorbing":
        xt[:, 0] = K                                        # masked tokens at every t for the absorbing terms
    want = (xs, dl.categorical_posterior(x0, xt, t, s, kind), dl.d3pm_kl(logits, x0, xt, t, s, kind))
    with fake_device() as rec:
        d0, dt_, dl_ = OnDevice(x0), OnDevice(xt), OnDevice(logits)
        got = (dl.categorical_q_sample(d0, t, s, kind, generator=torch.Generator().manual_seed(7)),
               dl.categorical_posterior(d0, dt_, t, s, kind), dl.d3pm_kl(dl_, d0, dt_, t, s, kind))
    assert rec.created > 0
    for a, b in zip(got, want):
        assert isinstance(a, OnDevice)
        torch.testing.assert_close(to_host(a), b, rtol=0, atol=1e-13)
    # and a schedule built from betas on the device stores them on the CPU
    with fake_device():
        dev = dl.CategoricalSchedule(OnDevice(torch.tensor([0.5, 1.0], dtype=torch.float64)), K)
    assert type(dev.betas) is torch.Tensor and dev.betas.device.type == "cpu" and dev.betas.tolist() == [0.5, 1.0]


def test_check_tokens_messages_bounds_and_dtype():
    from diffusion_lab.categorical import check_tokens
    with pytest.raises(TypeError, match=r"^x0 must be a torch.Tensor of integer tokens, got list$"):
        check_tokens("x0", [0, 1], K)
    for dtype in (torch.float32, torch.complex64, torch.bool):
        with pytest.raises(TypeError, match=rf"^xt must hold integer tokens \(e.g. torch.long\), got dtype {dtype}$"):
            check_tokens("xt", torch.zeros(2, dtype=dtype), K)
    # values in [0, K - 1], or [0, K] with the mask K
    for x, mask, lo, hi in (([0, 3], False, 0, 3), ([-1, 2], False, -1, 2), ([0, 4], True, 0, 4), ([-1, 3], True, -1, 3)):
        what = r"\[0, 3\] \(3 = mask\)" if mask else r"\[0, 2\]"
        with pytest.raises(ValueError, match=rf"^tok must hold categories in {what}, got values from {lo} to {hi}$"):
            check_tokens("tok", torch.tensor(x), K, mask=mask)
    with pytest.raises(ValueError, match=r"^tok must hold categories in \[0, 2\], got values from 0 to 3$"):
        check_tokens("tok", torch.tensor([0, 3]), K)                          # the mask is not allowed by default
    for x, mask in (([0, 2], False), ([0, 3], True), ([3, 3], True)):
        out = check_tokens("tok", torch.tensor(x, dtype=torch.int32), K, mask=mask)
        assert out.dtype == torch.long and out.tolist() == x
    empty = check_tokens("tok", torch.zeros(0, dtype=torch.uint8), K)      # nothing to check: accepted, as long
    assert empty.dtype == torch.long and empty.shape == (0,)
