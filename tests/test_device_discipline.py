"""Device discipline on a simulated accelerator: every sampler and trainer runs with its model and data
on a fake device, and the test fails on (a) a float64 tensor created on that device (Apple's MPS has no
float64) and (b) a device-to-host sync inside a sampling or training loop (it stalls a GPU every step).

How the device is simulated (torch 2.13, CPU only). `OnDevice` is a wrapper tensor subclass that reports
device "meta" and holds a CPU tensor; a TorchDispatchMode sees every aten op: ops touching an `OnDevice`
tensor, factory functions called with device="meta" and copies to "meta" run on the CPU and their
tensor results are wrapped again, so the library computes real numbers while believing it is on a
device other than the CPU. The mode records
- every tensor created on the device, with its dtype; a float64 tensor, or a float64 CPU tensor copied
  to the device (MPS would have to convert it there), is a float64 violation;
- every device-to-host sync: aten._local_scalar_dense (.item(), float(), int(), bool() of a tensor),
  is_nonzero, equal, nonzero (boolean-mask indexing), and copies from the device to the CPU
  (.cpu(), .to("cpu"), .tolist() after .cpu());
and raises where a real device would: an op mixing an `OnDevice` tensor with a CPU tensor that is not
a 0-dim scalar (CPU indices and host-to-device copies are allowed, as on CUDA).

"A sync inside the loop" is tested as: the number of syncs does not grow with the number of steps
(the same call with more steps or timesteps makes exactly as many syncs); per-call argument checks
are allowed. Trainers read their losses back once every train.SYNC_EVERY steps (documented in fit()),
so a trainer's count grows by one per SYNC_EVERY steps and no more.
"""
import contextlib
import traceback

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import diffusion_lab as dl
from diffusion_lab import train as dl_train

FAKE = torch.device("meta")
aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.nonzero.default,
            aten.item.default, aten.masked_select.default}
MIXING_ALLOWED = {aten.copy_.default, aten._to_copy.default, aten.index.Tensor, aten.lift_fresh.default}


