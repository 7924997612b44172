"""consistency_training: both trainers replayed by hand from their generator (the batch, the dropped labels, the
lognormal n, the noise), with the Karras grid, the curriculum, x_t, the teacher's Euler/Heun step and the weighted
pseudo-Huber loss written out from the papers; the model's arguments, its defaults and messages; the simulated
device. Expected values never come from diffusion_lab.consistency_training."""
import math
import re

import pytest
import torch

import diffusion_lab as dl
from diffusion_lab import consistency_training as ct

NET = dict(hidden=16, depth=1, emb_dim=8)


class TinyNet(torch.nn.Module):
    """net(x, t, cond): one linear layer on (x, t, cond), in any dtype."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x, t, cond=None):
        c = torch.zeros_like(x[:, 0]) if cond is None else cond.to(x.dtype)
        return self.lin(torch.cat([x, t.to(x.dtype).expand(x.shape[0])[:, None], c[:, None]], 1))


class Recording(dl.ConsistencyModel):
    """A ConsistencyModel that records each call: x, t, cond, its output and whether autograd was on."""

    def __init__(self, path, dtype=torch.float32, limit=None):
        torch.manual_seed(0)
        super().__init__(TinyNet(), path, 0.5)
        self.to(dtype)
        self.calls, self.limit = [], limit

    def forward(self, x, t, cond=None):
        out = super().forward(x, t, cond)
        self.calls.append((x.detach().clone(), t.detach().clone(), None if cond is None else cond.clone(),
                           out.detach().clone(), torch.is_grad_enabled()))
        if self.limit is not None and len(self.calls) > self.limit:
            raise RuntimeError("the model was called more often than the steps asked for")
        return out


def _karras_r(n, r_min, r_max, rho=7.0):
    """EDM's Eq. 5 (Karras et al. 2022), increasing: (r_max^(1/rho) + i/(n-1) (r_min^(1/rho) - r_max^(1/rho)))^rho."""
    i = torch.arange(n, dtype=torch.float64)
    return ((r_max ** (1 / rho) + i / (n - 1) * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho).flip(0)


def _lognormal_p(r, p_mean=-1.1, p_std=2.0):
    """Song & Dhariwal 2024, Sec. 3.5: erf((log r_{n+1} - P_mean) / (sqrt 2 P_std)) - erf(... r_n ...)."""
    e = torch.special.erf((torch.log(r.clamp(min=1e-300)) - p_mean) / (math.sqrt(2) * p_std))
    return (e[1:] - e[:-1]).clamp(min=0)


def _pseudo_huber(a, b):
    c = 0.00054 * math.sqrt(a.shape[1])
    return torch.sqrt(((a - b) ** 2).sum(1) + c * c) - c


def _data(dtype=torch.float64):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return x, (x[:, 0] > 0).long()


# ---- consistency training (Algorithm 3, improved CT) ---------------------------------------------------------

def test_consistency_train_replayed_by_hand(capsys):
    """9 steps with the default path, curriculum and noise levels, labels dropped with p = 0.3, float64: every
    model call and every loss against the algorithm written out. The given (frozen) model is the one trained."""
    x, y = _data()
    path = dl.ve_path(0.002, 80.0)                    # the documented default path
    model = Recording(path, dtype=torch.float64, limit=18)
    model.requires_grad_(False)
    before = [p.clone() for p in model.parameters()]
    config = dl.TrainConfig(steps=9, batch_size=4, ema_decay=None, p_uncond=0.3, warmup=1, seed=5, progress=True)
    seen = []
    out, losses = dl.consistency_train(x, labels=y, config=config, model=model, callback=lambda d: seen.append(d["step"]))
    assert out is model and seen == list(range(9)) and len(model.calls) == 18
    assert all(p.requires_grad for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert re.search(r"(^|\r)consistency_train: ", capsys.readouterr().err)        # tqdm's label
    # the curriculum, Song & Dhariwal 2024 Sec. 3.4: K' = floor(9 / (log2 floor(1280 / 10) + 1)) = 1, N = min(10 2^k, 1280) + 1
    Ns = [11, 21, 41, 81, 161, 321, 641, 1281, 1281]
    g = torch.Generator().manual_seed(5)
    for k, N in enumerate(Ns):
        r = _karras_r(N, 0.002, 80.0)                  # VE: r = sigma(t) = 0.002 (80 / 0.002)^t
        t = torch.log(r / 0.002) / math.log(80.0 / 0.002)
        t[0], t[-1] = 0.0, 1.0
        r = 0.002 * (80.0 / 0.002) ** t
        idx = torch.randint(0, 64, (4,), generator=g)
        drop = torch.rand(4, generator=g) < 0.3
        cond = torch.where(drop, 2, y[idx])
        n = torch.multinomial(_lognormal_p(r), 4, replacement=True, generator=g)
        z = torch.randn(4, 2, generator=g, dtype=torch.float64)
        (xa, ta, ca, fa, ga), (xb, tb, cb, fb, gb) = model.calls[2 * k:2 * k + 2]
        assert not ga and gb                           # the target without gradient, then the online call
        torch.testing.assert_close(ta, t[n], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tb, t[n + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(xa, x[idx] + r[n, None] * z, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(xb, x[idx] + r[n + 1, None] * z, rtol=1e-10, atol=1e-10)
        assert torch.equal(ca, cond) and torch.equal(cb, cond), (k, ca, cb, cond)
        loss = torch.mean(1 / (r[n + 1] - r[n]) * _pseudo_huber(fb, fa))
        assert losses[k] == pytest.approx(float(loss), rel=1e-9), k


def test_grid_weights_follow_the_given_lognormal_and_a_batch_of_one_trains():
    """_grid's interval probabilities use the given P_mean and P_std (not the defaults) and its weights are
    1 / (r_{n+1} - r_n); the pseudo-Huber constant c = 0.00054 sqrt(D) reads D from a row, so a batch of one trains."""
    path = dl.ve_path(0.002, 80.0)
    ts, p, lam = ct._grid(path, 11, -0.4, 1.3)
    r = path.sigma(ts) / path.alpha(ts)
    torch.testing.assert_close(p, _lognormal_p(r, -0.4, 1.3), rtol=1e-12, atol=0)
    torch.testing.assert_close(lam, 1 / (r[1:] - r[:-1]), rtol=1e-12, atol=0)
    assert (p - _lognormal_p(r, -0.4)).abs().max() > 1e-3
    x, _ = _data(torch.float32)
    _, losses = dl.consistency_train(x, path, steps=1, batch_size=1, progress=False, net=NET)
    assert len(losses) == 1 and math.isfinite(losses[0])


def test_ct_schedule_doubles_from_s0_and_caps_at_s1():
    # N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = max(1, floor(K / (log2 floor(s1 / s0) + 1)))
    assert [ct.ct_schedule(k, 9) for k in range(10)] == [11, 21, 41, 81, 161, 321, 641, 1281, 1281, 1281]
    assert [ct.ct_schedule(k, 8) for k in range(3)] == [11, 21, 41]          # K' = 1 (not 2) for K < 16
    # s1 / s0 = 10 / 3: K' = floor(100 / (log2 3 + 1)) = 38, not floor(100 / (log2(10 / 3) + 1)) = 36
    assert [ct.ct_schedule(k, 100, 3, 10) for k in (36, 37, 38, 76)] == [4, 4, 7, 11]


def test_consistency_train_defaults_arguments_and_messages(monkeypatch):
    x, y = _data(torch.float32)
    model, _ = dl.consistency_train(x, labels=y, steps=1, batch_size=4, progress=False, net=NET)
    assert isinstance(model, dl.ConsistencyModel) and model.path == dl.ve_path(0.002, 80.0) and model.sigma_data == 0.5
    ref = dl.make_velocity_net((2,), num_classes=2, **NET).state_dict()         # conditional, config.net's sizes
    assert {k: v.shape for k, v in model.net.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    # s0 = 1 allowed, s1 = 2 caps N = min(2^k, 2) + 1 (K' = 1): grids of 2, 3, 3 points, each built once
    Ns, grid = [], ct._grid
    monkeypatch.setattr(ct, "_grid", lambda path, N, *a: Ns.append(N) or grid(path, N, *a))
    dl.consistency_train(x, s0=1, s1=2, steps=3, batch_size=4, progress=False, net=NET)
    assert Ns == [2, 3]
    with pytest.raises(ValueError, match=re.escape("s0 must be an integer in [1, inf], got 0")):
        dl.consistency_train(x, s0=0, steps=1, progress=False)
    with pytest.raises(TypeError, match="^model must be a ConsistencyModel or None, got Linear$"):
        dl.consistency_train(x, model=torch.nn.Linear(2, 2), steps=1, progress=False)
    teacher = _teacher([])
    for train in (lambda **kw: dl.consistency_train(x, steps=1, progress=False, **kw),
                  lambda **kw: dl.consistency_distill(teacher, dl.ve_path(0.002, 80.0), x, steps=1, progress=False, **kw)):
        with pytest.raises(ValueError, match=re.escape("p_std must be in (0, inf], got 0.0")):
            train(p_std=0.0)
        with pytest.raises(ValueError, match=re.escape("p_mean must be finite and in [-inf, inf], got nan")):
            train(p_mean=math.nan)
        with pytest.raises(TypeError, match=re.escape("p_std must be a real number, got 'a' (str)")):
            train(p_std="a")


# ---- consistency distillation (Algorithm 2) -----------------------------------------------------------------

def _teacher(calls):
    def teacher(x, t, cond=None):        # an eps-prediction, any smooth function of (x, t, cond)
        calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        return 0.5 * x + 0.25 * t[:, None] * (1.0 + (cond[:, None] if cond is not None else 0.0))
    return teacher


@pytest.mark.parametrize("solver, dtype", [("euler", torch.float32), ("heun", torch.float64)])
def test_consistency_distill_replayed_by_hand(solver, dtype):
    """On the linear path (alpha = 1 - t, sigma = t, r = t / (1 - t); the PF-ODE velocity -x0 + eps), with the
    default N, p_mean, p_std and (for heun) the default solver: the teacher's probe, each teacher step written out,
    every model call and loss."""
    x, y = _data(dtype)
    path = dl.linear_path(0.999)
    model = Recording(path, dtype=dtype, limit=6)
    calls = []
    kw = dict(solver=solver) if solver == "euler" else {}
    _, losses = dl.consistency_distill(_teacher(calls), path, x, y, steps=3, batch_size=4, p_uncond=0.3,
                                       ema_decay=None, warmup=1, seed=2, progress=False, model=model, **kw)
    # the probe: x[:8] with their labels at t_max and mid-path, t in x's dtype
    for (xp, tp, cp), tt in zip(calls[:2], (0.999, 0.999 / 2)):
        assert torch.equal(xp, x[:8]) and torch.equal(cp, y[:8]) and tp.dtype == dtype
        assert torch.equal(tp, torch.full((8,), tt, dtype=dtype))
    calls = calls[2:]
    r = _karras_r(18, 1e-12 * 999.0, 999.0)              # r_min = 0 is floored at 1e-12 r_max
    t = r / (1 + r)
    t[0], t[-1] = 0.0, 0.999
    r = t / (1 - t)
    p = _lognormal_p(r)
    per = 1 if solver == "euler" else 2

    def velocity(xt, s, eps):
        s = s[:, None]
        return -(xt - s * eps) / (1 - s) + eps            # alpha' x0 + sigma' eps with x0 = (x - sigma eps) / alpha

    def eps_of(xt, s, cond):
        return 0.5 * xt + 0.25 * s[:, None] * (1.0 + cond[:, None])

    g = torch.Generator().manual_seed(2)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for k in range(3):
        idx = torch.randint(0, 64, (4,), generator=g)
        cond = torch.where(torch.rand(4, generator=g) < 0.3, 2, y[idx])
        n = torch.multinomial(p, 4, replacement=True, generator=g)
        z = torch.randn(4, 2, generator=g, dtype=dtype)
        t1, t0 = t[n + 1].to(dtype), t[n].to(dtype)
        x1 = (1 - t1[:, None]) * x[idx] + t1[:, None] * z
        h = (t0 - t1)[:, None]
        u = velocity(x1, t1, eps_of(x1, t1, cond))
        if solver == "euler":
            xc = x1 + h * u
        else:
            xe = x1 + h * u
            xc = x1 + h / 2 * (u + velocity(xe, t0, eps_of(xe, t0, cond)))
        steps = calls[per * k:per * k + per]
        for (xs, ts, cs), (want_x, want_t) in zip(steps, [(x1, t1), (x1 + h * u, t0)]):
            torch.testing.assert_close(xs, want_x, **tol)
            torch.testing.assert_close(ts, want_t, **tol)
            assert ts.dtype == dtype and torch.equal(cs, cond)
        (xa, ta, ca, fa, ga), (xb, tb, cb, fb, gb) = model.calls[2 * k:2 * k + 2]
        assert not ga and gb and ta.dtype == tb.dtype == dtype
        torch.testing.assert_close(xa, xc, **tol)
        torch.testing.assert_close(ta, t0, **tol)
        torch.testing.assert_close(xb, x1, **tol)
        torch.testing.assert_close(tb, t1, **tol)
        assert torch.equal(ca, cond) and torch.equal(cb, cond)
        loss = torch.mean(1 / (r[n + 1] - r[n]).to(dtype) * _pseudo_huber(fb, fa))
        assert losses[k] == pytest.approx(float(loss), rel=1e-9 if dtype == torch.float64 else 1e-5), k
    assert len(calls) == 3 * per


def test_consistency_distill_defaults_and_teacher_messages(capsys):
    x, _ = _data(torch.float32)
    path = dl.ve_path(0.002, 80.0)
    model, _ = dl.consistency_distill(_teacher([]), path, x, steps=1, batch_size=4, progress=True, net=NET)
    assert model.sigma_data == 0.5
    assert re.search(r"(^|\r)consistency_distill: ", capsys.readouterr().err)        # tqdm's label
    seen = []

    def stop(d):                         # the config's 2 steps, not the default 4500
        seen.append(d["step"])
        assert d["step"] < 2, "more steps than the TrainConfig asked for"
    config = dl.TrainConfig(steps=2, batch_size=4, progress=False, net=NET)
    assert len(dl.consistency_distill(_teacher([]), path, x, config=config, callback=stop)[1]) == 2 and seen == [0, 1]
    with pytest.raises(ValueError, match="^solver must be 'heun' or 'euler', got 'rk4'$"):
        dl.consistency_distill(_teacher([]), path, x, solver="rk4", steps=1, progress=False)
    with pytest.raises(ValueError, match=r"^teacher output must have the input's shape \(8, 2\), got float$"):
        dl.consistency_distill(lambda x, t, c=None: 1.0, path, x, steps=1, progress=False)
    # a teacher on a SchedulePath against a path that is not one: unequal, not an AttributeError
    sched = dl.make_schedule("linear", 100)
    assert not ct._same_path(dl.schedule_path(sched), dl.vp_path())
    assert not ct._same_path(dl.vp_path(), dl.schedule_path(sched))
    with pytest.raises(ValueError, match="teacher is a model on"):
        dl.consistency_distill(dl.discrete_model(dl.make_denoiser((2,)), sched), dl.vp_path(), x, steps=1,
                               progress=False)


# ---- the simulated accelerator --------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["train", "distill"])
def test_consistency_trainers_on_the_simulated_device(which):
    """On the simulated accelerator of tests/test_device_discipline.py: device= moves training there (no float64
    there, no sync per step), the model ends there, and the losses are the CPU's."""
    from test_device_discipline import FAKE, _check

    def run(n, device, out=None):
        x, y = _data(torch.float32)
        kw = dict(steps=n, device=device, batch_size=8, progress=False, warmup=2, net=NET, p_uncond=0.3)

        def go():
            if which == "train":
                model, losses = dl.consistency_train(x, labels=y, **kw)
            else:
                model, losses = dl.consistency_distill(_teacher([]), dl.linear_path(0.999), x, y, solver="euler", **kw)
            if out is not None:
                out.append(next(model.parameters()).device)
            return losses
        return go
    where = []
    losses, _ = _check(f"consistency_{which}", run(2, FAKE), run(4, FAKE, where))
    assert where and all(d == FAKE for d in where)
    assert losses == run(4, None)()
