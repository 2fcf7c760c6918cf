"""sweeplr_batch's shared job runner keeps Hydra's job contract: side by side with Hydra's own.

The same mixed launch (group choices, values set, added and deleted, ``hydra.job.chdir``,
``env_set`` entries per job, a failing job, a callback recording what it receives, a task
reading ``HydraConfig.get()``) runs under Hydra's basic launcher and under ``sweeplr_batch``,
and every job's ``.hydra/*.yaml``, log file, what its task saw, what its callbacks received and
what it returned are compared, paths and times normalised.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobStatus
from hydra.utils import execution_whitelist
from omegaconf import OmegaConf

from sweeplr.plugins.job_template import JobTemplate, dump_yaml, nested_block
from tests.apps.contract_app import EnvSweeper, task
from tests.conftest import ROOT

APP = ROOT / "tests" / "apps" / "contract_app.py"
LAUNCH = [
    "hydra.sweeper._target_=tests.apps.contract_app.EnvSweeper",  # MY_VAR=u or v, per job
    "db=mysql,postgresql",
    "nested.value=1,2",
    "+new_key=a,b",
    "+nested.added=x",
    "~nested.drop=gone",  # (with its value: the basic sweeper passes a bare ~key as ~key=null)
    "~to_delete=1",
    "hydra.job.chdir=true",
]
TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+")
# What differs because the launchers differ: the launcher's node, its choice and overrides.
LAUNCHER = [
    (re.compile(r"^( *)launcher:\n(?:\1  .*\n)+", re.MULTILINE), r"\1launcher: <launcher>\n"),
    (re.compile(r"^ *- hydra\.launcher\..*\n", re.MULTILINE), ""),
    (re.compile(r"hydra/launcher([=:] ?)\S+"), r"hydra/launcher\1<launcher>"),
    # the frame that called the task, in a failed job's traceback in its log
    (
        re.compile(
            r'File "\S+(?:hydra/core/utils|sweeplr/plugins/job_runner)\.py", line \d+, in \w+'
        ),
        "<the job runner's frame>",
    ),
]


@pytest.fixture(autouse=True)
def env_sweeper(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's sweeper, known to Hydra as an installed plugin would be."""
    from hydra.core.plugins import Plugins

    name = f"{EnvSweeper.__module__}.{EnvSweeper.__name__}"
    monkeypatch.setitem(Plugins.instance().class_name_to_class, name, EnvSweeper)


def sweep(hydra_sweep_runner: Any, launcher: list[str], sweep_dir: Path) -> list[Any]:
    """Run the contract app's launch in this process into ``sweep_dir``; its job returns."""
    runner = hydra_sweep_runner(
        calling_file=str(APP),
        calling_module=None,
        task_function=task,
        config_path="contract",
        config_name="config",
        overrides=[*launcher, "hydra.mode=MULTIRUN", *LAUNCH],
        temp_dir=sweep_dir,
    )
    # The sweep raises the failed job's error after every job ran, as Hydra's sweeper does.
    with (
        execution_whitelist(["tests.*", "sweeplr.*"]),
        pytest.raises(ValueError, match="fails on purpose"),
        runner,
    ):
        pass
    shutil.copytree(sweep_dir, sweep_dir.with_name(sweep_dir.name + ".kept"))
    return list(EnvSweeper.returns)


def masked(text: str, sweep_dir: Path) -> str:
    """``text`` with the sweep's path, times and the launcher's own settings masked."""
    text = TIME.sub("<time>", text.replace(str(sweep_dir), "<sweep>"))
    for pattern, mask in LAUNCHER:
        text = pattern.sub(mask, text)
    return text