class OnDevice(torch.Tensor):
    """A tensor 'on the device': reports device meta, computes with the CPU tensor it wraps."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                device=FAKE, requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self):
        return f"OnDevice({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _RECORDER.handle(func, args, kwargs or {})


def _where():
    """The innermost diffusion_lab frame (file:line), to make a failure point at the code."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "diffusion_lab" in frame.filename and "test_device" not in frame.filename:
            return f"{frame.filename.split('diffusion_lab')[-1].lstrip('/')}:{frame.lineno} ({frame.line})"
    return "?"


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.float64, self.syncs, self.created = [], [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.handle(func, args, kwargs or {})

    def handle(self, func, args, kwargs):
        flat, _ = tree_flatten((args, kwargs))
        on_device = any(isinstance(a, OnDevice) for a in flat)
        target = kwargs.get("device")
        target = torch.device(target) if target is not None else None
        unwrap = lambda a: a.elem if isinstance(a, OnDevice) else a  # noqa: E731
        if on_device and func in SYNC_OPS:
            self.syncs.append(f"{func} at {_where()}")
        if on_device and target is not None and target.type == "cpu":      # .cpu(), .to("cpu")
            self.syncs.append(f"copy to the CPU at {_where()}")
            return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if on_device and func is aten.copy_.default and not isinstance(args[0], OnDevice):
            self.syncs.append(f"copy_ to the CPU at {_where()}")
        to_device = target == FAKE
        moved64 = False
        gen = kwargs.get("generator")
        if to_device and gen is not None and gen.device.type == "cpu":
            # As real accelerators do: a CPU generator cannot draw device noise.
            raise RuntimeError(f"{func} draws on the device with a CPU generator at {_where()} (on an "
                               f"accelerator: Expected a 'cuda' device type for generator but found 'cpu')")
        if to_device:
            kwargs = dict(kwargs, device=torch.device("cpu"))
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if src is not None and not isinstance(src, OnDevice) and src.dtype == torch.float64:
                self.float64.append(f"float64 CPU tensor moved to the device ({func}) at {_where()}")
                moved64 = True
        if not (on_device or to_device):
            return func(*args, **kwargs)
        if on_device and func is aten.index.Tensor and not isinstance(args[0], OnDevice) and args[0].ndim > 0:
            # Real accelerators index a device tensor with CPU indices, never a CPU tensor with
            # device indices ("indices should be either on cpu or on the same device").
            raise RuntimeError(f"{func} indexes a CPU tensor of shape {tuple(args[0].shape)} with device "
                               f"indices at {_where()}")
        if on_device and func not in MIXING_ALLOWED:
            for a in flat:
                if isinstance(a, torch.Tensor) and not isinstance(a, OnDevice) and a.ndim > 0:
                    raise RuntimeError(f"{func} mixes a device tensor with a CPU tensor of shape "
                                       f"{tuple(a.shape)} at {_where()}")
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

        def wrap(o):
            if isinstance(o, torch.Tensor) and not isinstance(o, OnDevice):
                self.created += 1
                if o.dtype == torch.float64 and not moved64:
                    self.float64.append(f"float64 tensor created on the device ({func}) at {_where()}")
                return OnDevice(o)
            return o
        return tree_map(wrap, out)


_RECORDER = Recorder()


@contextlib.contextmanager
def fake_device():
    """Record float64 tensors and syncs on the fake device while the block runs."""
    global _RECORDER
    _RECORDER = Recorder()
    with _RECORDER:
        yield _RECORDER


def run_on_device(fn):
    """(result, recorder) of fn() run under the recorder."""
    with fake_device() as rec:
        out = fn()
    assert rec.created > 0, "nothing ran on the fake device: the test would check nothing"
    return out, rec


def spy_on_randint(monkeypatch) -> list:
    """Replace torch.randint by a spy that applies the rule real accelerators enforce and the simulated device does
    not (a generator draws only on its own device: torch.randint(generator=cpu_gen, device="cuda") raises); returns
    the list of devices it drew on, in order."""
    real, drawn = torch.randint, []

    def spy(*args, generator=None, device=None, **kw):
        where = torch.device(device) if device is not None else torch.device("cpu")
        if generator is not None:
            assert where == generator.device, f"a {generator.device} generator asked to draw on {where}"
        drawn.append(where)
        return real(*args, generator=generator, device=device, **kw)
    monkeypatch.setattr(torch, "randint", spy)
    return drawn


def to_host(x):
    return x.elem if isinstance(x, OnDevice) else x


def _gen(seed):
    return torch.Generator().manual_seed(seed)   # a CPU generator, as the book uses


class CondNet(nn.Module):
    """A tiny conditional eps-model with no label checks of its own (the package's Conditioning checks the
    label range once per cond tensor on an accelerator: see test_package_conditional_net_checks_labels_once...)."""

    def __init__(self, dim=2, num_classes=2):
        super().__init__()
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, 8)
        self.t_emb = nn.Linear(8, 8)
        self.net = nn.Sequential(nn.Linear(dim + 8, 16), nn.SiLU(), nn.Linear(16, dim))

    def forward(self, x, t, cond=None):
        if cond is None:
            cond = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        h = self.emb(cond) + self.t_emb(dl.timestep_embedding(t, 8))
        return x + self.net(torch.cat([x, h], 1))


