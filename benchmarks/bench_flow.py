"""Benchmark: flow matching and one reflow on 2-D toys against train_ddpm, and the pretrained digits flow.

    python benchmarks/bench_flow.py [--toys moons swiss_roll checkerboard thin_ring] [--n 5000] [--reflow-steps 1500]

The toys, data, reference and floor are those of benchmarks/bench_samplers.py (issue 19): n training points (seed 0),
a reference sample (seed 1), the floor the mean distance of 8 independent samples (seeds 10-17) to the reference,
sampling noise seed 4, projections seed 3. Per toy: train_ddpm and train_flow with the same TrainConfig defaults (same network, batch and steps, so about the same
training time), then the sliced Wasserstein distance (256 projections) over the noise floor for the flow at 1, 2, 5, 10, 20, 50
Euler steps and Heun 10/20 steps (19/39 network calls), before and after one reflow (pairs from the flow by Heun 20,
20,000 of them, then train_flow on them from the flow's weights for --reflow-steps steps), and DDIM-50 of the DDPM model for scale.
Targets (issue 20): flow Euler-50 within 2x the floor; after reflow, Euler-2 within 2x its own Euler-50.
Digits: the pretrained class-conditional digits_flow with CFG 2 at 20 network calls (10 guided Euler steps), judged
by digits_judge, and its diversity: mean pairwise distance within a class, over the data's. Times are CPU seconds.
"""
import argparse
import copy
import platform
import time

import torch

import diffusion_lab as dl

PATH = dl.linear_path()
EULER = (1, 2, 5, 10, 20, 50)
HEUN = (10, 20)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def sw(a, b):
    return dl.sliced_wasserstein(a.cpu(), b, n_projections=256, generator=_gen(3))


def draw(toy: str, n: int, seed: int) -> torch.Tensor:
    return dl.make_toy(toy, n, _gen(seed))[0]


def reference_and_floor(toy: str, n: int, draws: int = 8):
    """The reference sample and the noise floor as in bench_samplers.py: the mean SW of 8 independent samples to it."""
    ref = draw(toy, n, 1)
    return ref, sum(sw(draw(toy, n, 10 + k), ref) for k in range(draws)) / draws


def cpu_time(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def flow_row(model, ref, n):
    row = {}
    for steps in EULER:
        row[f"E{steps}"] = sw(dl.ode_sample(model, PATH, (n, 2), steps=steps, method="euler", prediction="velocity",
                                            generator=_gen(4)), ref)
    for steps in HEUN:
        row[f"H{steps}"] = sw(dl.ode_sample(model, PATH, (n, 2), steps=steps, method="heun", prediction="velocity",
                                            generator=_gen(4)), ref)
    row["straightness"] = dl.straightness(model, 4000, steps=50, generator=_gen(6))
    return row


def run_toy(toy: str, n: int, n_pairs: int, reflow_steps: int, train: dict) -> dict:
    data = draw(toy, n, 0)
    ref, floor = reference_and_floor(toy, n)
    (ddpm, _), ddpm_s = cpu_time(lambda: dl.train_ddpm(data, progress=False, **train))
    ddim50 = sw(dl.ddim_sample(ddpm, dl.make_schedule(dl.TrainConfig().schedule, dl.TrainConfig().T), (n, 2), steps=50,
                               generator=_gen(4)), ref)
    (flow, _), flow_s = cpu_time(lambda: dl.train_flow(data, progress=False, **train))
    (pairs), pairs_s = cpu_time(lambda: dl.reflow_pairs(flow, n_pairs, steps=20, generator=_gen(5)))
    (reflowed, _), retrain_s = cpu_time(lambda: dl.train_flow(pairs[1], pairs=pairs[0], model=copy.deepcopy(flow),
                                                              steps=reflow_steps, progress=False))
    return {"toy": toy, "floor": floor, "ddpm_s": ddpm_s, "ddim50": ddim50, "flow_s": flow_s, "pairs_s": pairs_s,
            "retrain_s": retrain_s, "flow": flow_row(flow, ref, n), "reflow": flow_row(reflowed, ref, n)}


def digits():
    model, meta = dl.load_pretrained("digits_flow")
    judge, _ = dl.load_pretrained("digits_judge")
    x_data, y_data = dl.load_digits()
    cond = torch.arange(10).repeat_interleave(50)
    x = dl.ode_sample(dl.cfg(model, meta["cfg_scale"]), PATH, (500, 1, 8, 8), steps=10, method="euler",
                      prediction="velocity", cond=cond, generator=_gen(7))
    acc = dl.classifier_accuracy(judge, x, cond)

    def spread(xs, ys):
        per_class = []
        for c in range(10):
            v = xs[ys == c].flatten(1).double()
            d = torch.cdist(v, v)
            per_class.append(float(d.sum() / (v.shape[0] * (v.shape[0] - 1))))
        return sum(per_class) / 10
    return acc, spread(x, cond), spread(x_data, y_data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--toys", nargs="+", default=["moons", "swiss_roll", "checkerboard", "thin_ring"], choices=dl.data.TOYS)
    p.add_argument("--n", type=int, default=5000, help="training points and samples per distance (as bench_samplers.py)")
    p.add_argument("--steps", type=int, default=None, help="training steps of both models (default: TrainConfig's)")
    p.add_argument("--pairs", type=int, default=20000, help="reflow pairs (noise, flow sample)")
    p.add_argument("--reflow-steps", type=int, default=1500, help="training steps of the reflow, from the flow's weights")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}; "
          f"TrainConfig defaults ({args.steps or dl.TrainConfig().steps} steps x {dl.TrainConfig().batch_size}); CPU seconds")
    acc, div, div_data = digits() if not args.no_digits else (0, 0, 1)
    print(f"digits_flow, CFG 2, 10 guided Euler steps (20 NFE), 500 samples: judge {acc:.1%}; within-class mean "
          f"pairwise distance {div:.2f} vs data {div_data:.2f} (ratio {div / div_data:.2f})", flush=True)
    cols = [f"E{s}" for s in EULER] + [f"H{s}" for s in HEUN]
    print("SW over the floor; E = Euler steps (NFE = steps), H = Heun steps (NFE = 2 steps - 1)")
    print(f"| toy | model | train s | {' | '.join(cols)} | straightness |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    for toy in args.toys:
        r = run_toy(toy, args.n, args.pairs, args.reflow_steps, {} if args.steps is None else {"steps": args.steps})
        for kind, extra in (("flow", f"{r['flow_s']:.0f}"),
                            ("flow + reflow", f"+{r['pairs_s']:.0f} pairs +{r['retrain_s']:.0f} retrain")):
            row = r["flow" if kind == "flow" else "reflow"]
            print(f"| {toy} | {kind} | {extra} | " + " | ".join(f"{row[c] / r['floor']:.2f}" for c in cols)
                  + f" | {row['straightness']:.3f} |")
        print(f"| {toy} | DDPM, DDIM-50 | {r['ddpm_s']:.0f} | {r['ddim50'] / r['floor']:.2f} at 50 NFE; floor "
              f"{r['floor']:.4f} |" + " |" * (len(cols) - 1), flush=True)

if __name__ == "__main__":
    main()
