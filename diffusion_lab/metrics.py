"""Sample-quality metrics: sliced Wasserstein distance and MMD between sample sets, and an
independently trained digits classifier to judge class-conditional samples."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_int, check_number, check_tensor, randn


def _check_sets(x, y):
    check_tensor("x", x)
    check_tensor("y", y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (M, D) with the same D, got {tuple(x.shape)} and {tuple(y.shape)}")


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    r"""Sliced 2-Wasserstein distance between two sample sets.

    The square root of the mean, over random unit directions :math:`u`, of :math:`W_2^2` between the 1-D
    projections :math:`u^\top x` and :math:`u^\top y` (quantiles matched at :math:`N = \min(|x|, |y|)` levels).

    Parameters
    ----------
    x, y : torch.Tensor
        Samples, shapes ``(N_x, D)`` and ``(N_y, D)``.
    n_projections : int, optional
        Number of random directions (default 256).
    generator : torch.Generator, optional
        Source of the directions.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If the inputs are not finite floating-point tensors of one dimension ``D``, or ``n_projections < 1``.
    """
    _check_sets(x, y)
    n_projections = check_int("n_projections", n_projections, low=1)
    x, y = x.double().cpu(), y.double().cpu()
    theta = randn((x.shape[1], n_projections), generator, device="cpu", dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    n = min(px.shape[0], py.shape[0])
    if px.shape[0] != py.shape[0]:
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        px = torch.quantile(px, q, dim=0) if px.shape[0] != n else px
        py = torch.quantile(py, q, dim=0) if py.shape[0] != n else py
    return float(((px - py) ** 2).mean().sqrt())


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    r"""Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels (Gretton et al. 2012).

    Parameters
    ----------
    x, y : torch.Tensor
        Samples, shapes ``(N_x, D)`` and ``(N_y, D)``, at least 2 each.
    bandwidths : sequence of float, optional
        The kernels' bandwidths (default ``(0.1, 0.3, 1.0, 3.0)``).

    Returns
    -------
    float
        :math:`\widehat{\mathrm{MMD}}^2` (can be slightly negative: it is unbiased).

    Raises
    ------
    ValueError
        If a set has fewer than 2 samples, or the inputs are not finite tensors of one dimension.
    """
    _check_sets(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"mmd needs at least 2 samples in each set, got {x.shape[0]} and {y.shape[0]}")
    x, y = x.double().cpu(), y.double().cpu()

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h ** 2)) for h in bandwidths)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits in :math:`[-1, 1]`, used only to judge generated digits.

    Trained by :func:`train_digits_classifier`, independently of every generative model.
    """

    def __init__(self):
        super().__init__()
        self.config = {}
        self.net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 16, 128), nn.ReLU(),
                                 nn.Linear(128, 10))

    def forward(self, x):
        """Class logits.

        Parameters
        ----------
        x : torch.Tensor
            Digits, shape ``(B, 1, 8, 8)``.

        Returns
        -------
        torch.Tensor
            Logits, shape ``(B, 10)``.
        """
        return self.net(x)


def train_digits_classifier(steps: int = 1500, seed: int = 0, test_fraction: float = 0.25):
    """Train a :class:`DigitsClassifier` on a seeded split of the scikit-learn digits.

    Parameters
    ----------
    steps : int, optional
        Optimizer steps (default 1500).
    seed : int, optional
        Seeds the split and the training (default 0).
    test_fraction : float, optional
        Held-out fraction, in :math:`(0, 1)` (default 0.25).

    Returns
    -------
    classifier : DigitsClassifier
    accuracy : float
        Accuracy on the held-out part.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is out of range.
    """
    from .data import load_digits

    steps = check_int("steps", steps, low=1)
    test_fraction = check_number("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    x, y = load_digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    n_test = int(round(test_fraction * x.shape[0]))
    test, train = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed)  # dropout inside the classifier uses the global generator; seed it for determinism
    clf = DigitsClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = train[torch.randint(0, train.numel(), (128,), generator=g)]
        xb = x[idx] + 0.05 * torch.randn(idx.shape[0], 1, 8, 8, generator=g)  # slight noise: robust to sample artefacts
        loss = F.cross_entropy(clf(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    return clf, classifier_accuracy(clf, x[test], y[test])


@torch.no_grad()
def classifier_accuracy(classifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``x`` that ``classifier`` assigns to ``labels``.

    Parameters
    ----------
    classifier : callable
        ``classifier(x) -> logits``, shape ``(B, K)``.
    x : torch.Tensor
        Inputs, shape ``(B, ...)``.
    labels : torch.Tensor
        Integer labels, shape ``(B,)``.

    Returns
    -------
    float
        In :math:`[0, 1]`.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``x`` is not a finite floating-point tensor or ``labels`` is not of shape ``(B,)``.
    """
    check_tensor("x", x)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    pred = classifier(x).argmax(1).cpu()
    return float((pred == labels.cpu()).float().mean())