def _seeded(factory, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _mlp():
    return _seeded(lambda: dl.TimeMLP(dim=2, hidden=16, depth=1, emb_dim=8).eval())


def _cond_net():
    return _seeded(lambda: CondNet().eval())


def _classifier():
    return _seeded(lambda: dl.NoisyClassifier((2,), 2, hidden=16, depth=1, emb_dim=8).eval())


def _schedule(T):
    return dl.linear_schedule(T=T, beta_start=1e-3, beta_end=0.3)


def _cond(B=8):
    return torch.tensor([0, 1] * (B // 2))


# ---- samplers: each entry builds the call for a given loop length n ----------------------------------
def _ddpm(n, **kw):
    return lambda: dl.ddpm_sample(_mlp().to(FAKE), _schedule(n), (8, 2), generator=_gen(0), **kw)


def _ddim(n, **kw):
    return lambda: dl.ddim_sample(_mlp().to(FAKE), _schedule(40), (8, 2), steps=n, generator=_gen(0), **kw)


def _cfg(n, sampler):
    def run():
        model = dl.cfg(_cond_net().to(FAKE), 2.0)
        cond = _cond().to(FAKE)
        if sampler == "ddpm":
            return dl.ddpm_sample(model, _schedule(n), (8, 2), cond=cond, generator=_gen(0), device=FAKE)
        return dl.ddim_sample(model, _schedule(40), (8, 2), steps=n, eta=1.0, cond=cond, generator=_gen(0),
                              device=FAKE)
    return run


def _classifier_guided(n):
    def run():
        s = _schedule(40)
        model = dl.classifier_guidance(_cond_net().to(FAKE), _classifier().to(FAKE), s, 1.0)
        return dl.ddim_sample(model, s, (8, 2), steps=n, cond=_cond().to(FAKE), generator=_gen(0), device=FAKE)
    return run


def _invert(n):
    def run():
        x0 = torch.randn(8, 2, generator=_gen(1)).to(FAKE)
        return dl.ddim_invert(_mlp().to(FAKE), _schedule(40), x0, steps=n)
    return run


def _langevin(n):
    def run():
        x = torch.zeros(8, 2).to(FAKE)
        return dl.langevin_sample(lambda y: -y, x, 0.05, n, generator=_gen(0))
    return run


def _annealed(n):
    def run():
        score = _seeded(lambda: dl.ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8)).to(FAKE)
        x = torch.zeros(8, 2).to(FAKE)
        return dl.annealed_langevin_sample(score, dl.geometric_sigmas(1.0, 0.1, n), x, 0.01, 2, generator=_gen(0))
    return run


def _elbo(n):
    def run():
        x0 = torch.randn(8, 2, generator=_gen(1)).to(FAKE)
        return dl.ddpm_elbo(_mlp().to(FAKE), _schedule(n), x0, generator=_gen(2))["total_nats"]
    return run


class CtNet(nn.Module):
    """A tiny continuous-time model: float t of shape (B,) in x's dtype, on x's device."""

    def __init__(self, dim=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 16), nn.SiLU(), nn.Linear(16, dim))

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def _ct_net():
    return _seeded(lambda: CtNet().eval())


def _ode(n, method, path="vp"):
    def run():
        p = dl.vp_path() if path == "vp" else dl.linear_path()
        prediction = "eps" if path == "vp" else "velocity"
        return dl.ode_sample(_ct_net().to(FAKE), p, (8, 2), steps=n, method=method, prediction=prediction,
                             generator=_gen(0))
    return run


def _sde(n):
    return lambda: dl.sde_sample(_ct_net().to(FAKE), dl.vp_path(), (8, 2), steps=n, generator=_gen(0))


def _pc(n, predictor="sde"):
    return lambda: dl.pc_sample(_ct_net().to(FAKE), dl.vp_path(), (8, 2), steps=n, corrector_steps=1,
                                predictor=predictor, generator=_gen(0))


def _edm(n, churn=0.0):
    return lambda: dl.edm_sample(_ct_net().to(FAKE), dl.vp_path(), (8, 2), dl.karras_sigmas(n, sigma_min=0.02, sigma_max=20.0),
                                 generator=_gen(0), churn=churn)


def _dpm_solver(n):
    return lambda: dl.dpm_solver_sample(_mlp().to(FAKE), _schedule(40), (8, 2), steps=n, generator=_gen(0))


SAMPLERS = {
    "ode_sample euler (vp, eps)": lambda n: _ode(n, "euler"),
    "ode_sample heun (vp, eps)": lambda n: _ode(n, "heun"),
    "ode_sample rk4 (linear, velocity)": lambda n: _ode(n, "rk4", "linear"),
    "ode_sample dpm++2m (vp, eps)": lambda n: _ode(n, "dpm++2m"),
    "sde_sample": _sde,
    "pc_sample (sde predictor + Langevin corrector)": _pc,
    "pc_sample (ode predictor + Langevin corrector)": lambda n: _pc(n, "ode"),
    "edm_sample heun": _edm,
    "edm_sample churn": lambda n: _edm(n, churn=2.0),
    "dpm_solver_sample": _dpm_solver,
    "ddpm_sample": lambda n: _ddpm(n),
    "ddpm_sample beta variance, clip_x0": lambda n: _ddpm(n, variance="beta", clip_x0=1.0),
    "ddim_sample eta=0": lambda n: _ddim(n),
    "ddim_sample eta=0.5, clip_x0": lambda n: _ddim(n, eta=0.5, clip_x0=1.0),
    "ddim_sample leading, callback": lambda n: _ddim(n, spacing="leading", callback=lambda d: None),
    "cfg + ddpm_sample": lambda n: _cfg(n, "ddpm"),
    "cfg + ddim_sample": lambda n: _cfg(n, "ddim"),
    "classifier_guidance + ddim_sample": _classifier_guided,
    "ddim_invert": _invert,
    "langevin_sample": _langevin,
    "annealed_langevin_sample": _annealed,
    "ddpm_elbo (loop over t)": _elbo,
}


def _check(name, short, long_):
    (_, rec_short), (out, rec_long) = run_on_device(short), run_on_device(long_)
    assert not rec_long.float64, f"{name}: float64 on the device:\n" + "\n".join(rec_long.float64[:5])
    extra = len(rec_long.syncs) - len(rec_short.syncs)
    assert extra <= 0, (f"{name}: {extra} more device-to-host syncs with a longer loop (a sync per step); "
                        f"the long run's syncs:\n" + "\n".join(rec_long.syncs[:8]))
    return out, rec_long


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_keeps_float64_off_the_device_and_does_not_sync_per_step(name):
    out, _ = _check(name, SAMPLERS[name](4), SAMPLERS[name](8))
    if isinstance(out, torch.Tensor):
        assert isinstance(out, OnDevice) and bool(torch.isfinite(to_host(out)).all())


@pytest.mark.parametrize("name", ["ddpm_sample", "ddim_sample eta=0.5, clip_x0", "cfg + ddim_sample",
                                  "annealed_langevin_sample"])
def test_sampler_on_the_fake_device_gives_the_cpu_numbers(name):
    # The simulation must not change the arithmetic: the same call on the CPU gives the same sample.
    out, _ = run_on_device(SAMPLERS[name](5))
    global FAKE
    saved, FAKE = FAKE, torch.device("cpu")
    try:
        ref = SAMPLERS[name](5)()
    finally:
        FAKE = saved
    assert torch.equal(to_host(out), ref)


# ---- trainers -------------------------------------------------------------------------------------
def _data():
    x = torch.randn(200, 2, generator=_gen(3))
    return x, (x[:, 0] > 0).long()


TINY = dict(batch_size=32, progress=False, warmup=2)


def _train(kind, steps, **kw):
    def run():
        x, y = _data()
        if kind == "ddpm":
            return dl.train_ddpm(x, steps=steps, device=FAKE, net=dict(hidden=16, depth=1, emb_dim=8), **TINY, **kw)[1]
        if kind == "ddpm cond":
            return dl.train_ddpm(x, y, steps=steps, model=_seeded(CondNet), device=FAKE, **TINY, **kw)[1]
        if kind == "score":
            return dl.train_score_model(x, [0.1, 0.5, 1.0], steps=steps, device=FAKE,
                                        net=dict(hidden=16, depth=1, emb_dim=8), **TINY, **kw)[1]
        if kind == "vae":
            return dl.train_vae(x, steps=steps, device=FAKE, net=dict(hidden=16), **TINY, **kw)[1]
        if kind == "classifier":
            return dl.train_classifier(x, y, steps=steps, device=FAKE, net=dict(hidden=16, depth=1, emb_dim=8),
                                       **TINY, **kw)[1]
        if kind == "flow":
            return dl.train_flow(x, steps=steps, device=FAKE, net=dict(hidden=16, depth=1, emb_dim=8), **TINY, **kw)[1]
        if kind == "flow, minibatch OT":
            return dl.train_flow(x, steps=steps, device=FAKE, coupling="ot", net=dict(hidden=16, depth=1, emb_dim=8),
                                 **TINY, **kw)[1]
        if kind == "flow, reflow pairs":
            return dl.train_flow(x, pairs=torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), steps=steps,
                                 device=FAKE, net=dict(hidden=16, depth=1, emb_dim=8), **TINY, **kw)[1]
        if kind == "flow cond, logit-normal t":
            return dl.train_flow(x, y, steps=steps, device=FAKE, t_sampling="logit_normal",
                                 net=dict(hidden=16, depth=1, emb_dim=8), **TINY, **kw)[1]
        raise AssertionError(kind)
    return run