def files(sweep_dir: Path) -> dict[str, Any]:
    """Every file the launch into ``sweep_dir`` left (kept in a copy beside it), by path inside
    the sweep, masked (JSON: every string in it)."""
    kept = sweep_dir.with_name(sweep_dir.name + ".kept")

    def mask_strings(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: mask_strings(item) for key, item in value.items()}
        if isinstance(value, list):
            return [mask_strings(item) for item in value]
        return masked(value, sweep_dir) if isinstance(value, str) else value

    found: dict[str, Any] = {}
    for path in sorted(kept.rglob("*")):
        name = str(path.relative_to(kept))
        if path.suffix == ".json":
            found[name] = mask_strings(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            found[name] = [mask_strings(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.is_file() and path.name != "multirun.yaml":
            found[name] = masked(path.read_text(), sweep_dir)
    return found


@pytest.mark.parametrize(
    ("job_runner", "extra"),
    [
        ("shared", []),
        ("hydra", []),
        # an env_set entry that interpolates: run_job resolves it in HydraConfig's copy only
        ("shared", ["++hydra.job.env_set.JOB=${hydra.job.num}"]),
    ],
)
def test_every_job_sees_and_leaves_what_the_basic_launcher_gives(
    hydra_sweep_runner, tmp_path, job_runner, extra
):
    basic = sweep(hydra_sweep_runner, ["hydra/launcher=basic", *extra], tmp_path / "basic")
    ours = sweep(
        hydra_sweep_runner,
        ["hydra/launcher=sweeplr_batch", f"hydra.launcher.job_runner={job_runner}", *extra],
        tmp_path / "batch",
    )
    expected = files(tmp_path / "basic")
    actual = files(tmp_path / "batch")
    assert len([name for name in expected if name.endswith("hydra.yaml")]) == 8
    assert sorted(actual) == sorted(expected)
    for name, text in expected.items():
        assert actual[name] == text, name
    # What the jobs returned, as a sweeper sees it.
    assert [r.status for r in ours] == [r.status for r in basic]
    assert sum(r.status == JobStatus.FAILED for r in ours) == 1
    for mine, theirs in zip(ours, basic, strict=True):
        assert mine.overrides == theirs.overrides
        assert mine.cfg == theirs.cfg
        assert mine.task_name == theirs.task_name
        assert masked(mine.working_dir, tmp_path / "batch") == masked(
            theirs.working_dir, tmp_path / "basic"
        )
        assert masked(OmegaConf.to_yaml(mine.hydra_cfg), tmp_path / "batch") == masked(
            OmegaConf.to_yaml(theirs.hydra_cfg), tmp_path / "basic"
        )
        if theirs.status == JobStatus.COMPLETED:
            assert mine.return_value == theirs.return_value
        else:
            assert repr(mine._return_value) == repr(theirs._return_value)


def test_the_launch_did_what_it_says(hydra_sweep_runner, tmp_path):
    """The side-by-side test compares like with like: the launch is as mixed as it claims."""
    sweep(hydra_sweep_runner, ["hydra/launcher=sweeplr_batch"], tmp_path / "s")
    kept = tmp_path / "s.kept"
    seen = [json.loads(p.read_text()) for p in sorted(kept.glob("*/seen.json"))]
    assert len(seen) == 8
    assert {s["env"]["MY_VAR"] for s in seen} == {"u", "v"}
    assert {s["env"]["FIXED"] for s in seen} == {"1"}
    assert all(Path(s["cwd"]).name == str(s["num"]) for s in seen)  # hydra.job.chdir
    assert {s["from_db"] for s in seen} == {3306, 5432}
    config = seen[0]["config"]
    assert "new_key: a" in config and "added: x" in config
    assert {s["config"].count("new_key: b") for s in seen} == {0, 1}
    assert "drop:" not in config and "to_delete" not in config
    logs = [p.read_text() for p in sorted(kept.glob("*/contract_app.log"))]
    assert len(logs) == 8 and all("with" in text for text in logs)
    assert sum("fails on purpose" in text for text in logs) == 1
    hooks = [
        json.loads(line)["hook"] for line in (kept / "callbacks.jsonl").read_text().splitlines()
    ]
    assert hooks == ["on_job_start", "on_job_end"] * 8


def test_a_job_return_pickles_with_its_hydra_config(hydra_sweep_runner, tmp_path):
    (first, *_) = sweep(hydra_sweep_runner, ["hydra/launcher=sweeplr_batch"], tmp_path / "s")
    again = pickle.loads(pickle.dumps(first))
    assert again.hydra_cfg == first.hydra_cfg
    assert again.hydra_cfg.hydra.job.num == 0
    assert again.return_value == first.return_value


@pytest.mark.parametrize(
    "data",
    [
        {"a": 1, "b": {"c": [1, 2], "d": "x" * 120 + " y" * 40}, "e": {}},
        {"help": {"template": "line one\n  line two\n" * 5, "app_name": "${hydra.job.name}"}},
        {"empty": [], "nothing": None, "yes": True, "quoted": "yes", "missing": "???"},
    ],
)
def test_yaml_blocks_join_into_the_whole_dump(data):
    """A mapping's YAML is its entries' blocks, each rendered at its depth."""
    whole = dump_yaml({"hydra": data})
    blocks = "hydra:\n" + "".join(
        nested_block(("hydra",), key, value) for key, value in data.items()
    )
    assert blocks == whole


def test_a_template_owns_its_hydra_node_and_a_job_config_shares_it():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(APP.parent / "contract")):
        composed = compose(config_name="config", return_hydra_config=True)
    hydra_node = composed.hydra
    template = JobTemplate(composed)
    first, second = template.full_config([]), template.full_config([])
    assert first is not second and first.hydra is hydra_node and second.hydra is hydra_node
    assert next(iter(first.keys())) == "hydra"
    assert OmegaConf.to_yaml(template.task_config([])) == "".join(template.task_blocks.values())


def test_the_job_logging_is_configured_once_and_repointed(
    hydra_sweep_runner, tmp_path, monkeypatch
):
    """Hydra configures the logging for the first job; the next jobs' log files come from the
    same handlers pointed at them (the side-by-side test shows the files are the same)."""
    from sweeplr.plugins import job_runner

    calls: list[Any] = []
    configure = job_runner.configure_log

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        configure(*args, **kwargs)

    monkeypatch.setattr(job_runner, "configure_log", counted)
    sweep(hydra_sweep_runner, ["hydra/launcher=sweeplr_batch"], tmp_path / "s")
    assert len(calls) == 1
    logs = sorted((tmp_path / "s.kept").glob("*/contract_app.log"))
    assert [p.read_text().count("[INFO] - job ") for p in logs] == [1] * 8


def test_a_sweeper_reads_a_jobs_folder_and_number_without_making_its_hydra_config(
    hydra_sweep_runner, tmp_path
):
    from sweeplr.plugins.job_runner import _JobReturn, hydra_field

    returns = sweep(hydra_sweep_runner, ["hydra/launcher=sweeplr_batch"], tmp_path / "s")
    ret = returns[3]  # (its hydra_cfg is made: the app's recorder reads it)
    assert hydra_field(ret, "runtime.output_dir") == ret.hydra_cfg.hydra.runtime.output_dir
    assert hydra_field(ret, "job.num") == ret.hydra_cfg.hydra.job.num == 3
    assert hydra_field(ret, "job.id") == ret.hydra_cfg.hydra.job.id == "3"

    def never() -> Any:
        raise AssertionError("hydra_cfg was made")

    unmade = _JobReturn(never, {"job.num": 5, "runtime.output_dir": "/x/5"})
    assert (hydra_field(unmade, "job.num"), hydra_field(unmade, "runtime.output_dir")) == (
        5,
        "/x/5",
    )
