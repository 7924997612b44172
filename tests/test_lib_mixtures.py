"""The Gaussian-mixture oracle itself: densities against scipy, the score against autograd,
class posteriors against Bayes' rule, sampling moments, the noised densities, and bad input."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import diffusion_lab as dl

MEANS = [[-1.0, 0.5], [2.0, 0.0], [0.0, -2.0]]
COVS = [[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 0.6]], [[1.0, -0.4], [-0.4, 0.5]]]
W = [0.2, 0.5, 0.3]
GM = dl.GaussianMixture(MEANS, covs=COVS, weights=W, labels=[0, 1, 0])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _scipy_density(x, scale=1.0, var=0.0):
    # sum_k w_k N(x; scale mu_k, scale^2 Sigma_k + var I), evaluated with scipy.
    out = np.zeros(x.shape[0])
    for m, c, w in zip(MEANS, COVS, W):
        cov = scale ** 2 * np.array(c) + var * np.eye(2)
        out += w * stats.multivariate_normal(scale * np.array(m), cov).pdf(x)
    return out


@pytest.mark.parametrize("scale, var", [(1.0, 0.0), (0.6, 0.64), (0.1, 0.99)])
def test_log_prob_matches_scipy(scale, var):
    x = torch.randn(20, 2, generator=_gen(0), dtype=torch.float64) * 2
    ours = GM.log_prob(x, scale=scale, var=var)
    np.testing.assert_allclose(ours.numpy(), np.log(_scipy_density(x.numpy(), scale, var)), rtol=1e-10)


@pytest.mark.parametrize("scale, var", [(1.0, 0.0), (0.6, 0.64)])
def test_score_is_the_gradient_of_log_prob(scale, var):
    x = (torch.randn(10, 2, generator=_gen(1), dtype=torch.float64) * 2).requires_grad_()
    (grad,) = torch.autograd.grad(GM.log_prob(x, scale=scale, var=var).sum(), x)
    torch.testing.assert_close(GM.score(x.detach(), scale=scale, var=var), grad)


def test_class_log_probs_is_bayes_rule_and_cond_restricts_the_density():
    x = torch.randn(10, 2, generator=_gen(2), dtype=torch.float64)
    logp = GM.class_log_probs(x)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(10, dtype=torch.float64))
    # class 0 = components 0 and 2
    xn = x.numpy()
    comp = [w * stats.multivariate_normal(np.array(m), np.array(c)).pdf(xn) for m, c, w in zip(MEANS, COVS, W)]
    p0 = (comp[0] + comp[2]) / (comp[0] + comp[1] + comp[2])
    np.testing.assert_allclose(logp[:, 0].exp().numpy(), p0, rtol=1e-10)
    # With cond, log_prob is the class-conditional density log p(x | c), a normalized density:
    # log p(x | c) + log p(c) - log p(x) = log p(c | x), with p(c = 0) = 0.2 + 0.3 = 0.5.
    lp_c0 = GM.log_prob(x, cond=torch.zeros(10, dtype=torch.long))
    np.testing.assert_allclose(lp_c0.exp().numpy(), (comp[0] + comp[2]) / 0.5, rtol=1e-9)
    np.testing.assert_allclose((lp_c0 + math.log(0.5) - GM.log_prob(x)).numpy(), logp[:, 0].numpy(), rtol=1e-9, atol=1e-12)


def test_noise_score_model_is_the_score_of_the_smoothed_density():
    x = torch.randn(4, 2, generator=_gen(3), dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    out = GM.noise_score_model()(x, sigma)
    for i in range(4):
        torch.testing.assert_close(out[i:i + 1], GM.score(x[i:i + 1], var=float(sigma[i]) ** 2))


def test_sample_moments_and_labels():
    # Mean SE sqrt(C_ii / n); covariance entries: SE estimated from the sample's own 4th moments. 5 SE.
    n = 50_000
    x, k = GM.sample(n, _gen(4))
    assert x.shape == (n, 2) and x.dtype == torch.float32 and k.shape == (n,)
    xd = x.double()
    cov = GM.covariance()
    assert ((xd.mean(0) - GM.mean()).abs() < 5 * (cov.diagonal() / n).sqrt()).all()
    r = xd - xd.mean(0)
    se = (r[:, :, None] * r[:, None, :]).std(0) / math.sqrt(n)
    assert ((torch.cov(xd.T) - cov).abs() < 5 * se).all()
    freq = torch.bincount(k, minlength=3).double() / n
    w = torch.tensor(W, dtype=torch.float64)
    assert ((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all()
    _, y = GM.sample_labelled(100, _gen(5))
    assert set(y.tolist()) <= {0, 1}
    # Moments by hand: mean = sum w mu, covariance = sum w (Sigma + mu mu^T) - mean mean^T.
    mu = torch.tensor(MEANS, dtype=torch.float64)
    second = sum(wk * (torch.tensor(c, dtype=torch.float64) + torch.outer(m, m)) for wk, c, m in zip(W, COVS, mu))
    torch.testing.assert_close(GM.mean(), w @ mu)
    torch.testing.assert_close(cov, second - torch.outer(w @ mu, w @ mu))


def test_sample_is_deterministic_given_a_generator():
    a, _ = GM.sample(10, _gen(6))
    b, _ = GM.sample(10, _gen(6))
    assert torch.equal(a, b)


def test_ring_mixture():
    gm = dl.ring_mixture(8, radius=2.0, std=0.1, labelled=True)
    assert gm.means.shape == (8, 2) and gm.num_classes == 8
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(gm.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(gm.covariance(), (2.0 + 0.01) * torch.eye(2, dtype=torch.float64))


def test_mixture_bad_input():
    with pytest.raises(ValueError, match="means"):
        dl.GaussianMixture([1.0, 2.0], stds=1.0)
    with pytest.raises(ValueError, match="covs"):
        dl.GaussianMixture([[0.0, 0.0]])
    with pytest.raises(ValueError, match="stds"):
        dl.GaussianMixture([[0.0, 0.0]], stds=[0.0])
    with pytest.raises(ValueError, match="covariance"):
        dl.GaussianMixture([[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="weights"):
        dl.GaussianMixture([[0.0], [1.0]], stds=1.0, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="labels"):
        dl.GaussianMixture([[0.0], [1.0]], stds=1.0, labels=[0])
    with pytest.raises(ValueError, match="x"):
        GM.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="x"):
        GM.score(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="n"):
        GM.sample(0)
    with pytest.raises(ValueError, match="labels"):
        dl.ring_mixture(4).class_log_probs(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="k"):
        dl.ring_mixture(0)