TRAINERS = ["ddpm", "ddpm cond", "score", "vae", "classifier", "flow", "flow, minibatch OT", "flow, reflow pairs",
            "flow cond, logit-normal t"]


@pytest.mark.parametrize("kind", TRAINERS)
def test_trainer_keeps_float64_off_the_device_and_does_not_sync_per_step(kind):
    losses, _ = _check(f"train {kind}", _train(kind, 3), _train(kind, 9))
    assert len(losses) == 9 and all(isinstance(v, float) for v in losses)


def test_flow_trainer_copies_the_data_to_the_host_only_for_minibatch_ot():
    """train_flow without OT syncs exactly as often as train_ddpm (the loss read-backs): no host copy of the data,
    which only minibatch OT needs (issue 17's mutation run: a host copy made for every coupling survived)."""
    (_, ddpm), (_, flow) = run_on_device(_train("ddpm", 3)), run_on_device(_train("flow", 3))
    (_, pairs), (_, ot) = run_on_device(_train("flow, reflow pairs", 3)), run_on_device(_train("flow, minibatch OT", 3))
    assert len(flow.syncs) == len(pairs.syncs) == len(ddpm.syncs), (flow.syncs, ddpm.syncs)
    assert len(ot.syncs) == len(ddpm.syncs) + 1, ot.syncs          # the one host copy of the data


