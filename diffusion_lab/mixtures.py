r"""Gaussian mixtures with exact densities, scores and denoisers: the oracle behind the tests and chapters.

Noising a mixture keeps it a mixture: under the forward process
:math:`q(x_t) = \sum_k w_k\,\mathcal N(\sqrt{\bar\alpha}\,\mu_k,\ \bar\alpha\,\Sigma_k + (1 - \bar\alpha) I)`, and under
additive noise of scale :math:`\sigma`, :math:`p_\sigma(x) = \sum_k w_k\,\mathcal N(\mu_k, \Sigma_k + \sigma^2 I)`. So the
score at every noise level, :math:`\epsilon^* = -\sqrt{1 - \bar\alpha}\,\nabla\log q` (Tweedie), and :math:`p(c \mid x_t)`
are all exact.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_int, check_tensor, randn
from .schedules import Schedule


class GaussianMixture:
    r"""A Gaussian mixture :math:`\sum_k w_k\,\mathcal N(\mu_k, \Sigma_k)` in :math:`D` dimensions, the book's exact oracle.

    Optional integer class labels per component make it a labelled distribution. A CPU oracle:
    everything is computed in float64 on the CPU. Given ``x`` on another device, a method copies ``x`` to
    the CPU (a device-to-host sync per call, so an oracle sampler on a GPU waits every step: fine for tests,
    not for speed) and returns its result on ``x``'s device in ``x``'s dtype, cast on the CPU first, so no
    float64 tensor reaches the device (Apple's MPS has none).

    Parameters
    ----------
    means : array_like
        Component means, shape ``(K, D)``.
    covs : array_like, optional
        Covariances, shape ``(K, D, D)``, symmetric positive definite. Give exactly one of ``covs`` and ``stds``.
    weights : array_like, optional
        ``K`` positive weights summing to 1 (default: equal).
    stds : float or array_like, optional
        Isotropic standard deviations, one per component ``(K,)`` or one for all.
    labels : array_like, optional
        An integer class label per component, shape ``(K,)``.

    Raises
    ------
    ValueError
        If a shape is wrong, both or neither of ``covs`` and ``stds`` are given, a covariance is not
        positive definite, or the weights are not positive or do not sum to 1.
    """

    def __init__(self, means, covs=None, weights=None, *, stds=None, labels=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K, D = means.shape
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs (K, D, D) and stds (K,) or a float")
        if stds is not None:
            stds = torch.as_tensor(stds, dtype=torch.float64).expand(K)
            if bool((stds <= 0).any()):
                raise ValueError(f"stds must be positive, got {stds.tolist()}")
            covs = stds[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K, D, D) = {(K, D, D)}, got {tuple(covs.shape)}")
        if not bool(torch.allclose(covs, covs.transpose(1, 2))) or bool((torch.linalg.eigvalsh(covs) <= 0).any()):
            raise ValueError("every covariance must be symmetric positive definite")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or bool((weights <= 0).any()) or abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must be K = {K} positive numbers summing to 1, got {weights.tolist()}")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and self.labels.shape != (K,):
            raise ValueError(f"labels must have shape (K,) = ({K},), got {tuple(self.labels.shape)}")

    @property
    def dim(self) -> int:
        """The dimension :math:`D`."""
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of classes (0 without labels)."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    # ---- moments and sampling -------------------------------------------------------
    def mean(self) -> torch.Tensor:
        r"""The mixture's mean :math:`\sum_k w_k \mu_k`, float64, shape ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """The mixture's covariance, float64, shape ``(D, D)``."""
        m = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, generator: torch.Generator | None = None):
        r"""Draw ``n`` samples.

        Parameters
        ----------
        n : int
            Number of samples, :math:`\ge 1`.
        generator : torch.Generator, optional
            Source of the draws.

        Returns
        -------
        x : torch.Tensor
            float32, shape ``(n, D)``.
        component : torch.Tensor
            The component index of each sample, shape ``(n,)``.
        """
        n = check_int("n", n, low=1)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = randn((n, self.dim), generator, device="cpu", dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)                        # (K, D, D)
        x = self.means[k] + (chol[k] @ z[:, :, None]).squeeze(-1)      # (n, D)
        return x.float(), k

    def sample_labelled(self, n: int, generator: torch.Generator | None = None):
        """Draw ``n`` samples with their class labels (a mixture built with ``labels``).

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of the draws.

        Returns
        -------
        x : torch.Tensor
            Shape ``(n, D)``.
        labels : torch.Tensor
            Shape ``(n,)``.

        Raises
        ------
        ValueError
            If the mixture has no labels.
        """
        if self.labels is None:
            raise ValueError("this mixture has no labels; build it with labels=...")
        x, k = self.sample(n, generator)
        return x, self.labels[k]

    # ---- exact densities at any noise level ------------------------------------------
    def _noised(self, scale: torch.Tensor, var: torch.Tensor):
        """Component means and covariances of scale * X + sqrt(var) * N(0, I); scale, var of shape (B,)."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        means = scale[:, None, None] * self.means[None]                                   # (B, K, D)
        covs = scale[:, None, None, None] ** 2 * self.covs[None] + var[:, None, None, None] * eye  # (B, K, D, D)
        return means, covs

    def _component_terms(self, x: torch.Tensor, scale, var):
        x64 = x.to("cpu", torch.float64)  # differentiable: log_prob can be backpropagated
        B = x64.shape[0]
        scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1).expand(B)
        var = torch.as_tensor(var, dtype=torch.float64).reshape(-1).expand(B)
        means, covs = self._noised(scale, var)
        chol = torch.linalg.cholesky(covs)
        diff = x64[:, None, :] - means                                                     # (B, K, D)
        sol = torch.cholesky_solve(diff[..., None], chol).squeeze(-1)                      # Sigma^-1 (x - mu)
        maha = (diff * sol).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi)) + torch.log(self.weights)  # (B, K)
        return logp, sol

    def _check_x(self, x):
        check_tensor("x", x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")

    def log_prob(self, x: torch.Tensor, *, scale=1.0, var=0.0, cond=None) -> torch.Tensor:
        r"""Exact log-density of :math:`a X + \sqrt{v}\,\epsilon` (default: the clean mixture); with ``cond``, :math:`\log p(x \mid c)`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape ``(B, D)``.
        scale : float, optional
            :math:`a` (default 1).
        var : float, optional
            :math:`v` (default 0).
        cond : torch.Tensor, optional
            Class labels, shape ``(B,)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B,)``.
        """
        self._check_x(x)
        logp, _ = self._component_terms(x, scale, var)
        logp = self._restrict(logp, cond)
        out = torch.logsumexp(logp, dim=1)
        if cond is not None:   # divide by p(c) = sum of the class's weights: log p(x | c), not log p(x, c)
            out = out - torch.logsumexp(self._restrict(torch.log(self.weights).expand_as(logp), cond), dim=1)
        return _back(out, x)

    def score(self, x: torch.Tensor, *, scale=1.0, var=0.0, cond=None) -> torch.Tensor:
        r"""Exact score :math:`\nabla_x \log p(x) = -\sum_k r_k(x)\,\Sigma_k^{-1}(x - \mu_k)` (:math:`r_k`: responsibilities).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape ``(B, D)``.
        scale, var : float, optional
            The noised distribution :math:`a X + \sqrt{v}\,\epsilon`, as in :meth:`log_prob`.
        cond : torch.Tensor, optional
            Class labels, shape ``(B,)``: the conditional score.

        Returns
        -------
        torch.Tensor
            Shape ``(B, D)``.
        """
        self._check_x(x)
        logp, sol = self._component_terms(x, scale, var)
        logp = self._restrict(logp, cond)
        resp = torch.softmax(logp, dim=1)                                                  # (B, K)
        return _back(-(resp[..., None] * sol).sum(1), x)

    def class_log_probs(self, x: torch.Tensor, *, scale=1.0, var=0.0) -> torch.Tensor:
        r""":math:`\log p(c \mid x)` for every class: the exact (noise-aware) classifier.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape ``(B, D)``.
        scale, var : float, optional
            The noised distribution, as in :meth:`log_prob`.

        Returns
        -------
        torch.Tensor
            Shape ``(B, num_classes)``.

        Raises
        ------
        ValueError
            If the mixture has no labels.
        """
        self._check_x(x)
        if self.labels is None:
            raise ValueError("this mixture has no labels; build it with labels=...")
        logp, _ = self._component_terms(x, scale, var)
        per_class = torch.stack([torch.logsumexp(logp[:, self.labels == c], 1) for c in range(self.num_classes)], 1)
        return _back(per_class - torch.logsumexp(per_class, 1, keepdim=True), x)

    def _restrict(self, logp, cond):
        if cond is None:
            return logp
        if self.labels is None:
            raise ValueError("cond given but this mixture has no labels")
        cond = torch.as_tensor(cond).reshape(-1).cpu().expand(logp.shape[0])
        mask = self.labels[None, :] == cond[:, None]
        return logp.masked_fill(~mask, -math.inf)

    # ---- oracle models ---------------------------------------------------------------
    def eps_model(self, schedule: Schedule):
        r"""The exact :math:`\epsilon`-predictor under ``schedule``: ``model(x, t, cond=None)`` :math:`= -\sqrt{1 - \bar\alpha_t}\;\nabla \log q_t(x)`.

        Parameters
        ----------
        schedule : Schedule
            The variance schedule.

        Returns
        -------
        callable
            A model following the model contract.
        """
        ab_all = schedule.alpha_bars

        def model(x, t, cond=None):
            ab = ab_all[t.cpu().long()]
            s = self.score(x, scale=ab.sqrt(), var=1 - ab, cond=cond)
            return -_back((1 - ab).sqrt(), x)[:, None] * s
        return model

    def noise_score_model(self):
        r"""The exact noise-conditional score :math:`s(x, \sigma)` of :math:`p_\sigma = p * \mathcal N(0, \sigma^2 I)`.

        Returns
        -------
        callable
            ``score_model(x, sigma)`` with ``sigma`` of shape ``(B,)``.
        """
        def score_model(x, sigma):
            sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
            return self.score(x, var=sigma.cpu() ** 2)
        return score_model

    # ---- oracle on a continuous-time path x_t = alpha(t) x0 + sigma(t) eps ---------------
    def posterior_means(self, x: torch.Tensor, alpha, sigma, cond=None):
        r"""Exact :math:`(\mathbb E[x_0 \mid x_t], \mathbb E[\epsilon \mid x_t])` at :math:`x_t = \alpha x_0 + \sigma\epsilon`, in float64.

        With :math:`C_k = \alpha^2 \Sigma_k + \sigma^2 I` and :math:`r_k` the responsibilities,
        :math:`\mathbb E[x_0 \mid x_t] = \sum_k r_k \big(\mu_k + \alpha \Sigma_k C_k^{-1}(x - \alpha\mu_k)\big)` and
        :math:`\mathbb E[\epsilon \mid x_t] = \sigma \sum_k r_k C_k^{-1}(x - \alpha\mu_k)`: regular at :math:`\alpha = 0`
        (:math:`\hat x_0` = the mean) and at :math:`\sigma = 0`.

        Parameters
        ----------
        x : torch.Tensor
            Points :math:`x_t`, shape ``(B, D)``.
        alpha, sigma : float or torch.Tensor
            Numbers, or one per example ``(B,)``.
        cond : torch.Tensor, optional
            Class labels, shape ``(B,)``.

        Returns
        -------
        tuple of torch.Tensor
            ``(x0_hat, eps_hat)``, each float64 of shape ``(B, D)``.
        """
        self._check_x(x)
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        logp, sol = self._component_terms(x, alpha.reshape(-1), sigma.reshape(-1) ** 2)
        resp = torch.softmax(self._restrict(logp, cond), dim=1)                               # (B, K)
        pulled = (resp[..., None] * (self.covs[None] @ sol[..., None]).squeeze(-1)).sum(1)      # (B, D)
        x0 = resp @ self.means + alpha * pulled
        eps = sigma * (resp[..., None] * sol).sum(1)
        return x0, eps

    def path_model(self, path, prediction: str = "eps"):
        r"""The exact continuous-time model of this mixture on a Gaussian path.

        Parameters
        ----------
        path : GaussianPath
            The path :math:`x_t = \alpha(t) x_0 + \sigma(t)\epsilon`.
        prediction : {"eps", "x0", "v", "score", "velocity"}, optional
            What the model returns (default ``"eps"``).

        Returns
        -------
        callable
            ``model(x, t, cond=None)`` with float times ``t`` of shape ``(B,)`` in :math:`[0, 1]`.

        Raises
        ------
        ValueError
            If ``prediction`` is unknown.
        """
        from .paths import check_time
        from .predictions import check_prediction, from_pair
        check_prediction(prediction)

        def model(x, t, cond=None):
            t64 = check_time(t).reshape(-1).expand(x.shape[0])
            c = [path.alpha(t64)[:, None], path.sigma(t64)[:, None], path.d_alpha(t64)[:, None], path.d_sigma(t64)[:, None]]
            x0, eps = self.posterior_means(x, c[0], c[1], cond)
            return from_pair(x0, eps, prediction, *c).to(device=x.device, dtype=x.dtype)
        return model

    def path_log_prob(self, x: torch.Tensor, t, path, cond=None) -> torch.Tensor:
        r""":math:`\log p_t(x)`, the exact density of :math:`x_t = \alpha(t) x_0 + \sigma(t)\epsilon` on ``path``.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape ``(B, D)``.
        t : float or torch.Tensor
            A time in :math:`[0, 1]`, or one per example ``(B,)``.
        path : GaussianPath
            The path.
        cond : torch.Tensor, optional
            Class labels, shape ``(B,)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B,)``.
        """
        from .paths import check_time
        t64 = check_time(t)
        return self.log_prob(x, scale=path.alpha(t64), var=path.sigma(t64) ** 2, cond=cond)


def _back(value64: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float64 CPU result in x's dtype (cast on the CPU) on x's device."""
    return value64.to(x.dtype).to(x.device)


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.1, labelled: bool = False) -> GaussianMixture:
    r"""``k`` equal Gaussians on a circle.

    Parameters
    ----------
    k : int, optional
        Number of components, :math:`\ge 1` (default 8).
    radius : float, optional
        Radius of the circle (default 2.0).
    std : float, optional
        Standard deviation of each component (default 0.1).
    labelled : bool, optional
        Give component ``i`` the label ``i`` (default ``False``).

    Returns
    -------
    GaussianMixture
        In two dimensions.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``k`` is not a positive integer or ``std`` is not positive.
    """
    k = check_int("k", k, low=1)
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(means, stds=std, labels=torch.arange(k) if labelled else None)
