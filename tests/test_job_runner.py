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


def test_jobs_whose_callbacks_read_only_the_hydra_node_get_it_without_a_whole_config(
    hydra_sweep_runner, tmp_path, monkeypatch
):
    """With sweeplr's own job hook alone (it reads the Hydra node only), no job's whole config
    is made, and every file the launch leaves is still the basic launcher's: the failed job's
    record, written by that hook from the Hydra node, included."""
    made: list[Any] = []
    full_config = JobTemplate.full_config

    def counted(self: JobTemplate, ops: Any) -> Any:
        made.append(ops)
        return full_config(self, ops)

    monkeypatch.setattr(JobTemplate, "full_config", counted)
    records = [
        "~hydra.callbacks.recorder",
        "+hydra.callbacks.records._target_=sweeplr.callbacks.JobRecordCallback",
    ]
    basic = sweep(hydra_sweep_runner, ["hydra/launcher=basic", *records], tmp_path / "basic")
    ours = sweep(hydra_sweep_runner, ["hydra/launcher=sweeplr_batch", *records], tmp_path / "batch")
    assert made == []
    expected, actual = files(tmp_path / "basic"), files(tmp_path / "batch")
    failed = [name for name in expected if name.endswith("metrics.json")]
    assert len(failed) == 1 and "fails on purpose" in expected[failed[0]]["error"]
    assert actual == expected
    assert [r.status for r in ours] == [r.status for r in basic]


@pytest.mark.parametrize(
    ("text", "outside"),
    [
        ("${hydra.job.num}", False),
        ("multirun/${now:%Y-%m-%d}/${hydra:runtime.choices.db}", False),
        ("${lr}", True),  # a task value
        ("${oc.env:HOME}", True),
        ("a/${hydra.job.name}_${optimizer.name}", True),
        ("plain text", False),
        ("${hydra_override_dirname:}", False),  # Hydra's default job.override_dirname
        ("${hydra_override_dirname:{element_resolver: mine}}", True),
    ],
)
def test_what_the_hydra_node_reads_outside_itself(text, outside):
    from sweeplr.plugins.job_template import refers_outside_hydra

    assert refers_outside_hydra({"sweep": {"subdir": text}, "list": [1, "x"]}) is outside
    assert refers_outside_hydra([{"deep": [text]}]) is outside


def test_which_job_hooks_may_read_task_values():
    from hydra._internal.callbacks import Callbacks
    from hydra.experimental.callback import Callback

    from sweeplr.callbacks import JobRecordCallback, SummaryCallback
    from sweeplr.plugins.job_runner import job_hooks_read_task_values

    class Reader(Callback):
        def on_job_start(self, config: Any, **kwargs: Any) -> None:
            pass

    def listing(*callbacks: Any) -> Callbacks:
        hooks = Callbacks()
        hooks.callbacks.extend(callbacks)
        return hooks

    assert not job_hooks_read_task_values(listing())
    assert not job_hooks_read_task_values(listing(JobRecordCallback(), SummaryCallback()))
    assert job_hooks_read_task_values(listing(JobRecordCallback(), Reader()))
    assert job_hooks_read_task_values(object())  # not Hydra's: assume it may


def test_a_hydra_node_interpolating_a_task_value_gets_the_whole_config(
    hydra_sweep_runner, tmp_path
):
    """``hydra.sweep.subdir=${db.driver}_${hydra.job.num}`` names each job's folder from its
    own task values, with sweeplr's hook alone too."""
    records = [
        "~hydra.callbacks.recorder",
        "+hydra.callbacks.records._target_=sweeplr.callbacks.JobRecordCallback",
        "hydra.sweep.subdir=${db.driver}_${hydra.job.num}",
    ]
    sweep(hydra_sweep_runner, ["hydra/launcher=sweeplr_batch", *records], tmp_path / "s")
    folders = sorted(p.name for p in (tmp_path / "s.kept").iterdir() if p.is_dir())
    assert folders == [f"{'mysql' if n < 4 else 'postgresql'}_{n}" for n in range(8)]