def test_trainer_reads_losses_back_once_per_chunk_with_the_cpu_numbers():
    # SYNC_EVERY + 10 steps read back twice (after SYNC_EVERY steps and at the end): one sync more
    # than 10 steps, and the losses are the CPU run's, bitwise.
    n = dl_train.SYNC_EVERY
    (_, short), (losses, long_) = run_on_device(_train("ddpm", 10)), run_on_device(_train("ddpm", n + 10))
    assert len(long_.syncs) - len(short.syncs) == 1, long_.syncs
    x, _ = _data()
    _, cpu = dl.train_ddpm(x, steps=n + 10, net=dict(hidden=16, depth=1, emb_dim=8), **TINY)
    assert losses == cpu


def test_divergence_on_the_device_names_the_first_bad_step():
    class Bad(nn.Module):        # a finite loss for 3 steps, then NaN
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.calls = 0

        def forward(self, x, t, cond=None):
            self.calls += 1
            y = self.lin(x)
            return y * float("nan") if self.calls > 3 else y
    x, _ = _data()
    with fake_device(), pytest.raises(dl.TrainingDivergedError, match="at step 3: loss = nan"):
        dl.train_ddpm(x, model=Bad(), device=FAKE, steps=20, **TINY)


def test_broken_model_on_the_device_is_reported_with_its_step_and_t():
    def nan_after(k):
        calls = []

        def model(x, t, cond=None):
            calls.append(1)
            return x * float("nan") if len(calls) > k else x * 0.5
        return model
    s = _schedule(40)
    with fake_device(), pytest.raises(ValueError, match=r"step 2 \(t = 19\)"):
        dl.ddim_sample(nan_after(2), s, (4, 2), steps=4, generator=_gen(0), device=FAKE)
    with fake_device(), pytest.raises(ValueError, match=r"step 5 \(t = 34\)"):
        dl.ddpm_sample(nan_after(5), s, (4, 2), generator=_gen(0), device=FAKE)


