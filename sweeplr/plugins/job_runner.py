"""Hydra's job contract for a launch's many jobs, at a fraction of ``run_job``'s cost per job.

``hydra.core.utils.run_job`` makes every job self-contained by copying: two masked copies of the
Hydra node (``HydraConfig.set_config``), a deep copy of the job's config and one of its Hydra
node, three YAML files rendered from scratch, the job's logging configured anew. That costs
more than training a small configuration, and is nearly all of a large grid's time
(bench/README.md, "Timings the code refers to"). :func:`run_shared_job` gives each job what ``run_job`` gives
-- its own task config and ``JobReturn``, ``HydraConfig.get()`` with the job's own fields while
it runs, the same ``.hydra/*.yaml`` bytes, its log file, ``hydra.job.chdir``, ``env_set``, the
callbacks called in the same order with the same arguments -- and shares what does not change
between two jobs of a launch:

- jobs composed from the same overrides but for task values and ``hydra.job.env_set`` entries
  share a :class:`JobTemplate`: one Hydra node, whose job fields (``job.id``, ``job.num``,
  ``job.env_set``, ``overrides``, ``runtime.output_dir``) are set for each job before it runs;
  the job's configs are unpickled from the template (a third of a deep copy's time) and get the
  job's value overrides applied as composition applies them (:mod:`batch_launcher`);
- the YAML of what does not vary is rendered once per template, block by block, and a job's
  files are those blocks with its own (a YAML mapping's entries are emitted independently);
- the logging Hydra configures for a job is kept for the next one when the next one's
  configuration differs only in its log file's name: the file handlers are pointed at the new
  file instead (anything else, or anything a task changed in the logging, configures anew);
- ``JobReturn.hydra_cfg`` is built when it is first read, by ``run_job``'s own steps.

``hydra.launcher.job_runner=hydra`` runs every job through Hydra's ``run_job`` instead; the tests
run both side by side and compare every job's files, callback arguments and returns. Hydra's
private helpers used here (``_flush_loggers``, ``_log_job_error_to_file``, the traceback
serialisers, the job-return hand-off) are those ``_run_job`` calls; hydra-core is pinned.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _log_job_error_to_file,
    _serialize_exception_chain,
    _serialize_exception_group,
    _serialize_traceback,
    _set_job_return_handoff,
    configure_log,
    env_override,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.nodes import IntegerNode, StringNode

from sweeplr.plugins.job_template import LOG_INTERPOLATION, JobTemplate, Op, dump_yaml, plain


class SharedJob:
    """One job of a launch: its template, its value overrides, its job fields."""

    def __init__(
        self,
        idx: int,
        template: JobTemplate,
        *,
        task_ops: Sequence[Op],
        env_ops: Sequence[Op],
        task_overrides: list[str],
        hydra_overrides: list[str],
        touched: set[str],
        env: dict[str, Any],
        exact: bool,
    ) -> None:
        self.idx = idx
        self.template = template
        self.task_ops = task_ops
        self.env_ops = env_ops
        self.task_overrides = task_overrides  # `hydra.overrides.task`, as composition records
        self.hydra_overrides = hydra_overrides  # `hydra.overrides.hydra`
        self.touched = touched  # the top-level task keys the job's values set
        self.env = env  # its `hydra.job.env_set`, unresolved (the trial a job runs, say)
        self.exact = exact  # False: only Hydra's run_job gives this job its contract
        self._task_cfg: DictConfig | None = None

    @property
    def task_config(self) -> DictConfig:
        """The config the job's task function receives (made once, when first asked)."""
        if self._task_cfg is None:
            self._task_cfg = self.template.task_config(self.task_ops)
        return self._task_cfg

    def set_fields(
        self, hydra: DictConfig, root: DictConfig, held: dict[str, Any] | None = None
    ) -> None:
        """Give the Hydra node ``hydra`` (inside ``root``) this job's fields, as composition and
        the launcher set them. ``held``: what the shared node holds already (its record, kept
        up to date here), so that what is equal is not set again and the rest is written
        straight into the nodes that hold it."""
        if held is not None and self._write_held_fields(hydra, held):
            return
        held = {} if held is None else held
        # Flags are lifted on the small nodes written, not on the whole Hydra node: a flag change
        # makes every node below re-read its flags.
        overrides, job = hydra.overrides, hydra.job
        with read_write(overrides), open_dict(overrides):
            for name, value in (("hydra", self.hydra_overrides), ("task", self.task_overrides)):
                if held.get(name) != value:
                    overrides[name] = held[name] = value
        with read_write(job), open_dict(job):
            if self.env_ops or held.get("env") is not None or "env" not in held:
                job.env_set = self.template.base_env
                for op in self.env_ops:
                    op(root)
                held["env"] = self.idx if self.env_ops else None
            job.id = str(self.idx)
            job.num = self.idx

    def _write_held_fields(self, hydra: DictConfig, held: dict[str, Any]) -> bool:
        """The job fields of the shared node written into its nodes, when that is all it takes:
        its env_set already holds the job's (the template's), and each field is a node of the
        value's own type, or a list of as many strings. OmegaConf's assignment checks flags,
        types and keys at every level, slowly (bench/README.md); here the values are the types the
        nodes hold, and the node stays read-only for the task. False: nothing written."""
        if self.env_ops or held.get("env", False) is not None:
            return False
        plan = [
            (hydra.job._get_node("id"), str(self.idx)),
            (hydra.job._get_node("num"), self.idx),
        ]
        for name, values in (("hydra", self.hydra_overrides), ("task", self.task_overrides)):
            if held.get(name) == values:
                continue
            strings = hydra.overrides._get_node(name)
            nodes = strings.__dict__["_content"] if isinstance(strings, ListConfig) else None
            if not isinstance(nodes, list) or len(nodes) != len(values):
                return False
            plan += zip(nodes, values, strict=True)
        if not all(_holds_type_of(node, value) for node, value in plan):
            return False
        for node, value in plan:
            node.__dict__["_val"] = value
        held["hydra"], held["task"] = self.hydra_overrides, self.task_overrides
        return True

    def whole_config(self) -> DictConfig:
        """The job's config as Hydra composes it for the basic launcher: a copy of its own."""
        config = pickle.loads(self.template.snapshot_bytes)
        for op in self.task_ops:
            op(config)
        self.set_fields(config.hydra, config)
        return config


