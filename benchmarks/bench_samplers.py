"""Benchmark: sample quality per network call for every sampler, on trained 2-D models and the exact oracle.

    python benchmarks/bench_samplers.py [--toys moons swiss_roll checkerboard thin_ring] [--n 5000]

For each toy, one train_ddpm model with its defaults; plus "oracle", the exact eps-model of dl.ring_mixture()
(pure discretisation error). For each sampler it prints the sliced Wasserstein distance (256 projections) of
n samples to n fresh data points, over the noise floor: the MEAN distance of 8 independent exact samples to
the same reference (one pair scatters by about +-25%). NFE = network calls per sample. Continuous-time samplers
run on the schedule's own path through dl.discrete_model. Then, on the first toy's network, CPU time per
sampler over NFE bare network calls on the same batch, next to diffusers' scheduler loop where it has one.
Targets (issue 19): DPM-Solver++(2M) at 20 NFE within 1.1x of DDPM-1000 on every toy; oracle within 1.05x of
the floor at 20 NFE; sampler time within 10% of the bare network.
"""
import argparse
import platform
import time

import torch

import diffusion_lab as dl


def samplers(model, s):
    """name -> (NFE, function(generator) -> samples of shape (n, 2)); all start from generator noise."""
    path, ct = dl.schedule_path(s), dl.discrete_model(model, s)
    ab = s.alpha_bars
    lo, hi = float(((1 - ab[0]) / ab[0]).sqrt()), float(((1 - ab[-1]) / ab[-1]).sqrt())

    def karras(n_sig):
        return lambda sh, g: dl.edm_sample(ct, path, sh, dl.karras_sigmas(n_sig, lo, hi), generator=g)
    out = {
        "DDPM-1000": (1000, lambda sh, g: dl.ddpm_sample(model, s, sh, generator=g)),
        **{f"DDIM-{k}": (k, (lambda k: lambda sh, g: dl.ddim_sample(model, s, sh, steps=k, generator=g))(k))
           for k in (10, 20, 50)},
        **{f"DPM-Solver++(2M)-{k}": (k, (lambda k: lambda sh, g: dl.dpm_solver_sample(model, s, sh, steps=k, generator=g))(k))
           for k in (10, 20)},
        **{f"Heun-Karras-{2 * k - 1}": (2 * k - 1, karras(k)) for k in (5, 10, 18)},
        **{f"ODE-Euler-{k}": (k, (lambda k: lambda sh, g: dl.ode_sample(ct, path, sh, steps=k, method="euler", generator=g))(k))
           for k in (20, 100)},
        "ODE-Heun-39": (39, lambda sh, g: dl.ode_sample(ct, path, sh, steps=20, method="heun", generator=g)),
        **{f"SDE-{k}": (k, (lambda k: lambda sh, g: dl.sde_sample(ct, path, sh, steps=k, generator=g))(k)) for k in (100, 500)},
    }
    return out


def quality(toy, n, schedule, device, train_steps, runs=1):
    if toy == "oracle":
        mix = dl.ring_mixture()
        draw = lambda seed: mix.sample(n, torch.Generator().manual_seed(seed))[0]  # noqa: E731
        model, train_s = mix.eps_model(schedule), 0.0
    else:
        draw = lambda seed: dl.make_toy(toy, n, torch.Generator().manual_seed(seed))[0]  # noqa: E731
        t0 = time.process_time()
        cfg = dl.TrainConfig() if train_steps is None else dl.TrainConfig(steps=train_steps)
        model, _ = dl.train_ddpm(draw(0), config=cfg, progress=False, device=device)
        train_s = time.process_time() - t0
    ref = draw(1)

    def sw(x):
        return dl.sliced_wasserstein(x.cpu(), ref, n_projections=256, generator=torch.Generator().manual_seed(3))
    floor = sum(sw(draw(10 + i)) for i in range(8)) / 8
    rows = {}
    for name, (nfe, fn) in samplers(model, schedule).items():      # mean over `runs` independent start noises
        with torch.no_grad():
            rows[name] = (nfe, sum(sw(fn((n, 2), torch.Generator().manual_seed(4 + r))) for r in range(runs)) / runs / floor)
    return model, floor, train_s, rows