def test_package_conditional_net_checks_labels_once_per_cond_tensor():
    # nets.Conditioning reads the label range on the host: on an accelerator once per cond tensor, not per step.
    def run(n):
        net = _seeded(lambda: dl.TimeMLP(dim=2, hidden=16, depth=1, emb_dim=8, num_classes=2).eval())
        return lambda: dl.ddim_sample(net.to(FAKE), _schedule(40), (8, 2), steps=n, cond=_cond().to(FAKE),
                                      generator=_gen(0))
    _check("TimeMLP(num_classes=2)", run(4), run(8))


# ---- the harness itself must catch what it claims to catch ---------------------------------------------
def test_harness_catches_float64_and_syncs():
    with fake_device() as rec:
        x = torch.ones(3).to(FAKE)
        float(x.sum())
        bool(torch.isfinite(x).all())
        x.cpu()
        torch.zeros(2, dtype=torch.float64).to(FAKE)                 # float64 moved
        torch.zeros(2, dtype=torch.float64).to(FAKE, torch.float32)  # cast on the way: MPS would do it there
        torch.ones(2, device=FAKE, dtype=torch.float64)              # float64 made there
        torch.zeros(2, dtype=torch.float64).float().to(FAKE)         # cast on the CPU, then moved: fine
    assert len(rec.syncs) == 3 and len(rec.float64) == 3, (rec.syncs, rec.float64)
    with fake_device(), pytest.raises(RuntimeError, match="mixes a device tensor"):
        torch.ones(3).to(FAKE) + torch.ones(3)
    for draw in (torch.rand, torch.randn):
        with fake_device(), pytest.raises(RuntimeError, match="draws on the device with a CPU generator"):
            draw(3, generator=torch.Generator(), device=FAKE)


def test_conditional_net_still_rejects_bad_labels_on_a_device():
    # Checked once per cond tensor on an accelerator: the first use, and again after an in-place change.
    net = _seeded(lambda: dl.TimeMLP(dim=2, hidden=16, depth=1, emb_dim=8, num_classes=2).eval())
    with fake_device():
        net.to(FAKE)
        x, t = torch.zeros(4, 2).to(FAKE), torch.zeros(4, dtype=torch.long).to(FAKE)
        with pytest.raises(ValueError, match=r"cond labels must be in \[0, 2\]"):
            net(x, t, torch.tensor([0, 1, 3, 0]).to(FAKE))
        cond = torch.tensor([0, 1, 2, 0]).to(FAKE)
        net(x, t, cond)
        cond[2] = 5                      # modified in place: its version moves, so it is checked again
        with pytest.raises(ValueError, match=r"cond labels must be in \[0, 2\]"):
            net(x, t, cond)


# ---- mixed devices are named, not left to fail (or to compute) further in ----------------------------------
def test_arguments_on_different_devices_are_named():
    # Each call site of check_same_device: one argument on the device, the other on the CPU.
    s = _schedule(10)
    cpu = torch.zeros(2, 3)
    calls = [
        ("eps", "xt", lambda d: dl.ddim_step(s, d, cpu, 5, 4)),
        ("noise", "xt", lambda d: dl.ddim_step(s, d, torch.zeros_like(d), 5, 4, eta=1.0, noise=cpu)),
        ("noise", "xt", lambda d: dl.ddpm_step(s, d, torch.zeros_like(d), 5, noise=cpu)[0]),
        ("noise", "x0", lambda d: dl.q_sample(s, d, 5, cpu)),
        ("xt", "x0", lambda d: dl.q_posterior(s, d, cpu, 5)),
        ("logvar", "mu", lambda d: dl.kl_std_normal(d, cpu)),
        ("logvar1", "mu1", lambda d: dl.kl_normal(d, cpu, cpu, cpu)),
        ("mu", "x", lambda d: dl.gaussian_log_prob(d, cpu, cpu)),
        ("logvar", "mu", lambda d: dl.reparameterize(d, cpu, generator=_gen(0))),
    ]
    for second, first, call in calls:
        with fake_device(), pytest.raises(ValueError, match=rf"^{second} must be on the same device as {first} \(meta\), got cpu$"):
            call(torch.zeros(2, 3).to(FAKE))


