"""Guidance wrappers: the CFG formula, and the exact identity between classifier-free guidance
and classifier guidance when both are built from a labelled Gaussian mixture's oracle."""
import math

import pytest
import torch

import diffusion_lab as dl

S = dl.linear_schedule()
GM = dl.GaussianMixture([[-1.0, -0.6], [1.0, -0.6], [0.0, 1.1]], stds=0.45, labels=[0, 1, 2])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _exact_classifier(x, t):
    # log p(c | x_t) of the noised mixture: logits for classifier guidance, differentiable in x.
    ab = S.alpha_bars[t.cpu()]                                  # (B,): one noise level per row
    return GM.class_log_probs(x, scale=ab.sqrt(), var=1 - ab)


def test_cfg_eps_formula():
    g = _gen(0)
    u, c = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    torch.testing.assert_close(dl.cfg_eps(u, c, 3.0), u + 3.0 * (c - u))
    torch.testing.assert_close(dl.cfg_eps(u, c, 1.0), c)
    torch.testing.assert_close(dl.cfg_eps(u, c, 0.0), u)


def test_cfg_wrapper_calls_the_model_with_and_without_cond():
    model = GM.eps_model(S)
    guided = dl.cfg(model, 2.5)
    x = torch.randn(5, 2, generator=_gen(1))
    t = torch.tensor([0, 10, 300, 700, 999])
    cond = torch.tensor([0, 1, 2, 0, 1])
    expected = model(x, t, None) + 2.5 * (model(x, t, cond) - model(x, t, None))
    torch.testing.assert_close(guided(x, t, cond), expected)
    torch.testing.assert_close(dl.cfg(model, 1.0)(x, t, cond), model(x, t, cond))


def test_cfg_equals_classifier_guidance_with_the_exact_classifier():
    # For the exact models, eps(x | c) - eps(x) = -sqrt(1 - ab_t) grad_x log p(c | x_t), so CFG with
    # scale w is classifier guidance with the exact classifier and scale w: an identity that
    # pins the sign and the sqrt(1 - alpha_bar) factor of classifier guidance.
    model = GM.eps_model(S)
    x = torch.randn(6, 2, generator=_gen(2), dtype=torch.float64)
    t = torch.tensor([0, 5, 100, 400, 800, 999])
    cond = torch.tensor([0, 1, 2, 2, 1, 0])
    for w in (0.0, 1.0, 3.0):
        cg = dl.classifier_guidance(model, _exact_classifier, S, w)(x, t, cond)
        torch.testing.assert_close(cg, dl.cfg(model, w)(x, t, cond), rtol=1e-6, atol=1e-8)


def test_classifier_grad_is_the_gradient_of_log_p_c():
    x = torch.randn(3, 2, generator=_gen(3), dtype=torch.float64)
    t = torch.tensor([50, 50, 50])
    cond = torch.tensor([2, 0, 1])
    grad = dl.classifier_grad(_exact_classifier, x, t, cond)
    # finite differences of log p(c | x) (central, h = 1e-5: error ~h^2)
    h = 1e-5
    for i in range(3):
        for d in range(2):
            e = torch.zeros_like(x)
            e[i, d] = h
            fp = _exact_classifier(x + e, t)[i, cond[i]]
            fm = _exact_classifier(x - e, t)[i, cond[i]]
            assert float(grad[i, d]) == pytest.approx(float((fp - fm) / (2 * h)), rel=1e-5, abs=1e-7)