def job_hooks_read_task_values(callbacks: Any) -> bool:
    """Whether a callback's ``on_job_start``/``on_job_end`` may read the job's task values from
    the config it gets: one that overrides a job hook and does not declare that it reads the
    Hydra node only (``job_hooks_read = "hydra"``, as sweeplr's `JobRecordCallback`)."""
    from hydra.experimental.callback import Callback

    listed = getattr(callbacks, "callbacks", None)
    if not isinstance(listed, list):
        return True  # not Hydra's Callbacks: nothing known of what it reads
    return any(
        getattr(type(callback), hook, None) is not getattr(Callback, hook)
        and getattr(callback, "job_hooks_read", None) != "hydra"
        for callback in listed
        for hook in ("on_job_start", "on_job_end")
    )


def interpolates(values: Mapping[str, Any]) -> bool:
    """Whether any of ``values`` is written with an interpolation."""
    return any("${" in str(value) for value in values.values())


def _holds_type_of(node: Any, value: Any) -> bool:
    """Whether ``node`` is the OmegaConf node that holds ``value`` as it is (a string node and a
    str, an integer node and an int)."""
    return (type(node) is StringNode and type(value) is str) or (
        type(node) is IntegerNode and type(value) is int
    )


class _JobReturn(JobReturn):
    """A ``JobReturn`` whose ``hydra_cfg`` is made when first read (``run_job`` makes it for
    every job, a deep copy of the Hydra node, and sweepers seldom read it)."""

    def __init__(
        self, make_hydra_cfg: Callable[[], DictConfig], known: dict[str, Any] | None = None
    ) -> None:
        self._make_hydra_cfg: Callable[[], DictConfig] | None = make_hydra_cfg
        self.known = known or {}  # fields of hydra_cfg.hydra by path, known without making it
        super().__init__()

    @property
    def hydra_cfg(self) -> DictConfig | None:
        if self._make_hydra_cfg is not None:
            self.__dict__["_hydra_cfg"], self._make_hydra_cfg = self._make_hydra_cfg(), None
        return self.__dict__.get("_hydra_cfg")

    @hydra_cfg.setter
    def hydra_cfg(self, value: DictConfig | None) -> None:
        if value is not None:
            self._make_hydra_cfg = None
        self.__dict__["_hydra_cfg"] = value

    def __getstate__(self) -> dict[str, Any]:
        self.hydra_cfg  # noqa: B018 - made now: a pickle carries values, not a recipe
        state = super().__getstate__()
        state.pop("_make_hydra_cfg", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._make_hydra_cfg = None


def hydra_field(ret: JobReturn, path: str) -> Any:
    """``ret.hydra_cfg.hydra`` at ``path`` (``job.num``, ``runtime.output_dir``), read without
    making a shared job's ``hydra_cfg`` where the runner kept the value; None without one."""
    known = getattr(ret, "known", {})
    if path in known:
        return known[path]
    return None if ret.hydra_cfg is None else OmegaConf.select(ret.hydra_cfg.hydra, path)


def hydra_cfg_of(job: SharedJob, job_dir_key: str, job_subdir_key: str | None) -> DictConfig:
    """``JobReturn.hydra_cfg`` of ``job``, by ``run_job``'s steps on a copy of its config."""
    config = job.whole_config()
    output_dir = job_output_dir(config, job_dir_key, job_subdir_key)
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    OmegaConf.set_readonly(config.hydra, True)
    hydra_cfg = OmegaConf.masked_copy(config, "hydra")
    hydra_cfg.hydra._set_parent(config)
    env_set = hydra_cfg.hydra.job.env_set
    with read_write(env_set):
        OmegaConf.resolve(env_set)
    return copy.deepcopy(hydra_cfg)


def job_output_dir(
    config: DictConfig,
    job_dir_key: str,
    job_subdir_key: str | None,
    select: Callable[[DictConfig, str], Any] = OmegaConf.select,
) -> str:
    """``run_job``'s output folder of a job."""
    output_dir = str(select(config, job_dir_key))
    if job_subdir_key is not None:
        output_dir = os.path.join(output_dir, str(select(config, job_subdir_key)))
    return output_dir


class JobLogs:
    """The job logging of a launch: configured by Hydra for a job, re-pointed for the next.

    Hydra configures a job's logging from ``hydra.job_logging`` (``logging.config.dictConfig``)
    before each job. When the next job's configuration is the same but for the log file's name,
    and nothing changed the logging since (handlers, levels, loggers named in it), the result of
    configuring anew is those same handlers writing to the new file: so they are pointed at it.
    """

    def __init__(self) -> None:
        self._rest: dict[str, Any] | None = None  # the last configuration applied, files aside
        self._state: tuple[Any, ...] | None = None  # the logging state right after

    def forget(self) -> None:
        """Someone else configured the logging since: the next job configures it anew."""
        self._rest = self._state = None

    def configure(self, config: DictConfig, template: JobTemplate, hydra_context: Any) -> None:
        hydra = config.hydra
        rest, files = template.log_parts, self._files(template, hydra)
        if rest is not None and files is not None and self._can_repoint(rest, files):
            self._repoint(files)
        else:
            configure_log(
                hydra.job_logging,
                hydra.verbose,
                execution_whitelist=hydra_context.execution_whitelist,
            )
            self._rest = rest if files is not None else None
        self._state = self._snapshot() if self._rest is not None else None

    @staticmethod
    def _files(template: JobTemplate, hydra: DictConfig) -> dict[str, str] | None:
        """The job's log files by handler name, as Hydra resolves them; None: not known so."""
        if template.log_parts is None:
            return None
        output_dir, name = hydra.runtime.output_dir, template.hydra_plain["job"]["name"]
        values = {"runtime.output_dir": output_dir, "job.name": name}
        return {
            handler: LOG_INTERPOLATION.sub(lambda m: str(values[m[1]]), raw)
            for handler, raw in template.log_files.items()
        }

    def _can_repoint(self, rest: dict[str, Any], files: dict[str, str]) -> bool:
        if self._rest is None or self._state is None or self._snapshot() != self._state:
            return False
        return (rest is self._rest or rest == self._rest) and all(
            type(logging._handlers.get(name)) is logging.FileHandler  # type: ignore[attr-defined]
            for name in files
        )

    def _repoint(self, files: dict[str, str]) -> None:
        for name, filename in files.items():
            handler = logging._handlers[name]  # type: ignore[attr-defined]
            handler.acquire()
            try:
                # The stream only: Handler.close() would also unregister the handler.
                if handler.stream is not None:
                    # A file that cannot take the rest (a full disk) is let go, as logging's
                    # own shutdown lets it go when Hydra configures the logging anew.
                    with suppress(OSError, ValueError):
                        handler.flush()
                    with suppress(OSError, ValueError):
                        handler.stream.close()  # closes the file whatever its flush says
                    handler.stream = None
                handler.baseFilename = os.path.abspath(os.fspath(filename))
                if not handler.delay:
                    handler.stream = handler._open()
            finally:
                handler.release()

    def _snapshot(self) -> tuple[Any, ...]:
        """What configuring anew would reset: the handlers that exist, and the levels, handlers
        and propagation of the root logger and the loggers the configuration names."""
        assert self._rest is not None
        loggers = [logging.getLogger()] + [
            logging.getLogger(name) for name in self._rest.get("loggers", {})
        ]
        return (
            tuple(ref() for ref in logging._handlerList),  # type: ignore[attr-defined]
            tuple((lg.level, tuple(lg.handlers), lg.propagate, lg.disabled) for lg in loggers),
        )


@contextmanager
def _whitelist(hydra_context: HydraContext) -> Iterator[None]:
    from hydra._internal.execution_policy import execution_whitelist

    with execution_whitelist(hydra_context.execution_whitelist, reset=True):
        yield


def run_shared_job(
    job: SharedJob,
    task_function: TaskFunction,
    hydra_context: HydraContext,
    logs: JobLogs,
    job_dir_key: str = "hydra.sweep.dir",
    job_subdir_key: str | None = "hydra.sweep.subdir",
) -> JobReturn:
    """Run ``job`` as ``hydra.core.utils.run_job`` does (module docstring: what is shared)."""
    with _whitelist(hydra_context):
        return _run_shared_job(job, task_function, hydra_context, logs, job_dir_key, job_subdir_key)


def _run_shared_job(  # run_job's own steps, in run_job's order
    job: SharedJob,
    task_function: TaskFunction,
    hydra_context: HydraContext,
    logs: JobLogs,
    job_dir_key: str,
    job_subdir_key: str | None,
) -> JobReturn:
    template = job.template
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    task_values_read = job_hooks_read_task_values(callbacks)
    if template.whole_config_needed(
        [*job.task_overrides, *job.hydra_overrides], job.env, task_values_read
    ):
        config = template.full_config(job.task_ops)
    else:  # nothing reads the job's task values through it: no second copy of them
        config = template.hydra_only()
    hydra = template.hydra
    job.set_fields(hydra, config, template.held)
    if hydra._get_node_flag("readonly") is not True:  # as set_config; once: it stays so
        OmegaConf.set_readonly(hydra, True)
    HydraConfig.instance().cfg = template.hydra_root  # type: ignore[assignment]
    output_dir = job_output_dir(config, job_dir_key, job_subdir_key, template.select)
    runtime = hydra.runtime
    target = runtime._get_node("output_dir")
    if _holds_type_of(target, output_dir):  # (as the job fields: straight into its node)
        target.__dict__["_val"] = os.path.abspath(output_dir)
    else:
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = os.path.abspath(output_dir)
    output_dir_abs = os.path.abspath(output_dir)
    _chdir = None
    try:
        ret = _JobReturn(
            lambda: hydra_cfg_of(job, job_dir_key, job_subdir_key),
            {"job.num": job.idx, "job.id": str(job.idx), "runtime.output_dir": output_dir_abs},
        )
        task_cfg = job.task_config
        ret.cfg = task_cfg
        env_set = hydra.job.env_set
        if job.env_ops or interpolates(template.base_env):  # else resolving changes nothing
            with read_write(env_set):
                OmegaConf.resolve(env_set)
        ret.overrides = list(job.task_overrides)
        Path(str(output_dir)).mkdir(parents=True, exist_ok=True)
        _chdir = template.constant("job.chdir")
        if _chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        logs.configure(config, template, hydra_context)
        output_subdir = template.constant("output_subdir")
        if output_subdir is not None:
            env = plain(env_set) if job.env_ops else template.base_env
            _save_files(job, task_cfg, output_dir_abs, env, Path(output_dir_abs) / output_subdir)
        ret.task_name = JobRuntime.instance().get("name")
        _call_task(ret, config, task_cfg, task_function, callbacks, env_set)
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)


