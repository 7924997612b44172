"""Benchmark: a sampler's time over the bare network's (same network, same calls, same shapes).

    python benchmarks/bench_overhead.py [--threads 1] [--repeats 5] [--n 2000] [--only ddpm_sample]

For each sampler it times, in one run, (1) the bare network loop: exactly the network calls the
sampler makes, nothing else; (2) our sampler; (3) diffusers' scheduler loop (DDPMScheduler /
DDIMScheduler configured to match) stepping the same network. It prints the best of --repeats
runs of each, as process CPU seconds (the machine is shared: CPU time is steadier than wall time,
and with --threads 1 the two agree on an idle machine), and the ratios sampler/bare and
diffusers/bare. Target (issue 19): our samplers within 10% of the bare network.

Adding a sampler (e.g. a continuous-time one) is one entry in SAMPLERS: a name, the list of
network inputs t it evaluates (for the bare loop), a function running it, and optionally the
diffusers loop it should be compared with. Speed is measured here, never in the tests.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch

import diffusion_lab as dl


@dataclass
class Entry:
    """One sampler: `calls(schedule)` lists the t tensors' values the network is called with, in order;
    `ours(net, schedule, xT)` runs the sampler; `diffusers(net, schedule, xT)` the reference loop (or None)."""
    calls: Callable
    ours: Callable
    diffusers: Callable | None = None


def _gen():
    return torch.Generator().manual_seed(0)


def _diffusers_ddpm(net, schedule, xT):
    from diffusers import DDPMScheduler
    s = DDPMScheduler(num_train_timesteps=schedule.T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      variance_type="fixed_small", clip_sample=False, prediction_type="epsilon")
    s.set_timesteps(schedule.T)
    return _diffusers_loop(net, s, xT, {"generator": _gen()})


def _diffusers_ddim(steps):
    def run(net, schedule, xT):
        from diffusers import DDIMScheduler
        s = DDIMScheduler(num_train_timesteps=schedule.T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing",
                          prediction_type="epsilon")
        s.set_timesteps(steps)
        return _diffusers_loop(net, s, xT, {"eta": 0.0})
    return run


def _diffusers_loop(net, scheduler, xT, step_kwargs):
    x = xT
    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        eps = net(x, tt, None)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


SAMPLERS = {
    "ddpm_sample (T = 1000)": Entry(
        calls=lambda schedule: list(range(schedule.T - 1, -1, -1)),
        ours=lambda net, schedule, xT: dl.ddpm_sample(net, schedule, tuple(xT.shape), xT=xT, generator=_gen()),
        diffusers=_diffusers_ddpm),
    "ddim_sample (50 steps)": Entry(
        calls=lambda schedule: dl.ddim_timesteps(schedule.T, 50),
        ours=lambda net, schedule, xT: dl.ddim_sample(net, schedule, tuple(xT.shape), steps=50, xT=xT),
        diffusers=_diffusers_ddim(50)),
}


def bare_loop(net, ts, xT):
    """Only the network calls: the t tensors are made before the clock starts."""
    tts = [torch.full((xT.shape[0],), t, dtype=torch.long) for t in ts]

    def run():
        for tt in tts:
            net(xT, tt, None)
    return run


def best_cpu_seconds(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}, load average {load}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="points per batch (2-D)")
    ap.add_argument("--only", nargs="*", default=None, help="names (prefixes) of the samplers to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import diffusers
        ref_version = f"diffusers {diffusers.__version__}"
    except ImportError:
        ref_version = "diffusers not installed: no reference column"
    print(machine() + f", {ref_version}")
    print(f"network: TimeMLP(dim=2, hidden=128, depth=3), batch {args.n}, best of {args.repeats}, process CPU seconds")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = dl.TimeMLP(dim=2, hidden=128, depth=3).eval()
    schedule = dl.linear_schedule(1000)
    xT = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(1))
    print(f"{'sampler':26} {'calls':>5} {'bare s':>8} {'ours s':>8} {'diffusers s':>11} {'ours/bare':>9} {'diffusers/bare':>14}")
    with torch.no_grad():
        for name, e in SAMPLERS.items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            ts = e.calls(schedule)
            bare = best_cpu_seconds(bare_loop(net, ts, xT), args.repeats)
            ours = best_cpu_seconds(lambda: e.ours(net, schedule, xT), args.repeats)
            ref = (best_cpu_seconds(lambda: e.diffusers(net, schedule, xT), args.repeats)
                   if e.diffusers is not None and not ref_version.startswith("diffusers not") else float("nan"))
            print(f"{name:26} {len(ts):5d} {bare:8.3f} {ours:8.3f} {ref:11.3f} {ours / bare:9.3f} {ref / bare:14.3f}")


if __name__ == "__main__":
    main()
