"""Benchmark: train_ddpm with its defaults on 2-D toys, then sample quality vs the noise floor.

    python benchmarks/bench_toys.py [--toys moons swiss_roll] [--n 20000] [--device cpu]

For each toy it prints the training time, and the sliced Wasserstein distance (256 projections)
between 20,000 samples and 20,000 fresh data points for DDPM with 1000 steps and DDIM with
50, 20 and 10 steps, next to the noise floor: the MEAN distance of 8 independent data samples to
the same reference (one pair varies by about +-25% at 20,000 points, so a one-pair floor is a
noisy yardstick; issue 19). Targets (issue 2): training <= 60 s on a 2-core CPU, DDPM-1000 <= 2x the
floor, DDIM-50 <= 1.25x DDPM-1000. Speed is measured here, never in the tests.
"""
import argparse
import platform
import time

import torch

import diffusion_lab as dl


def run(toy: str, n: int, device: torch.device) -> dict:
    data, _ = dl.make_toy(toy, n, torch.Generator().manual_seed(0))
    ref, _ = dl.make_toy(toy, n, torch.Generator().manual_seed(1))

    def sw(a, b):
        return dl.sliced_wasserstein(a.cpu(), b, n_projections=256, generator=torch.Generator().manual_seed(3))

    floors = [sw(dl.make_toy(toy, n, torch.Generator().manual_seed(10 + i))[0], ref) for i in range(8)]
    row = {"toy": toy, "floor": sum(floors) / len(floors)}
    t0 = time.perf_counter()
    model, losses = dl.train_ddpm(data, progress=False, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    row["train_s"] = time.perf_counter() - t0
    row["final_loss"] = sum(losses[-100:]) / 100
    schedule = dl.make_schedule(dl.TrainConfig().schedule, dl.TrainConfig().T)
    t0 = time.perf_counter()
    x = dl.ddpm_sample(model, schedule, (n, 2), generator=torch.Generator().manual_seed(4))
    row["ddpm_1000_s"] = time.perf_counter() - t0
    row["ddpm_1000"] = sw(x, ref)
    for steps in (50, 20, 10):
        x = dl.ddim_sample(model, schedule, (n, 2), steps=steps, generator=torch.Generator().manual_seed(4))
        row[f"ddim_{steps}"] = sw(x, ref)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", nargs="+", default=["moons", "swiss_roll"], choices=dl.data.TOYS)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--device", default=None, help="default: dl.get_device()")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, as in the book: the models are small, and on 2 cores a "
                        "second thread made training slower, not faster)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else dl.get_device()
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{'toy':<11} {'train s':>8} {'floor':>7} {'DDPM-1000':>10} {'DDIM-50':>8} {'DDIM-20':>8} {'DDIM-10':>8}  "
          f"{'DDPM/floor':>10} {'DDIM50/DDPM':>11}")
    for toy in args.toys:
        r = run(toy, args.n, device)
        print(f"{r['toy']:<11} {r['train_s']:8.1f} {r['floor']:7.4f} {r['ddpm_1000']:10.4f} {r['ddim_50']:8.4f} "
              f"{r['ddim_20']:8.4f} {r['ddim_10']:8.4f}  {r['ddpm_1000'] / r['floor']:10.2f} {r['ddim_50'] / r['ddpm_1000']:11.2f}")


if __name__ == "__main__":
    main()