TRICKY = [
    *("17", "0", "007", "1_000", "0x1F", "0o17", "1e5", "1.5", "-1", "+1", ".inf", ".nan"),
    *("nan", "inf", "yes", "No", "on", "OFF", "y", "n", "null", "Null", "~", "true", "="),
    *("2026-12-03", "1:20", "12:30:45", "a=b", "seed=3", "hydra.mode=MULTIRUN", "+x=1"),
    *("/tmp/sweep/17", "multirun/2026-12-03/19-00-00", "a b", "a: b", "a #b", "-x", "- x"),
    *("'q'", '"q"', "x" * 120, "ünï", "", "a,b", "[1]", "{a: 1}", "*ref", "&a", "!tag", "%x"),
    *("@x", "`x", "|", ">", "a\nb", " lead", "trail ", "hydra/launcher=basic", "_x", "x.y"),
]


def test_yaml_spelt_without_pyyaml_is_pyyamls_own():
    """Every block the fast spelling writes is the dump's, byte for byte, over tricky values;
    and a job's usual fields are spelt fast (the point of it)."""
    import random

    import yaml

    from sweeplr.plugins import job_template
    from sweeplr.plugins.job_template import _simple_lines

    def slow(path: tuple[str, ...], key: Any, value: Any) -> str:
        tree: Any = {key: value}
        for name in reversed(path):
            tree = {name: tree}
        text = yaml.dump(
            tree,
            default_flow_style=False,
            allow_unicode=True,
            sort_keys=False,
            Dumper=job_template.get_omega_conf_dumper(),
        )
        for _ in path:
            text = text[text.index("\n") + 1 :]
        return text

    rng = random.Random(0)
    scalars = [*TRICKY, None, True, False, 0, 17, -3, 1.5, 1e-05]
    values: list[Any] = [*scalars, [], {}]
    for _ in range(400):
        values.append(rng.sample(scalars, rng.randint(1, 4)))
        values.append({str(rng.choice(TRICKY)): rng.choice(scalars) for _ in range(3)})
        values.append({"hydra": rng.sample(scalars, 2), "task": [rng.choice(TRICKY)]})
    fast = 0
    for value in values:
        for path, key in [((), "k"), (("hydra", "job"), "env_set"), (("a",), rng.choice(TRICKY))]:
            lines = _simple_lines(len(path), key, value)
            if lines is not None:
                fast += 1
                assert lines == slow(path, key, value), (path, key, value)
        if isinstance(value, list) and (lines := _simple_lines(0, None, value)) is not None:
            assert lines == yaml.dump(value, Dumper=job_template.get_omega_conf_dumper())
    assert fast > 100  # (most random mixes hold a value only PyYAML spells)
    usual = {"num": 17, "id": "17", "output_dir": "/tmp/multirun/2026-12-03/19-00-00/17"}
    assert all(_simple_lines(2, k, v) is not None for k, v in usual.items())
    overrides = {"hydra": ["hydra.mode=MULTIRUN"], "task": ["seed=17", "optimizer=adam"]}
    assert _simple_lines(1, "overrides", overrides) is not None


def test_sweeplrs_own_callbacks_need_no_whole_config_per_job():
    """Every job hook ``conf/config.yaml`` registers reads the Hydra node at most, so a sweep
    of train.py makes no second copy of each job's config (a new hook must say what it reads)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks

    from sweeplr.config import register_configs
    from sweeplr.plugins.job_runner import job_hooks_read_task_values

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        config = compose(config_name="config", return_hydra_config=True)
    with execution_whitelist(["sweeplr.*"]):
        hooks = Callbacks(config)
    assert len(hooks.callbacks) == len(config.hydra.callbacks) >= 4
    assert not job_hooks_read_task_values(hooks)


def test_a_jobs_hydra_node_alone_reads_the_time_the_sweep_resolved():
    """``hydra.sweep.dir`` interpolates ``${now:...}``, cached in the config's root: a job
    served the Hydra node alone reads the sweep's time, not a time of its own."""
    import time

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(APP.parent / "contract")):
        composed = compose(
            config_name="config",
            overrides=["hydra.sweep.dir=multirun/${now:%H-%M-%S-%f}"],
            return_hydra_config=True,
        )
    swept = OmegaConf.select(composed, "hydra.sweep.dir")  # as the sweeper resolved it
    time.sleep(0.01)
    template = JobTemplate(composed)
    assert template.select(template.hydra_only(), "hydra.sweep.dir") == swept
    assert OmegaConf.select(template.hydra_only(), "hydra.sweep.dir") == swept