def test_classifier_guided_sampling_with_the_exact_classifier_samples_the_class():
    # Scale 1 with the exact classifier gives the exact class-conditional epsilon, so DDIM
    # samples p(x | c): here class 2, a single N((0, 1.1), 0.45^2 I). Mean SE 0.45 / sqrt(n);
    # variance SE 0.2025 sqrt(2 / n); 5 SE plus 3% for 100 DDIM steps (see test_lib_samplers).
    n = 600
    guided = dl.classifier_guidance(GM.eps_model(S), _exact_classifier, S, 1.0)
    x = dl.ddim_sample(guided, S, (n, 2), steps=100, cond=torch.full((n,), 2), generator=_gen(4)).double()
    assert (x.mean(0) - torch.tensor([0.0, 1.1], dtype=torch.float64)).abs().max() < 5 * 0.45 / math.sqrt(n) + 0.03 * 0.45
    assert (x.var(0) - 0.45 ** 2).abs().max() < 5 * 0.45 ** 2 * math.sqrt(2 / n) + 0.06 * 0.45 ** 2


def test_strong_cfg_concentrates_samples_on_the_class():
    # Larger guidance scales sharpen p(c | x): the classifier's confidence must go up.
    n = 300
    cond = torch.full((n,), 0)
    conf = []
    for w in (1.0, 4.0):
        x = dl.ddim_sample(dl.cfg(GM.eps_model(S), w), S, (n, 2), steps=50, cond=cond, generator=_gen(5))
        conf.append(GM.class_log_probs(x).exp()[:, 0].mean().item())
    assert conf[1] > conf[0] + 0.02, conf


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
X = torch.zeros(3, 2)


def test_cfg_eps_bad_input():
    with pytest.raises(ValueError, match=r"^eps_cond\b"):
        dl.cfg_eps(X, torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match=r"^eps_uncond\b"):
        dl.cfg_eps(X * float("nan"), X, 1.0)
    with pytest.raises(ValueError, match=r"^scale\b"):
        dl.cfg_eps(X, X, float("nan"))
    with pytest.raises(TypeError, match=r"^scale\b"):
        dl.cfg_eps(X, X, "2")
    with pytest.raises(TypeError, match=r"^eps_cond\b"):
        dl.cfg_eps(X, 1.0, 1.0)


def test_cfg_bad_input():
    with pytest.raises(TypeError, match=r"^model\b"):
        dl.cfg(None, 2.0)
    with pytest.raises(ValueError, match=r"^scale\b"):
        dl.cfg(GM.eps_model(S), float("inf"))
    with pytest.raises(ValueError, match=r"^a CFG-guided model needs cond "):
        dl.cfg(GM.eps_model(S), 2.0)(X, torch.zeros(3, dtype=torch.long), None)


def test_classifier_guidance_bad_input():
    model = GM.eps_model(S)
    with pytest.raises(ValueError, match=r"^scale\b"):
        dl.classifier_guidance(model, _exact_classifier, S, -1.0)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.classifier_guidance(model, _exact_classifier, "linear", 1.0)
    with pytest.raises(TypeError, match=r"^model and classifier must be callable$"):
        dl.classifier_guidance(model, None, S, 1.0)
    with pytest.raises(ValueError, match=r"^a classifier-guided model needs cond "):
        dl.classifier_guidance(model, _exact_classifier, S, 1.0)(X, torch.zeros(3, dtype=torch.long), None)


def test_classifier_grad_rejects_labels_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"^cond\b"):
        dl.classifier_grad(_exact_classifier, X, torch.zeros(3, dtype=torch.long), torch.tensor([0, 1]))


