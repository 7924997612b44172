"""Chapter 13's measurements, precomputed: writes book/data/sampler_sweep.npz (arrays) and sampler_sweep.json (scalars,
the command and the settings), read by book/13_choosing_a_sampler.ipynb, which re-runs a reduced part live and
asserts that it agrees with the stored numbers.

    python scripts/make_sampler_sweep.py                    # everything (about 6 minutes of CPU, 1 thread)
    python scripts/make_sampler_sweep.py --only orders      # one part: orders quality grids stochastic targets
                                                            # inversion digits playground
    python scripts/make_sampler_sweep.py --only grids --which moons --out /tmp/a    # a slice, into another folder
    python scripts/make_sampler_sweep.py --merge /tmp/a /tmp/b                       # slices into book/data

Slices run side by side on a busy machine; --merge records every slice's command in the json's "commands".

Every run is seeded; samples are compared with dl.sliced_wasserstein (256 projections, generator seed 3) to a
fresh reference and reported over the noise floor, the mean distance of 8 independent exact samples to it.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffusion_lab as dl

OUT = Path(__file__).resolve().parent.parent / "book" / "data"
COMMAND = "python scripts/make_sampler_sweep.py"
N = 1000                                    # samples per quality entry (2-D settings)
RUNS = 4                                    # independent start noises (seeds 4..7) averaged per quality entry: one
                                            # run's distance scatters like one floor pair (about +-25%)
NFES = [5, 10, 20, 50]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- shared pieces (the chapter imports these; keep them small) ----------------------------------------------
def smooth_mixture():
    """Two broad Gaussians: a smooth density, where the solvers' textbook orders should show."""
    return dl.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], stds=[0.3, 0.5])


def narrow_mixture():
    """The same means with std 0.02: nearly point masses, the regime of real data near t = 0."""
    return dl.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], stds=[0.02, 0.02])


def order_errors(mix, methods, spacing, ns, n_points=16, ref_steps=1024):
    """Max over n_points start points of |x(t_min) - reference| for each method and number of steps, integrating
    the exact probability-flow ODE of `mix` on vp_path() from t = 1 to t_min = 1e-3 (no denoising step).
    The reference is RK4 on the same spacing with ref_steps steps. Returns {method: [error per n]}."""
    path = dl.vp_path()
    m = mix.path_model(path, "eps")
    xT = torch.randn(n_points, 2, generator=gen(0), dtype=torch.float64)

    def solve(n, method):
        return dl.ode_solve(m, path, xT.clone(), dl.sampling_times(path, n, spacing)[:-1], method=method)
    ref = solve(ref_steps, "rk4")
    return {meth: [float((solve(n, meth) - ref).norm(dim=1).max()) for n in ns] for meth in methods}


def sw_to(ref):
    return lambda x: dl.sliced_wasserstein(x.float().cpu(), ref, n_projections=256, generator=gen(3))


def floor_of(draw, sw):
    return sum(sw(draw(10 + i)) for i in range(8)) / 8


def mean_runs(fn, sw, runs=RUNS):
    """The mean over `runs` start noises (generator seeds 4, 5, ...) of sw(fn(generator))."""
    return sum(sw(fn(gen(4 + r))) for r in range(runs)) / runs


def schedule():
    return dl.make_schedule("linear", 1000)


