"""What a job costs under Hydra's job contract: Hydra's ``run_job`` against sweeplr's shared job
runner, and where Hydra's own cost goes (what the upstream patches in bench/README.md save).

    python bench/bench_job_runner.py [--jobs 1000] [--reps 3]

1. Whole processes, side by side: ``bench/floor_app.py`` (sweeplr's config, a task that trains
   nothing) swept over ``seed=range(0,N)`` with ``hydra.launcher.job_runner=hydra`` and
   ``=shared``, and over one seed; a job's cost is (N jobs - 1 job) / (N - 1), median of --reps
   interleaved runs.
2. In this process, the per-job steps of ``run_job`` on sweeplr's composed config, each timed
   alone (median of many calls): the two masked copies ``HydraConfig.set_config`` makes, the
   deep copies of the job's config and of its Hydra node, the Hydra node's YAML, the job's
   logging set-up; and two OmegaConf costs every job met: ``DictConfig.get`` of a missing key
   of a struct config, and an interpolation's grammar parsed at every read.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweeps import PY, ROOT, timed  # bench/ is not a package

FLOOR = str(ROOT / "bench" / "floor_app.py")


def per_job(args: argparse.Namespace) -> None:
    walls: dict[str, list[float]] = {}
    variants = {
        f"{runner} {jobs}": [
            PY,
            FLOOR,
            "--multirun",
            f"seed=range(0,{jobs})",
            f"hydra.launcher.job_runner={runner}",
            "plots=false",
        ]
        for runner in ("hydra", "shared")
        for jobs in (1, args.jobs)
    }
    for _ in range(args.reps):
        for name, cmd in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                wall, _, _ = timed(cmd, Path(tmp))
            walls.setdefault(name, []).append(wall)
    median = {name: statistics.median(values) for name, values in walls.items()}
    cost = {
        runner: (median[f"{runner} {args.jobs}"] - median[f"{runner} 1"]) / (args.jobs - 1)
        for runner in ("hydra", "shared")
    }
    print(
        f"per job, {args.jobs}-job grid of a task that trains nothing (whole processes, "
        f"medians of {args.reps}): run_job {cost['hydra'] * 1e3:.1f} ms, shared "
        f"{cost['shared'] * 1e3:.1f} ms -> {cost['hydra'] / cost['shared']:.1f}x less; whole "
        f"sweeps {median[f'hydra {args.jobs}']:.2f} s vs {median[f'shared {args.jobs}']:.2f} s",
        flush=True,
    )


def micro(label: str, call: Callable[[], object], calls: int = 200) -> float:
    call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    value = statistics.median(times) * 1e3
    print(f"  {label}: {value:.3f} ms", flush=True)
    return value


def hydra_steps() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import configure_log
    from omegaconf import OmegaConf, open_dict, read_write

    from sweeplr.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        config = compose(config_name="config", return_hydra_config=True)
    with open_dict(config.hydra):
        config.hydra.job.id, config.hydra.job.num = "0", 0
        config.hydra.runtime.output_dir = tempfile.mkdtemp()
    print("run_job's steps on sweeplr's composed config, each alone (median):")
    masked = micro(
        "HydraConfig.set_config: masked copy of the Hydra node",
        lambda: OmegaConf.masked_copy(config, "hydra"),
    )
    whole = micro(
        "deep copy of the job's config (then the Hydra node deleted)", lambda: copy.deepcopy(config)
    )
    hydra_cfg = OmegaConf.masked_copy(config, "hydra")
    node = micro(
        "deep copy of HydraConfig's copy (JobReturn.hydra_cfg)", lambda: copy.deepcopy(hydra_cfg)
    )
    yaml = micro("hydra.yaml: the Hydra node's YAML", lambda: OmegaConf.to_yaml(hydra_cfg), 50)

    def log_setup() -> None:
        configure_log(config.hydra.job_logging, False, execution_whitelist=["sweeplr.*"])

    logs = micro("the job's logging configured (hydra.job_logging)", log_setup, 50)
    logging.shutdown()
    total = 2 * masked + whole + node + yaml + logs
    print(f"  together {total:.1f} ms a job")
    print("OmegaConf costs a job met:")
    env_set = config.hydra.job.env_set
    micro("DictConfig.get of a missing key of a struct config", lambda: env_set.get("X"))
    micro(
        "the same asked with `in keys()` first",
        lambda: env_set.get("X") if "X" in env_set.keys() else None,  # noqa: SIM118
    )
    micro(
        "OmegaConf.select of an interpolated key (grammar parsed again)",
        lambda: OmegaConf.select(config, "hydra.sweep.subdir"),
    )

    def flag_change() -> None:
        with read_write(config.hydra):
            pass

    def small_flag_change() -> None:
        with read_write(config.hydra.job):
            pass

    micro("a flag lifted and restored on the Hydra node (read_write)", flag_change)
    micro("... on hydra.job only", small_flag_change)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-processes", action="store_true")
    args = parser.parse_args()
    hydra_steps()
    if not args.skip_processes:
        per_job(args)


if __name__ == "__main__":
    main()
