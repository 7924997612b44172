"""Metrics: sliced Wasserstein against closed forms, MMD against a by-hand computation, the
digits classifier, and bad input."""
import math

import pytest
import torch
from scipy import stats

import diffusion_lab as dl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sliced_wasserstein_of_identical_sets_is_zero_and_symmetric():
    x = torch.randn(500, 3, generator=_gen(0))
    assert dl.sliced_wasserstein(x, x.clone(), generator=_gen(1)) == pytest.approx(0.0, abs=1e-12)
    y = torch.randn(500, 3, generator=_gen(2)) + 0.5
    a = dl.sliced_wasserstein(x, y, generator=_gen(3))
    b = dl.sliced_wasserstein(y, x, generator=_gen(3))
    assert a == pytest.approx(b, rel=1e-12) and a > 0


def test_sliced_wasserstein_of_a_translation():
    # y = x + d: every projection is shifted by theta . d, so SW^2 = E_theta (theta . d)^2 = |d|^2 / D
    # for theta uniform on the sphere. In 2-D, (theta . d)^2 = |d|^2 cos^2(phi) has SD |d|^2 / sqrt(8);
    # with 4096 projections the SE of SW^2 is |d|^2 / sqrt(8 * 4096); 5 SE.
    x = torch.randn(300, 2, generator=_gen(4), dtype=torch.float64)
    d = torch.tensor([0.6, -0.8], dtype=torch.float64)
    sw = dl.sliced_wasserstein(x, x + d, n_projections=4096, generator=_gen(5))
    assert abs(sw ** 2 - 0.5) < 5 * 1.0 / math.sqrt(8 * 4096)


def test_sliced_wasserstein_in_one_dimension_is_the_w2_of_quantiles():
    # In 1-D every projection is +-1, so SW = W2 between the empirical distributions. With
    # quantile-placed samples q_i and y_i = m + s q_i, W2^2 = mean((m + (s - 1) q_i)^2) exactly.
    n = 2000
    q = torch.tensor(stats.norm.ppf((torch.arange(n) + 0.5).numpy() / n), dtype=torch.float64)
    m, s = 0.3, 1.5
    sw = dl.sliced_wasserstein(q[:, None], (m + s * q)[:, None], n_projections=8, generator=_gen(6))
    assert sw == pytest.approx(math.sqrt(float(((m + (s - 1) * q) ** 2).mean())), rel=1e-9)


def test_sliced_wasserstein_unequal_sizes():
    x = torch.randn(4000, 2, generator=_gen(7))
    near = dl.sliced_wasserstein(x, x[:1000], generator=_gen(8))
    far = dl.sliced_wasserstein(x, x[:1000] + 1.0, generator=_gen(8))
    assert near < 0.1 and far > 0.5


def test_mmd_by_hand():
    # Unbiased MMD^2 with k = sum_h exp(-|a - b|^2 / (2 h^2)):
    # mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j).
    x = torch.randn(4, 2, generator=_gen(9), dtype=torch.float64)
    y = torch.randn(5, 2, generator=_gen(10), dtype=torch.float64) + 0.3
    hs = (0.5, 2.0)

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h)) for h in hs)
    kxx = sum(k(x[i], x[j]) for i in range(4) for j in range(4) if i != j) / 12
    kyy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    kxy = sum(k(x[i], y[j]) for i in range(4) for j in range(5)) / 20
    assert dl.mmd(x, y, bandwidths=hs) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)


def test_mmd_separates_distributions():
    x = torch.randn(400, 2, generator=_gen(11))
    same = dl.mmd(x, torch.randn(400, 2, generator=_gen(12)))
    shifted = dl.mmd(x, torch.randn(400, 2, generator=_gen(12)) + 1.0)
    assert abs(same) < shifted / 20 and shifted > 0


def test_digits_classifier_and_accuracy():
    # 40 seeded steps reach ~0.93 held-out accuracy; require 0.8 (chance is 0.1).
    clf, acc = dl.train_digits_classifier(steps=40, seed=0)
    assert acc > 0.8
    x, y = dl.load_digits()
    assert dl.classifier_accuracy(clf, x[:200], y[:200]) > 0.8
    assert dl.classifier_accuracy(lambda z: torch.nn.functional.one_hot(torch.zeros(z.shape[0], dtype=torch.long), 10).float(),
                                  x[:100], torch.zeros(100, dtype=torch.long)) == 1.0


def test_metrics_bad_input():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="x and y"):
        dl.sliced_wasserstein(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="x"):
        dl.sliced_wasserstein(x * float("nan"), x)
    with pytest.raises(ValueError, match="n_projections"):
        dl.sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(TypeError, match="y"):
        dl.mmd(x, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="mmd"):
        dl.mmd(x[:1], x)
    with pytest.raises(ValueError, match="labels"):
        dl.classifier_accuracy(lambda z: z, x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        dl.train_digits_classifier(steps=0)