def test_guidance_error_messages_name_argument_and_value():
    model = GM.eps_model(S)
    x = torch.zeros(2, 2)
    with pytest.raises(TypeError, match=r"^model must be callable, got int$"):
        dl.cfg(3, 2.0)
    with pytest.raises(TypeError, match=r"^classifier must be callable as classifier\(x, t\), got int$"):
        dl.classifier_grad(3, x, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^x must be finite"):
        dl.classifier_grad(_exact_classifier, torch.full((2, 2), float("nan")), torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^cond must be integer labels of shape \(2,\), got \(3,\)$"):
        dl.classifier_grad(_exact_classifier, x, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^cond must be integer labels of shape \(2,\), got \(2,\)$"):
        dl.classifier_grad(_exact_classifier, x, torch.zeros(2, dtype=torch.long), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"^schedule must be a diffusion_lab Schedule, got str$"):
        dl.classifier_guidance(model, _exact_classifier, "linear", 1.0)
    with pytest.raises(ValueError, match=r"^scale must be in \[0, inf\], got -1.0$"):
        dl.classifier_guidance(model, _exact_classifier, S, -1.0)
    with pytest.raises(ValueError, match=r"^scale must be finite"):
        dl.cfg_eps(x, x, float("nan"))
    with pytest.raises(ValueError, match=r"^eps_uncond must be finite"):
        dl.cfg_eps(torch.full((2, 2), float("nan")), x, 1.0)
    with pytest.raises(ValueError, match=r"^eps_cond must be finite"):
        dl.cfg_eps(x, torch.full((2, 2), float("nan")), 1.0)


def test_classifier_grad_checks_logits_and_label_range():
    x = torch.zeros(2, 2)
    t = torch.zeros(2, dtype=torch.long)
    three = lambda y, t: torch.zeros(y.shape[0], 3) + y.sum(1, keepdim=True)  # noqa: E731
    dl.classifier_grad(three, x, t, torch.tensor([0, 2]))   # the last class is a valid label
    with pytest.raises(ValueError, match=r"^cond labels must be in \[0, 2\], got 0..3$"):
        dl.classifier_grad(three, x, t, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"^cond labels must be in \[0, 2\], got -1..1$"):
        dl.classifier_grad(three, x, t, torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match=r"^classifier must return logits of shape \(2, num_classes\), got \(2,\)$"):
        dl.classifier_grad(lambda y, t: y.sum(1), x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^classifier must return logits of shape \(2, num_classes\), got \(1, 3\)$"):
        dl.classifier_grad(lambda y, t: torch.zeros(1, 3) + y.sum(), x, t, torch.tensor([0, 1]))


def test_guidance_messages_range_check_and_per_dtype_tables_found_by_mutation():
    # Found by the mutation run of 2026-12-06 (CONTRIBUTING.md); each assert kills a surviving mutant.
    def two_shapes(x, t, cond=None):        # the unconditional output has the wrong shape
        return torch.zeros(x.shape[0], 4) if cond is None else torch.zeros_like(x)
    x, t = torch.randn(3, 5, generator=_gen(30)), torch.full((3,), 10)
    with pytest.raises(ValueError, match=r"^eps_cond must have the same shape as eps_uncond \(3, 4\), got \(3, 5\)$"):
        dl.cfg(two_shapes, 2.0)(x, t, torch.tensor([0, 1, 2]))
    clf = lambda x, t: x[:, :4]  # noqa: E731
    with pytest.raises(ValueError, match=r"^cond must be integer labels of shape \(3,\), got list$"):
        dl.classifier_grad(clf, x, t, [0, 1, 2])
    with pytest.raises(ValueError, match=r"^cond must be integer labels of shape \(3,\), got \(2,\)$"):
        dl.classifier_grad(clf, x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^classifier must return logits of shape \(3, num_classes\), got \(2, 4\)$"):
        dl.classifier_grad(lambda x, t: x[:2, :4], x, t, torch.tensor([0, 1, 2]))
    zero = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"^cond labels must be in \[0, 3\], got 0\.\.4$"):   # checked on first use
        dl.classifier_guidance(zero, clf, S, 1.0)(x, t, torch.tensor([0, 1, 4]))
    # the coefficient table is cached per (device, dtype): a float64 call after a float32 one is exact float64
    guided = dl.classifier_guidance(zero, clf, S, 1.0)
    cond = torch.tensor([0, 1, 2])
    guided(x, t, cond)
    out = guided(x.double(), t, cond)
    assert out.dtype == torch.float64 and torch.equal(out, dl.classifier_guidance(zero, clf, S, 1.0)(x.double(), t, cond))