def _save_files(
    job: SharedJob, task_cfg: DictConfig, output_dir: str, env: dict[str, Any], folder: Path
) -> None:
    """``run_job``'s ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, byte for byte."""
    fields: dict[str, dict[str, Any]] = {
        "job": {"id": str(job.idx), "num": job.idx, "env_set": env},
        "runtime": {"output_dir": output_dir},
        "overrides": {"hydra": job.hydra_overrides, "task": job.task_overrides},
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("config.yaml", job.template.task_yaml(task_cfg, job.touched)),
        ("hydra.yaml", job.template.hydra_yaml(fields)),
        ("overrides.yaml", dump_yaml(list(job.task_overrides))),
    ):
        # What run_job's open(..., "w", encoding="utf-8") writes, without a text stream's set-up.
        data = memoryview(text.replace("\n", os.linesep).encode("utf-8"))
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)


def _call_task(
    ret: JobReturn,
    config: DictConfig,
    task_cfg: DictConfig,
    task_function: TaskFunction,
    callbacks: Any,
    env_set: DictConfig,
) -> None:
    """The task and its callbacks, with ``run_job``'s status, error and hand-off rules."""
    job_started = False
    control_flow_exception_active = False
    handoff_error: BaseException | None = None
    try:
        try:
            with env_override(env_set):  # type: ignore[arg-type]
                job_started = True
                callbacks.on_job_start(config=config, task_function=task_function)
                try:
                    ret.return_value = task_function(task_cfg)
                    ret.status = JobStatus.COMPLETED
                except Exception as e:  # noqa: BLE001 - a failed task is its job's result
                    ret.return_value = e
                    ret.status = JobStatus.FAILED
                    with suppress(Exception):  # as run_job: a best effort
                        ret._remote_traceback = _serialize_traceback(e.__traceback__)
                        ret._remote_exception_chain = _serialize_exception_chain(e)
                        ret._remote_exception_group = _serialize_exception_group(e)
                    with suppress(Exception):
                        _log_job_error_to_file()
        except BaseException as e:
            control_flow_exception_active = True
            ret.return_value = e
            ret.status = JobStatus.FAILED
            handoff_error = e
            raise
        finally:
            try:
                _flush_loggers()
            except BaseException as e:
                if not control_flow_exception_active and not (
                    ret.status is JobStatus.FAILED
                    and isinstance(ret._return_value, Exception)
                    and isinstance(e, Exception)
                ):
                    if ret.status is not JobStatus.FAILED:
                        ret.return_value = e
                        ret.status = JobStatus.FAILED
                    handoff_error = e
                    raise
            finally:
                if job_started:
                    try:
                        callbacks.on_job_end(config=config, job_return=ret)
                    except BaseException:
                        handoff_error = None
                        raise
    except BaseException as e:
        if e is handoff_error:
            _set_job_return_handoff(e, ret)
        raise