def test_xT_given_on_the_cpu_is_moved_to_the_model_device():
    # ddim_sample moves a CPU xT to the sampling device (the model's, or device=); left on the CPU it would
    # meet the model's device tensors.
    xT = torch.randn(8, 2, generator=_gen(3))
    out, _ = run_on_device(lambda: dl.ddim_sample(_mlp().to(FAKE), _schedule(40), (8, 2), steps=3, xT=xT))
    assert isinstance(out, OnDevice)
    out, _ = run_on_device(lambda: dl.ddim_sample(dl.cfg(_cond_net().to(FAKE), 2.0), _schedule(40), (8, 2), steps=3,
                                                  xT=xT, cond=_cond().to(FAKE), device=FAKE))
    assert isinstance(out, OnDevice)


def test_float64_noise_levels_stay_off_the_device():
    # _check_sigmas casts the noise levels to float32 on the CPU: a float64 table (numpy's default) moved to
    # the device as it is would be float64 there (MPS has none).
    sig64 = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    score = lambda: _seeded(lambda: dl.ScoreMLP(dim=2, hidden=16, depth=1, emb_dim=8)).to(FAKE)  # noqa: E731
    x = torch.randn(8, 2, generator=_gen(4))
    _, rec = run_on_device(lambda: dl.dsm_loss(score(), x.to(FAKE), sig64, generator=_gen(5)))
    assert not rec.float64, rec.float64[:3]
    _, rec = run_on_device(lambda: dl.annealed_langevin_sample(score(), sig64, x.to(FAKE), 0.01, 2, generator=_gen(6)))
    assert not rec.float64, rec.float64[:3]


def test_schedule_tables_stay_on_the_cpu_and_at_follows_like():
    # Schedule keeps its float64 tables on the CPU whatever device its betas came from; Schedule.at with a
    # device t returns like's device and the dtype asked for (found by the schedules mutation run).
    with fake_device():
        s = dl.Schedule(torch.tensor([0.1, 0.2, 0.3]).to(FAKE))
        assert not isinstance(s.betas, OnDevice) and s.betas.device.type == "cpu" and s.betas.dtype == torch.float64
        t = torch.tensor([0, 2]).to(FAKE)
        out = s.at(s.alpha_bars, t, torch.zeros(2, 3).to(FAKE), dtype=torch.float16)
        assert isinstance(out, OnDevice) and out.dtype == torch.float16 and out.shape == (2, 1)
        on_cpu = s.at(s.alpha_bars, t, torch.zeros(2, 3))
        assert not isinstance(on_cpu, OnDevice) and on_cpu.device.type == "cpu" and on_cpu.dtype == torch.float32
    assert to_host(out).flatten().tolist() == s.alpha_bars[[0, 2]].half().tolist()
    assert on_cpu.flatten().tolist() == s.alpha_bars[[0, 2]].float().tolist()


def test_ddpm_xT_given_on_the_cpu_is_moved_to_the_model_device():
    xT = torch.randn(8, 2, generator=_gen(7))
    out, _ = run_on_device(lambda: dl.ddpm_sample(_mlp().to(FAKE), _schedule(5), (8, 2), xT=xT, generator=_gen(8)))
    assert isinstance(out, OnDevice)
