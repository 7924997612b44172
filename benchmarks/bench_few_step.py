"""Benchmark: few-step generation (issue 23): progressive distillation, consistency distillation and consistency
training at 1, 2 and 4 network calls, next to DDIM, DPM-Solver++(2M) and a flow at the same calls, on 2-D toys.

    python benchmarks/bench_few_step.py [--toys moons] [--n 5000] [--train-steps 3000] [--distill-steps 1500]

The toys, data, reference, floor and seeds are those of benchmarks/bench_samplers.py and bench_flow.py (whose
helpers this reuses): n training points (seed 0), a reference sample (seed 1), the floor the mean sliced Wasserstein
distance of 8 independent samples to the reference, sampling noise seed 4. Per toy: the teacher, train_ddpm with
--train-steps (TrainConfig's other defaults); train_flow with the same; then, from the teacher,
progressive distillation 16 -> 8 -> 4 -> 2 -> 1 DDIM steps (--distill-steps per round), consistency distillation
on the teacher's own path (--distill-steps x 2 steps, Heun teacher steps) and consistency training without a
teacher (same steps, default VE path 0.002..80). Printed: SW over the floor at 1, 2, 4 network calls and the
training CPU seconds each method adds to the teacher (the flow: its own full training). Target (issue 23):
2 network calls within 2x the floor on two moons.
"""
import argparse
import platform

import torch

import diffusion_lab as dl
from bench_flow import _gen, cpu_time, draw, reference_and_floor, sw

NFES = (1, 2, 4)


def run_toy(toy: str, n: int, train_steps: int, distill_steps: int) -> dict:
    data = draw(toy, n, 0)
    ref, floor = reference_and_floor(toy, n)
    s = dl.make_schedule(dl.TrainConfig().schedule, dl.TrainConfig().T)
    (teacher, _), teacher_s = cpu_time(lambda: dl.train_ddpm(data, steps=train_steps, progress=False))
    (flow, _), flow_s = cpu_time(lambda: dl.train_flow(data, steps=train_steps, progress=False))
    rows = {}

    def score(fn):
        return {k: sw(fn(k), ref) / floor for k in NFES}
    rows["DDIM (teacher)"] = score(lambda k: dl.ddim_sample(teacher, s, (n, 2), steps=k, generator=_gen(4))), 0.0
    rows["DPM-Solver++(2M) (teacher)"] = score(
        lambda k: dl.dpm_solver_sample(teacher, s, (n, 2), steps=k, generator=_gen(4))), 0.0
    rows["flow, Euler"] = score(lambda k: dl.ode_sample(flow, dl.linear_path(), (n, 2), steps=k, method="euler",
                                                         prediction="velocity", generator=_gen(4))), flow_s
    # progressive distillation, one round at a time so that every student is measured
    students, pd_s, model = {}, 0.0, teacher
    for r, steps in enumerate((16, 8, 4, 2)):
        (model, _), sec = cpu_time(lambda: dl.progressive_distill(model, s, data, teacher_steps=steps, rounds=1,
                                                                  steps=distill_steps, seed=r, progress=False))
        pd_s += sec
        students[steps // 2] = model
    rows["progressive distillation"] = {k: sw(dl.ddim_sample(students[k], s, (n, 2), steps=k, generator=_gen(4)), ref)
                                        / floor for k in NFES}, pd_s
    ct_teacher = dl.discrete_model(teacher, s)
    (cd, _), cd_s = cpu_time(lambda: dl.consistency_distill(ct_teacher, ct_teacher.path, data,
                                                            steps=2 * distill_steps, progress=False))
    rows["consistency distillation"] = score(lambda k: dl.consistency_sample(cd, ct_teacher.path, (n, 2), steps=k,
                                                                             generator=_gen(4))), cd_s
    (ct, _), ct_s = cpu_time(lambda: dl.consistency_train(data, steps=2 * distill_steps, progress=False))
    rows["consistency training"] = score(lambda k: dl.consistency_sample(ct, ct.path, (n, 2), steps=k,
                                                                         generator=_gen(4))), ct_s
    return {"toy": toy, "floor": floor, "teacher_s": teacher_s, "rows": rows,
            "ddim50": sw(dl.ddim_sample(teacher, s, (n, 2), steps=50, generator=_gen(4)), ref) / floor}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", nargs="*", default=["moons"])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--distill-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"n = {args.n}, train steps {args.train_steps}, distill steps {args.distill_steps}", flush=True)
    for toy in args.toys:
        res = run_toy(toy, args.n, args.train_steps, args.distill_steps)
        print(f"\n{toy}: floor {res['floor']:.4f}, teacher training {res['teacher_s']:.0f} s CPU, "
              f"teacher DDIM-50 {res['ddim50']:.2f}x floor")
        print(f"| method | NFE 1 | NFE 2 | NFE 4 | training CPU s beyond the teacher |")
        print("|---|---|---|---|---|")
        for name, (row, sec) in res["rows"].items():
            print(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in NFES) + f" | {sec:.0f} |", flush=True)


if __name__ == "__main__":
    main()