def timing(model, s, n, device, reps=3):
    """CPU seconds per sampler over NFE bare network calls (best of reps), and diffusers' loops."""
    x = torch.randn(n, 2, device=device)

    def best(fn):
        ts = []
        for _ in range(reps):
            t0 = time.process_time()
            with torch.no_grad():
                fn()
            ts.append(time.process_time() - t0)
        return min(ts)
    t_all = torch.zeros(n, dtype=torch.long, device=device)
    per_call = best(lambda: [model(x, t_all) for _ in range(50)]) / 50
    out = {}
    for name, (nfe, fn) in samplers(model, s).items():
        if nfe <= 100:
            out[name] = best(lambda: fn((n, 2), torch.Generator().manual_seed(4))) / (nfe * per_call)
    try:
        import diffusers
    except ImportError:
        return per_call, out
    for name, sched, k in [("diffusers DPMSolverMultistep-20", diffusers.DPMSolverMultistepScheduler(), 20),
                           ("diffusers DDIM-50", diffusers.DDIMScheduler(timestep_spacing="trailing"), 50)]:
        def loop(sched=sched, k=k):
            sched.set_timesteps(k)
            y = torch.randn(n, 2, device=device)
            for t in sched.timesteps:
                y = sched.step(model(y, t.expand(n).to(device)), t, y).prev_sample
        out[name] = best(loop) / (k * per_call)
    return per_call, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", nargs="*", default=["moons", "swiss_roll", "checkerboard", "thin_ring"])
    p.add_argument("--runs", type=int, default=1, help="sampler runs (start noises) averaged per entry: one run's "
                   "distance scatters like one floor pair (+-25%%), and deterministic samplers share the noise")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--train-steps", type=int, default=None, help="train_ddpm steps (default: TrainConfig's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, n = {args.n}, runs = {args.runs}", flush=True)
    s = dl.make_schedule(dl.TrainConfig().schedule, dl.TrainConfig().T)
    cols, first_model = {}, None
    for toy in args.toys + ["oracle"]:
        model, floor, train_s, rows = quality(toy, args.n, s, device, args.train_steps, args.runs)
        first_model = first_model or model
        cols[toy] = rows
        print(f"{toy}: floor {floor:.4f}, training {train_s:.0f} s CPU; "
              + ", ".join(f"{nm} {v:.2f}" for nm, (_, v) in rows.items()), flush=True)
    names = list(next(iter(cols.values())))
    print(f"\n{'sampler':<22} {'NFE':>5} " + " ".join(f"{t:>12}" for t in cols))
    for nm in names:
        print(f"{nm:<22} {cols['oracle'][nm][0]:>5} " + " ".join(f"{cols[t][nm][1]:>12.2f}" for t in cols))
    print("\n(sliced Wasserstein / noise floor)")
    for t in args.toys:
        r = cols[t]["DPM-Solver++(2M)-20"][1] / cols[t]["DDPM-1000"][1]
        print(f"{t}: DPM-Solver++(2M)-20 / DDPM-1000 = {r:.2f} (target <= 1.1)")
    print(f"oracle: DPM-Solver++(2M)-20 / floor = {cols['oracle']['DPM-Solver++(2M)-20'][1]:.2f} (target <= 1.05)")
    if args.no_timing or not args.toys:
        return
    per_call, t = timing(first_model, s, args.n, device)
    print(f"\ntime over the bare network ({args.toys[0]} model, batch {args.n}, {per_call * 1e3:.2f} ms CPU per call):")
    for nm, v in t.items():
        print(f"  {nm:<32} {v:.2f}x")


if __name__ == "__main__":
    main()