def samplers(eps_model, velocity_model, s):
    """name -> (list of NFE, function(nfe, shape, generator) -> samples). eps_model: integer-t eps-model on s;
    velocity_model: a float-t velocity model on linear_path(). Every sampler starts from generator noise."""
    path, ct = dl.schedule_path(s), dl.discrete_model(eps_model, s)
    ab = s.alpha_bars
    lo, hi = float(((1 - ab[0]) / ab[0]).sqrt()), float(((1 - ab[-1]) / ab[-1]).sqrt())
    lin = dl.linear_path()
    return {
        "DDPM ancestral": ([1000], lambda k, sh, g: dl.ddpm_sample(eps_model, s, sh, generator=g)),
        "DDIM eta=0": (NFES, lambda k, sh, g: dl.ddim_sample(eps_model, s, sh, steps=k, generator=g)),
        "DDIM eta=1": (NFES, lambda k, sh, g: dl.ddim_sample(eps_model, s, sh, steps=k, eta=1.0, generator=g)),
        "ODE Euler": (NFES, lambda k, sh, g: dl.ode_sample(ct, path, sh, steps=k, method="euler", generator=g)),
        "ODE Heun": ([5, 9, 19, 49], lambda k, sh, g: dl.ode_sample(ct, path, sh, steps=(k + 1) // 2, generator=g)),
        "EDM Heun (Karras)": ([5, 9, 19, 49], lambda k, sh, g: dl.edm_sample(ct, path, sh, dl.karras_sigmas((k + 1) // 2, lo, hi), generator=g)),
        "DPM-Solver++(2M)": (NFES, lambda k, sh, g: dl.dpm_solver_sample(eps_model, s, sh, steps=k, generator=g)),
        "reverse SDE": ([20, 50, 100, 200], lambda k, sh, g: dl.sde_sample(ct, path, sh, steps=k, generator=g)),
        "flow Euler": (NFES, lambda k, sh, g: dl.ode_sample(velocity_model, lin, sh, steps=k, method="euler",
                                                            prediction="velocity", generator=g)),
    }


def moons(n, seed):
    return dl.make_toy("moons", n, gen(seed))[0]


def settings(which):
    """(draw(seed) -> data, eps_model, velocity_model) for "oracle" (dl.ring_mixture()) or "moons" (checkpoints)."""
    s = schedule()
    if which == "oracle":
        mix = dl.ring_mixture()
        return (lambda seed: mix.sample(N, gen(seed))[0]), mix.eps_model(s), mix.path_model(dl.linear_path(), "velocity")
    return (lambda seed: moons(N, seed)), dl.load_pretrained("moons_ddpm")[0], dl.load_pretrained("moons_flow")[0]


def quality_entry(which, name, nfe, runs=RUNS):
    """One entry of part "quality": mean over runs of SW / floor (the chapter re-runs a few live)."""
    draw, eps_model, vel = settings(which)
    sw = sw_to(draw(1))
    fn = samplers(eps_model, vel, schedule())[name][1]
    return mean_runs(lambda g: fn(nfe, (N, 2), g), sw, runs) / floor_of(draw, sw)


# ---- the parts --------------------------------------------------------------------------------------------------
def part_orders(arr, js):
    ns = [4, 8, 16, 32, 64, 128]
    js["orders_ns"] = ns
    methods = ["euler", "heun", "rk4", "dpm++2m"]
    for mname, mix in (("smooth", smooth_mixture()), ("narrow", narrow_mixture())):
        for spacing in ("uniform", "log_snr"):
            errs = order_errors(mix, methods, spacing, ns)
            for meth, e in errs.items():
                arr[f"orders/{mname}/{spacing}/{meth}"] = np.array(e)


WHICH = ("oracle", "moons")      # --which narrows the quality, grids and stochastic parts to one setting


def part_quality(arr, js):
    for which in WHICH:
        draw, eps_model, vel = settings(which)
        sw = sw_to(draw(1))
        floor = floor_of(draw, sw)
        js[f"floor/{which}"] = floor
        for name, (nfes, fn) in samplers(eps_model, vel, schedule()).items():
            vals = [mean_runs(lambda g: fn(k, (N, 2), g), sw) / floor for k in nfes]
            arr[f"quality/{which}/{name}"] = np.array([nfes, vals], dtype=np.float64)
            print(f"  {which} {name}: " + ", ".join(f"{k}:{v:.2f}" for k, v in zip(nfes, vals)), flush=True)


GRID_NFES = [6, 10, 20, 50]


def part_grids(arr, js):
    s = schedule()
    path = dl.schedule_path(s)
    for which in WHICH:
        draw, eps_model, _ = settings(which)
        ct = dl.discrete_model(eps_model, s)
        sw = sw_to(draw(1))
        floor = floor_of(draw, sw)
        for method in ("euler", "dpm++2m"):
            for spacing in dl.SPACINGS:
                vals = [mean_runs(lambda g: dl.ode_sample(ct, path, (N, 2), steps=k, method=method, spacing=spacing,
                                                          generator=g), sw) / floor for k in GRID_NFES]
                arr[f"grids/{which}/{method}/{spacing}"] = np.array(vals)
    js["grid_nfes"] = GRID_NFES


def part_stochastic(arr, js):
    s = schedule()
    path = dl.schedule_path(s)
    ab = s.alpha_bars
    lo, hi = float(((1 - ab[0]) / ab[0]).sqrt()), float(((1 - ab[-1]) / ab[-1]).sqrt())
    nfes = [10, 20, 50]
    js["stochastic_nfes"] = nfes
    for which in WHICH:
        draw, eps_model, _ = settings(which)
        ct = dl.discrete_model(eps_model, s)
        sw = sw_to(draw(1))
        floor = floor_of(draw, sw)
        for eta in (0.0, 0.5, 1.0):
            arr[f"stochastic/{which}/ddim eta={eta:g}"] = np.array(
                [mean_runs(lambda g: dl.ddim_sample(eps_model, s, (N, 2), steps=k, eta=eta, generator=g), sw) / floor
                 for k in nfes])
        for churn in (0.0, 10.0, 40.0):           # EDM Algorithm 2: N = (NFE + 1) / 2 levels, gamma = churn / N,
            arr[f"stochastic/{which}/edm churn={churn:g}"] = np.array(   # churned only below hi / sqrt(2) (the path's
                [mean_runs(lambda g: dl.edm_sample(ct, path, (N, 2), dl.karras_sigmas((k + 1) // 2, lo, hi), churn=churn,
                                                   s_tmax=hi / math.sqrt(2), generator=g), sw) / floor   # top level)
                 for k in nfes])
        arr[f"stochastic/{which}/reverse SDE"] = np.array(
            [mean_runs(lambda g: dl.sde_sample(ct, path, (N, 2), steps=k, generator=g), sw) / floor for k in nfes])


TARGETS = [("eps", "vp"), ("x0", "vp"), ("v", "vp"), ("velocity", "linear")]
TARGET_STEPS = 1500
REDUCED_TARGET = {"prediction": "v", "path": "vp", "steps": 60, "n": 500}


def path_of(name):
    return dl.vp_path() if name == "vp" else dl.linear_path()


def target_run(prediction, path_name, steps, n=2000, sample_steps=25):   # 2,000 samples (the stored run)
    """Train prediction on path_name for `steps` (same net, data, seed, batch, lr), sample with Heun, 2 x
    sample_steps - 1 calls; returns (mean over RUNS start noises of SW / floor, final loss)."""
    data = moons(5000, 0)
    path = path_of(path_name)
    model, losses = dl.train_path_model(data, path, prediction, steps=steps, progress=False)
    draw = lambda seed: moons(n, seed)  # noqa: E731
    sw = sw_to(draw(1))
    q = mean_runs(lambda g: dl.ode_sample(model, path, (n, 2), steps=sample_steps, prediction=prediction, generator=g), sw)
    return q / floor_of(draw, sw), sum(losses[-100:]) / min(100, len(losses))


def part_targets(arr, js):
    vals = []
    for prediction, path_name in TARGETS:
        t0 = time.process_time()
        q, loss = target_run(prediction, path_name, TARGET_STEPS)
        vals.append(q)
        print(f"  target {prediction} on {path_name}: {q:.2f} x floor, loss {loss:.4f}, {time.process_time() - t0:.0f} s", flush=True)
    arr["targets/quality"] = np.array(vals)
    js["targets"] = [f"{p} ({n})" for p, n in TARGETS]
    js["target_steps"] = TARGET_STEPS
    r = REDUCED_TARGET
    js["targets/reduced"] = target_run(r["prediction"], r["path"], r["steps"], n=r["n"])[0]
    js["targets/reduced_setting"] = r


INV_STEPS = [5, 10, 20, 50, 100]
INV_SCALES = [1.0, 2.0, 3.0, 5.0, 8.0]


def inversion_errors(method, steps, scale, n=64):
    """Round trip x(t_min) -> x(t_max) -> x(t_min) with ode_solve on vp_path() over the log-SNR grid, the exact
    labelled ring mixture guided by dl.cfg(model, scale) (scale 1: the conditional model itself).
    Returns the RMS reconstruction error over n points (each data point noised to t_min first)."""
    mix = dl.ring_mixture(labelled=True)
    path = dl.vp_path()
    m = mix.path_model(path, "eps")
    model = dl.cfg(m, scale)
    x0, y = mix.sample_labelled(n, gen(5))
    x0 = x0.double()
    a, s_ = float(path.alpha(path.t_min)), float(path.sigma(path.t_min))
    x = a * x0 + s_ * torch.randn(x0.shape, generator=gen(6), dtype=torch.float64)
    ts = dl.sampling_times(path, steps, "log_snr")[:-1]
    xT = dl.ode_solve(model, path, x, ts[::-1], method=method, cond=y)
    back = dl.ode_solve(model, path, xT, ts, method=method, cond=y)
    return float(((back - x) ** 2).sum(1).mean().sqrt())


def part_inversion(arr, js):
    js["inv_steps"], js["inv_scales"] = INV_STEPS, INV_SCALES
    for method in ("ddim", "dpm++2m"):
        arr[f"inversion/{method}"] = np.array([inversion_errors(method, k, 1.0) for k in INV_STEPS])
        arr[f"inversion_cfg/{method}"] = np.array([inversion_errors(method, 20, w) for w in INV_SCALES])


DIGIT_NFES = [5, 10, 20, 50]


def digits_entry(method, nfe, n_per_class=20, scale=2.0, seed=7):
    """Class-conditional digits (digits_cfg, CFG scale 2) with `nfe` calls of the guided model: (judge accuracy,
    within-class diversity = mean pairwise distance within each class over the same for the data)."""
    s = schedule()
    model = dl.load_pretrained("digits_cfg")[0]
    judge = dl.load_pretrained("digits_judge")[0]
    y = torch.arange(10).repeat_interleave(n_per_class)
    guided = dl.cfg(model, scale)
    sh = (y.shape[0], 1, 8, 8)
    if method == "DDIM":
        x = dl.ddim_sample(guided, s, sh, steps=nfe, cond=y, generator=gen(seed))
    elif method == "DPM-Solver++(2M)":
        x = dl.dpm_solver_sample(guided, s, sh, steps=nfe, cond=y, generator=gen(seed))
    else:
        x = dl.ode_sample(dl.discrete_model(guided, s), dl.schedule_path(s), sh, steps=(nfe + 1) // 2, cond=y,
                          generator=gen(seed))
    acc = dl.classifier_accuracy(judge, x.clamp(-1, 1), y)
    return acc, within_class_spread(x, y) / within_class_spread(*dl.load_digits())


def within_class_spread(x, y):
    x = x.flatten(1).double()
    return float(torch.stack([torch.pdist(x[y == c]).mean() for c in range(10)]).mean())


def part_digits(arr, js):
    js["digit_nfes"] = DIGIT_NFES
    for method in ("DDIM", "DPM-Solver++(2M)", "Heun"):
        nfes = [5, 9, 19, 49] if method == "Heun" else DIGIT_NFES
        vals = [digits_entry(method, k) for k in nfes]
        arr[f"digits/{method}"] = np.array([nfes, [v[0] for v in vals], [v[1] for v in vals]])
        print(f"  digits {method}: " + ", ".join(f"{k}: {a:.2f}/{d:.2f}" for k, (a, d) in zip(nfes, vals)), flush=True)


PLAY_METHODS = ["euler", "heun", "dpm++2m"]
PLAY_NFES = [5, 10, 20, 50]
PLAY_N = 400


def play_run(method, nfe, spacing):
    """Oracle samples of dl.ring_mixture() on schedule_path with about `nfe` calls (Heun: (nfe + 1) // 2 steps)."""
    s = schedule()
    mix = dl.ring_mixture()
    steps = (nfe + 1) // 2 if method == "heun" else nfe
    return dl.ode_sample(mix.path_model(dl.schedule_path(s), "eps"), dl.schedule_path(s), (PLAY_N, 2), steps=steps,
                         method=method, spacing=spacing, generator=gen(8))


def part_playground(arr, js):
    mix = dl.ring_mixture()
    sw = sw_to(mix.sample(PLAY_N, gen(1))[0])
    floor = floor_of(lambda seed: mix.sample(PLAY_N, gen(seed))[0], sw)
    js["play"] = {"methods": PLAY_METHODS, "nfes": PLAY_NFES, "spacings": list(dl.SPACINGS), "n": PLAY_N}
    samples = np.zeros((len(PLAY_METHODS), len(PLAY_NFES), len(dl.SPACINGS), PLAY_N, 2), dtype=np.float16)
    q = np.zeros(samples.shape[:3])
    for i, meth in enumerate(PLAY_METHODS):
        for j, k in enumerate(PLAY_NFES):
            for l, sp in enumerate(dl.SPACINGS):
                x = play_run(meth, k, sp)
                samples[i, j, l] = x.numpy().astype(np.float16)
                q[i, j, l] = sw(x) / floor
    arr["play/samples"], arr["play/quality"] = samples, q


PARTS = {"orders": part_orders, "quality": part_quality, "grids": part_grids, "stochastic": part_stochastic,
         "targets": part_targets, "inversion": part_inversion, "digits": part_digits, "playground": part_playground}


def main():
    global WHICH
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=list(PARTS), help="recompute these parts, keep the others")
    p.add_argument("--out", default=None, help="folder for the two files (default book/data)")
    p.add_argument("--which", choices=WHICH, default=None, help="quality/grids/stochastic: only this setting")
    p.add_argument("--merge", nargs="*", default=None, help="merge these folders' files (made with --out) into "
                   "book/data, the later folders' entries replacing the earlier ones; computes nothing")
    args = p.parse_args()
    if args.which:
        WHICH = (args.which,)
    if args.merge is not None:
        return merge([Path(d) for d in args.merge])
    torch.set_num_threads(1)
    out = Path(args.out) if args.out else OUT
    out.mkdir(parents=True, exist_ok=True)
    npz, jsn = out / "sampler_sweep.npz", out / "sampler_sweep.json"
    arr = dict(np.load(npz)) if args.only and npz.exists() else {}
    js = json.loads(jsn.read_text()) if args.only and jsn.exists() else {}
    for name in args.only or list(PARTS):
        t0 = time.process_time()
        prefix = {"playground": "play/"}.get(name, name)
        arr = {k: v for k, v in arr.items() if not k.startswith(prefix)}
        PARTS[name](arr, js)
        js.setdefault("cpu_seconds", {})[name] = round(time.process_time() - t0)
        print(f"{name}: {time.process_time() - t0:.0f} s CPU", flush=True)
    js["N"], js["runs"] = N, RUNS
    js["command"] = COMMAND + ("" if not args.only else " --only " + " ".join(args.only)) + (
        f" --which {args.which}" if args.which else "")
    js["commands"] = sorted(set(js.get("commands", [])) | {js["command"]})
    js["torch"] = torch.__version__
    np.savez_compressed(npz, **arr)
    jsn.write_text(json.dumps(js, indent=1, sort_keys=True) + "\n")
    print(f"wrote {npz} ({npz.stat().st_size // 1024} KB) and {jsn.name}")


def merge(folders):
    """Combine the files of several partial runs (run side by side with --out) into book/data."""
    npz, jsn = OUT / "sampler_sweep.npz", OUT / "sampler_sweep.json"
    arr, js = (dict(np.load(npz)), json.loads(jsn.read_text())) if npz.exists() else ({}, {})
    for d in folders:
        arr.update(dict(np.load(d / "sampler_sweep.npz")))
        part = json.loads((d / "sampler_sweep.json").read_text())
        cpu = {**js.get("cpu_seconds", {}), **part.get("cpu_seconds", {})}
        commands = sorted(set(js.get("commands", [])) | set(part.get("commands", [])))
        js.update(part)
        js["cpu_seconds"], js["commands"] = cpu, commands
    js["commands"] = sorted(set(js["commands"]) | {COMMAND + " --merge <the slices' folders>"})
    np.savez_compressed(npz, **arr)
    jsn.write_text(json.dumps(js, indent=1, sort_keys=True) + "\n")
    print(f"merged {len(folders)} partial runs into {npz} ({npz.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    sys.exit(main())
