"""What train.py's command-line check (sweeplr/overrides.py) adds to every start, in-process.

Each measurement runs in a fresh interpreter that has imported what train.py imports, so the
first check pays what a real start pays: importing the module, building Hydra's argument parser
and warming up Hydra's override grammar (ANTLR's caches). Hydra parses the same overrides again
right after, as it does when it composes; its parse is timed too, with the check before it and
without, so the grammar's warm-up (paid once per process, by whoever parses first) is counted
where it belongs. Then the check again, warm, as a median of many. Times are the process's CPU
time (time.process_time), so other processes on a shared machine add little but noise.

    python bench/bench_overrides.py [--reps 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["--multirun", "optimizer=sgd,adam", "lr=0.1,0.01", "epochs=200", "dataset.n_samples=500"]

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
import hydra
from omegaconf import DictConfig
from sweeplr.config import register_configs
from sweeplr.experiment import run
argv, conf, with_check = {argv!r}, Path({root!r}) / "conf", {with_check!r}
out = {{}}
if with_check:
    t = time.process_time()
    from sweeplr.overrides import check_command_line
    out["import"] = time.process_time() - t
    t = time.process_time()
    check_command_line(conf, argv)
    out["check"] = time.process_time() - t
from hydra.core.override_parser.overrides_parser import OverridesParser
t = time.process_time()
OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
out["hydra_parse"] = time.process_time() - t
if with_check:
    warm = []
    for _ in range(200):
        t = time.process_time()
        check_command_line(conf, argv)
        warm.append(time.process_time() - t)
    out["warm"] = sorted(warm)[len(warm) // 2]
    out["warm_min"] = min(warm)
print(json.dumps(out))
"""


def child(with_check: bool) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), argv=ARGV, with_check=with_check)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.reps):  # interleaved: load on the machine hits both alike
        for with_check in (True, False):
            runs[with_check].append(child(with_check))

    def ms(variant: bool, key: str) -> float:
        return 1e3 * statistics.median(r[key] for r in runs[variant])

    added = ms(True, "import") + ms(True, "check") + ms(True, "hydra_parse")
    added -= ms(False, "hydra_parse")
    print(f"argv: {' '.join(ARGV)}  ({args.reps} fresh processes each, medians)")
    print(f"  import sweeplr.overrides        {ms(True, 'import'):7.2f} ms")
    print(f"  first check (cold)              {ms(True, 'check'):7.2f} ms")
    print(f"  Hydra's parse after it          {ms(True, 'hydra_parse'):7.2f} ms")
    print(f"  Hydra's parse without a check   {ms(False, 'hydra_parse'):7.2f} ms")
    print(f"  added to a start                {added:7.2f} ms")
    warm = 1e6 * statistics.median(r["warm"] for r in runs[True])
    fastest = 1e6 * min(r["warm_min"] for r in runs[True])
    print(f"  a warm check (median, fastest)  {warm:7.0f} us, {fastest:.0f} us")


if __name__ == "__main__":
    main()
