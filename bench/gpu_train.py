"""Fine-tune the shipped Diff-Mamba defaults inside a fixed wall-clock budget (a lent GPU).

Why a driver: a lease of a GPU is measured in minutes, and a cosine schedule must know its
length up front. So each stage first runs a few calibration iterations, reads the measured
iterations per second from the run's own log, then resumes the same run (``--max-iters`` may
change on resume) with the length that fits the budget — all tasks concurrently, since the small
network leaves the GPU mostly idle. Both stages of the release's recipe run, from the shipped
weights (``--init models/<task>.safetensors``) or, with ``--model-args``, from scratch for another
config; each task's final EMA weights are exported.

    python bench/gpu_train.py --device cuda --clean data/pool --stage1-s 240 --stage2-s 100 \
        --out runs/gpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("denoise", "derain", "deblur")
CALIBRATION_ITERS = 40
START_S = 15.0


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", "train", *args]


def run_parallel(commands: dict[str, list[str]], logs: Path) -> dict[str, int]:
    """Run one command per task at once; their output goes to per-task log files."""
    procs = {}
    for task, cmd in commands.items():
        log = (logs / f"{task}.out").open("a")
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        procs[task] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return {task: proc.wait() for task, proc in procs.items()}


def measured_rate(workdir: Path) -> float:
    """The last logged iterations per second of a run (its own log.jsonl)."""
    rates = [r["it_s"] for r in map(json.loads, (workdir / "log.jsonl").read_text().splitlines())
             if r.get("it_s")]
    if not rates:
        raise RuntimeError(f"{workdir}: no it/s logged during calibration")
    return float(rates[-1])


def stage(name: str, base_args: dict[str, list[str]], budget_s: float, out: Path,
          logs: Path) -> dict[str, dict[str, float]]:
    """Calibrate, then resume each task's run with as many iterations as fit the budget."""
    start = time.perf_counter()
    calib = {t: train_cmd(*a, "--max-iters", "100000", "--session-iters", str(CALIBRATION_ITERS))
             for t, a in base_args.items()}
    codes = run_parallel(calib, logs)
    left = budget_s - (time.perf_counter() - start)
    plan: dict[str, dict[str, float]] = {}
    resume = {}
    for task, args in base_args.items():
        if codes[task] != 0:
            print(f"{name} {task}: calibration failed ({codes[task]})", flush=True)
            continue
        rate = measured_rate(out / f"{task}-{name}")
        # a resumed process spends START_S on imports, CUDA and data workers before iterating
        iters = CALIBRATION_ITERS + max(1, int(rate * (left - START_S) * 0.9))
        plan[task] = {"it_s": rate, "max_iters": iters}
        resume[task] = train_cmd(*args, "--resume", "--max-iters", str(iters),
                                 "--time-limit", f"{(left + 20) / 60:.2f}")
    print(f"{name}: {json.dumps(plan)}", flush=True)
    for task, code in run_parallel(resume, logs).items():
        plan[task]["exit"] = code
        export = train_cmd("export", "--workdir", str(out / f"{task}-{name}"),
                           "--output", str(out / f"{task}-{name}.safetensors"))
        plan[task]["export"] = subprocess.call(export)
    return plan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--clean", type=Path, required=True, help="clean pool (DIR/train, DIR/val)")
    p.add_argument("--models", type=Path, default=Path("models"), help="weights to start from")
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stage1-s", type=float, default=240)
    p.add_argument("--stage2-s", type=float, default=100)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="stage-1 patches per iteration")
    p.add_argument("--batch2", type=int, default=8, help="stage-2 patches per iteration")
    p.add_argument("--lr", default="2e-4,2e-5", help="peak LR of stage 1, stage 2")
    p.add_argument("--workers", type=int, default=4, help="data workers per task")
    p.add_argument("--val-count", type=int, default=8)
    p.add_argument("--model-args", default=None, metavar="ARGS",
                   help="train this config from scratch instead of fine-tuning the shipped "
                        "weights, e.g. \"--dim 16 --blocks 1,2,2,4 --d-state 8\"")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lr1, lr2 = args.lr.split(",")
    common = ["--clean", str(args.clean), "--device", args.device, "--workers", str(args.workers),
              "--patch-schedule", f"{args.patch}:0", "--val-every", "0", "--save-every", "1000000",
              "--val-count", str(args.val_count), "--no-progress", "--log-every", "10",
              "--min-lr", "1e-6"]

    def start(task: str) -> list[str]:
        if args.model_args:
            return args.model_args.split()
        return ["--init", str(args.models / f"{task}.safetensors")]

    s1 = {t: ["--workdir", str(args.out / f"{t}-s1"), "--task", t, "--stage", "1", *start(t),
              "--lr", lr1, "--warmup", "50", "--batch-schedule", f"{args.batch}:0", *common]
          for t in args.tasks}
    report = {"stage1": stage("s1", s1, args.stage1_s, args.out, args.out)}
    s2 = {t: ["--workdir", str(args.out / f"{t}-s2"), "--task", t, "--stage", "2",
              "--init", str(args.out / f"{t}-s1.safetensors"), "--lr", lr2,
              "--batch-schedule", f"{args.batch2}:0", *common]
          for t in args.tasks if (args.out / f"{t}-s1.safetensors").exists()}
    report["stage2"] = stage("s2", s2, args.stage2_s, args.out, args.out)
    (args.out / "plan.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
