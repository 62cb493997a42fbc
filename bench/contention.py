"""How a CPU restore degrades when it does not have the machine to itself.

Each case runs in a fresh process (OpenMP reads its environment once, at start-up) that restores
a small image REPEAT times with ``service.diffusion.restore`` and reports the median wall time
and the CPU time per restore:

* ``alone``: nothing else running;
* ``busy``: one competing process spinning on a core for the whole measurement, default
  threads (the budget, lowered per pass by ``service.thread_governor`` while others use the
  cores);
* ``busy_fixed``: the same with ``DIFFMAMBA_THREADS`` set to the budget, which turns the
  governor off (the behaviour without it);
* ``taskset1``: the process pinned to one core (``taskset -c 0``) with no thread setting,
  so the pool size must come from the affinity mask;
* ``quota1``: a cgroup CPU quota of one CPU (cgroup v1 or v2, needs root; skipped otherwise),
  again with no thread setting;
* ``threads1``: ``DIFFMAMBA_THREADS=1``, the reference the two previous cases must match;
* ``busy_threads1``: one thread while the competing process runs (what the governor should
  match).

Each pass goes through ``service.restoration.restore_image``, the path of ``diffmamba restore``.
The table's "used" column is the set of thread counts the timed passes ran with.

``--wait spin`` repeats alone/busy with the OpenMP runtime's own default waiting
(``OMP_WAIT_POLICY`` set empty, i.e. the spin-then-sleep behaviour of an unconfigured libgomp) to
show what passive waiting buys.

    python bench/contention.py --checkpoint models/denoise-diffmamba.safetensors --size 64 \\
        --repeat 10
    python bench/contention.py --wait both --json runs/bench/contention.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKER = r"""
import json, resource, statistics, sys, time
import torch
from service import thread_governor
from service.models.loader import load_checkpoint
from service.restoration import restore_image
from service.threads import apply_threads

checkpoint, size, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
threads = apply_threads()
loaded = load_checkpoint(checkpoint, device="cpu")
image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
governor = thread_governor.installed()
used = []
def on_round(i, n):
    used.append(torch.get_num_threads())
for _ in range(2):
    restore_image(loaded.model, loaded.kind, image, steps=4, seed=0)
walls, cpus = [], []
for _ in range(repeat):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    restore_image(loaded.model, loaded.kind, image, steps=4, seed=0, on_round=on_round)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    walls.append(t1 - t0)
    cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
print(json.dumps({"threads": threads, "governed": governor is not None,
                  "threads_used": sorted(set(used)), "wall_median": statistics.median(walls),
                  "wall_max": max(walls), "cpu_median": statistics.median(cpus)}))
"""

SPINNER = """
import sys, time
end = time.time() + float(sys.argv[1])
while time.time() < end:
    pass
"""


def _quota_cgroup(cpus: float) -> tuple[Path, Path] | None:
    """A cgroup limited to ``cpus`` CPUs: (its procs file, its folder), or None if impossible."""
    name = f"diffmamba-bench-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    try:
        if v2.exists() and "cpu" in v2.read_text().split():
            folder = Path("/sys/fs/cgroup") / name
            folder.mkdir()
            (folder / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
            return folder / "cgroup.procs", folder
        v1 = Path("/sys/fs/cgroup/cpu")
        if v1.is_dir():
            folder = v1 / name
            folder.mkdir()
            (folder / "cpu.cfs_period_us").write_text("100000")
            (folder / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
            return folder / "cgroup.procs", folder
    except OSError:
        return None
    return None


def run_case(name: str, args: argparse.Namespace, env: dict[str, str], prefix: list[str],
             cgroup_procs: Path | None = None, busy: bool = False) -> dict[str, Any]:
    cmd = [*prefix, sys.executable, "-c", WORKER, str(args.checkpoint), str(args.size),
           str(args.repeat)]
    spinner = None
    if busy:
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER, "600"])
        time.sleep(0.5)
    try:
        if cgroup_procs is not None:
            # Join the cgroup before exec, so the worker starts (and sizes its pools) inside.
            cmd = ["sh", "-c", f'echo $$ > "{cgroup_procs}" && exec "$@"', "sh", *cmd]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"case": name, **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/denoise-diffmamba.safetensors"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--wait", choices=("passive", "spin", "both"), default="both")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "DIFFMAMBA_THREADS",
                         "OMP_WAIT_POLICY")}
    waits = ["passive", "spin"] if args.wait == "both" else [args.wait]
    rows = []
    for wait in waits:
        env = dict(base)
        if wait == "spin":
            env["OMP_WAIT_POLICY"] = ""  # present but empty: the runtime's own default
        rows.append({**run_case("alone", args, env, []), "wait": wait})
        rows.append({**run_case("busy", args, env, [], busy=True), "wait": wait})
    env = dict(base)
    budget = rows[0]["threads"]
    rows.append({**run_case("busy_fixed", args, {**env, "DIFFMAMBA_THREADS": str(budget)}, [],
                            busy=True), "wait": "passive"})
    rows.append({**run_case("threads1", args, {**env, "DIFFMAMBA_THREADS": "1"}, []),
                 "wait": "passive"})
    rows.append({**run_case("busy_threads1", args, {**env, "DIFFMAMBA_THREADS": "1"}, [],
                            busy=True), "wait": "passive"})
    if shutil.which("taskset"):
        rows.append({**run_case("taskset1", args, env, ["taskset", "-c", "0"]), "wait": "passive"})
    quota = _quota_cgroup(1.0)
    if quota is not None:
        procs, folder = quota
        try:
            rows.append({**run_case("quota1", args, env, [], cgroup_procs=procs),
                         "wait": "passive"})
        finally:
            for _ in range(20):
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    alone = {r["wait"]: r["wall_median"] for r in rows if r["case"] == "alone"}
    print(f"{args.checkpoint.name}, {args.size}², 4 steps, median of {args.repeat}; "
          f"{os.cpu_count()} CPUs")
    print("| case | wait | threads | used | wall (s) | worst (s) | CPU (s) | vs alone |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ref = alone.get(r["wait"]) or alone.get("passive")
        ratio = r["wall_median"] / ref if ref else float("nan")
        used = ",".join(str(n) for n in r["threads_used"])
        print(f"| {r['case']} | {r['wait']} | {r['threads']} | {used} | {r['wall_median']:.3f} | "
              f"{r['wall_max']:.3f} | {r['cpu_median']:.3f} | {ratio:.2f}× |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "size": args.size,
                                         "repeat": args.repeat, "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
