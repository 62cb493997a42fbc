"""Wall time of ``diffmamba --help``, ``--version`` and ``<command> --help``, end to end.

Each case runs the installed ``diffmamba`` entry point (the console script next to this
interpreter, else ``python -m service.cli``) N times in a fresh process and reports the median
and the spread: what a user waits for before any output. Commands whose parser needs torch
(their options list values defined in torch-importing modules) show here as the slow rows.

    python bench/cli_startup.py                   # default cases, 15 runs each
    python bench/cli_startup.py --runs 31 --json runs/bench/cli_startup.json
    python bench/cli_startup.py --case "restore --help" --case=--version
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_CASES = ("--help", "--version", "restore --help", "serve --help", "inspect --help",
                 "convert --help", "keys --help", "export --help", "data --help",
                 "train --help", "eval --help")
REPO = Path(__file__).resolve().parent.parent


def command() -> list[str]:
    script = Path(sys.executable).with_name("diffmamba")
    if script.is_file():
        return [str(script)]
    found = shutil.which("diffmamba")
    return [found] if found else [sys.executable, "-m", "service.cli"]


def time_case(base: list[str], case: str, runs: int) -> dict[str, object]:
    argv = base + case.split()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace')[-500:]}")
    return {"case": f"diffmamba {case}", "runs": runs, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per case (default 15)")
    parser.add_argument("--case", action="append", default=None,
                        help='arguments to time, e.g. "restore --help" (repeatable)')
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    base = command()
    subprocess.run([*base, "--version"], cwd=REPO, capture_output=True, check=True)  # warm cache
    rows = []
    print(f"{'case':<28} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs)")
    for case in args.case or DEFAULT_CASES:
        row = time_case(base, case, args.runs)
        rows.append(row)
        print(f"{row['case']:<28} {row['median_s']:>7.3f}s {row['min_s']:>7.3f}s "
              f"{row['max_s']:>7.3f}s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": base, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
