""":class:`RunSpec`, what a run is made of: a frozen tree shaped like the config. No Hydra.

:func:`run_spec` validates a composed config (``sweeplr.validation``) and reads it into the
tree in one step: ``spec.optimizer``, ``spec.penalty``, ``spec.schedule`` (the ``scheduler``
group), ``spec.early_stopping``, ``spec.data`` (the data set and how it is split and scaled)
and the top-level values (``spec.lr``, ``spec.epochs``, ...). Each field says in its metadata
(:func:`setting`) where it is read from, whether configurations must share it to train in one
pass (:func:`batch_key`) and which record column shows it (:meth:`RunSpec.hyperparameters`), so a
new hyperparameter is its YAML, one field here, and the solver that uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from functools import cache
from typing import Any, get_type_hints

from sweeplr.config import config_values
from sweeplr.schema import HYPERPARAMETERS, OBJECTIVES, watched_metric
from sweeplr.validation import folds, validate

# Whether configurations share a field in one pass: True (always), "data" (it picks the data's
# tensors: the data key), or a rule of the spec (the seed orders mini-batches only).
Shared = bool | str | Callable[["RunSpec"], bool]
# What a record column shows for a field: (the spec, the field's value) -> the column's value.
Shown = Callable[["RunSpec", Any], Any]


def setting(
    default: Any = MISSING,
    *,
    read: Callable[[Any], Any] | None = None,
    shared: Shared = False,
    column: str | tuple[str, ...] | None = None,
    shown: Shown | None = None,
) -> Any:
    """A spec field and what sweeplr does with it.

    It is read from the config key of its name in its group's node, or by ``read`` from the
    whole config when it is not a plain copy of one value; ``shared``: see ``Shared``;
    ``column``: the hyperparameter column(s) of the record and summary that show it
    (``betas`` shows as ``beta1`` and ``beta2``), ``shown`` what they show.
    """
    metadata = {"read": read, "shared": shared, "column": column, "shown": shown}
    return field(default=default, metadata=metadata)


def group(node: str | None, *, shared: Shared = False) -> dict[str, Any]:
    """The metadata of a group of the spec, read from the config node ``node`` (None: the top
    level); ``shared``: see ``Shared``, for all its fields."""
    return {"node": node, "shared": shared}


def _folds(cfg: Any) -> int | None:
    cv = folds(cfg)
    return None if cv is None else int(cv)


def _val_size(cfg: Any) -> float:
    return 0.0 if folds(cfg) else float(cfg.val_size)  # with folds, no fixed validation part


def _plain(node: Any) -> dict[str, Any]:
    """A config node's values as a dict (a mapping, such as `config_values`', or a dataclass)."""
    return dict(node) if isinstance(node, Mapping) else asdict(node)


@dataclass(frozen=True)
class DataSpec:
    """The data set and how it is split and scaled: specs with equal ones share tensors."""

    dataset: Mapping[str, Any] = setting(
        read=lambda cfg: _plain(cfg.dataset),
        column="dataset",
        shown=lambda spec, value: value["name"],
    )  # the dataset group's values: name, path, generator seed, ...
    test_size: float = setting(column="test_size")
    val_size: float = setting(read=_val_size, column="val_size")
    random_state: int = setting()
    stratify: bool = setting()
    standardize: bool = setting(column="standardize")


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer group: its name and every optimizer's options (the others' at defaults)."""

    name: str = setting(shared=True, column="optimizer")
    weight_decay: float = setting(0.0, column="weight_decay")
    momentum: float = setting(0.0, column="momentum")  # sgd
    nesterov: bool = setting(False, shared=True, column="nesterov")  # sgd
    betas: tuple[float, float] = setting((0.9, 0.999), column=("beta1", "beta2"))  # adam, adamw
    eps: float = setting(1e-8, column="eps")  # adam, adamw
    # lbfgs (its lr is per configuration, like the others')
    history_size: int = setting(100, shared=True)
    tolerance_grad: float = setting(1e-7, shared=True)
    tolerance_change: float = setting(1e-9, shared=True)


def _l1_ratio(cfg: Any) -> float:
    penalty = getattr(cfg, "penalty", None)  # None: a config composed before penalties existed
    if penalty is None:
        return 0.0
    return float({"none": 0.0, "l2": 0.0, "l1": 1.0}.get(penalty.name, penalty.l1_ratio))


@dataclass(frozen=True)
class PenaltySpec:
    """scikit-learn's regularisation, ``C * sum(row losses) + penalty(W)``."""

    name: str = setting("none", column="penalty")
    C: float = setting(
        1.0, column="C", shown=lambda spec, value: None if spec.penalty.name == "none" else value
    )
    # the L1 share of the penalty: 0 for none and l2, 1 for l1; shown for elasticnet only
    l1_ratio: float = setting(
        0.0,
        read=_l1_ratio,
        column="l1_ratio",
        shown=lambda spec, value: value if spec.penalty.name == "elasticnet" else None,
    )


@dataclass(frozen=True)
class ScheduleSpec:
    """The ``scheduler`` group: a ``torch.optim.lr_scheduler`` schedule of the lr."""

    name: str = setting("constant", column="scheduler")
    warmup_epochs: int = setting(0)
    warmup_start_factor: float = setting(0.1)
    step_size: int = setting(30)
    gamma: float = setting(0.1)
    min_lr: float = setting(0.0)
    patience: int = setting(10)
    threshold: float = setting(1e-4)
    pct_start: float = setting(0.3)
    div_factor: float = setting(25.0)
    final_div_factor: float = setting(1e4)


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop a run whose watched validation metric stopped improving (``patience`` None: off)."""

    patience: int | None = setting(None)
    min_delta: float = setting(0.0)
    restore_best: bool = setting(True)


def class_weight_text(value: str | Mapping[str, float] | None) -> str | None:
    """How a record and the table show a class weighting: ``balanced`` or ``red:2,blue:1``."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(f"{name}:{weight:g}" for name, weight in value.items())


def _class_weight(cfg: Any) -> str | dict[str, float] | None:
    value = getattr(cfg, "class_weight", None)
    if value is None or isinstance(value, str):
        return value
    return {str(name): float(weight) for name, weight in _plain(value).items()}


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's numbers, read from a validated config.

    Two equal specs train to the same numbers (on the CPU); what only changes how a run is shown
    (``progress``, ``plots``) or where it is logged (``logger``) is left out.
    """

    data: DataSpec = field(metadata=group(None, shared="data"))
    optimizer: OptimizerSpec = field(metadata=group("optimizer"))
    penalty: PenaltySpec = field(metadata=group("penalty"))
    schedule: ScheduleSpec = field(metadata=group("scheduler"))
    early_stopping: EarlyStoppingSpec = field(metadata=group("early_stopping"))
    lr: float = setting(column="lr")
    epochs: int = setting(shared=True, column="epochs")
    batch_size: int | None = setting(shared=True, column="batch_size")
    # full batch, the seed is only each configuration's initial weights; mini-batch, it also
    # orders the batches, which a pass shares
    seed: int = setting(shared=lambda spec: spec.batch_size is not None, column="seed")
    device: str = setting(shared="data")
    objective: str = setting()
    log_every: int = setting(shared=True)
    engine: str = setting(shared=True)
    cv: int | None = setting(None, read=_folds, shared=True, column="cv")
    class_weight: str | Mapping[str, float] | None = setting(
        None, read=_class_weight, column="class_weight", shown=lambda spec, v: class_weight_text(v)
    )

    @property
    def direction(self) -> str:
        """``minimize`` or ``maximize``: how the objective ranks runs."""
        return OBJECTIVES[self.objective]

    @property
    def watched(self) -> str | None:
        """The history column plateau schedules and early stopping watch."""
        return watched_metric(self.objective)

    def hyperparameters(self) -> dict[str, Any]:
        """The flat values a record and the summary table show, named and ordered as in
        ``HYPERPARAMETERS``, from the fields' ``column`` metadata."""
        values: dict[str, Any] = {}
        for spec_field, value, _ in _leaves(self):
            column, shown = spec_field.metadata["column"], spec_field.metadata["shown"]
            if column is None:
                continue
            value = value if shown is None else shown(self, value)
            if isinstance(column, tuple):
                values.update(zip(column, value, strict=True))
            else:
                values[column] = value
        return {name: values[name] for name in HYPERPARAMETERS}


def _leaves(spec: RunSpec) -> Iterator[tuple[Field[Any], Any, Shared]]:
    """Every value field of ``spec``, with its value and whether it is shared (a shared
    group's fields all are): the top level's in field order, each group's in its place."""
    for top in _fields(type(spec)):
        value = getattr(spec, top.name)
        if "node" not in top.metadata:
            yield top, value, top.metadata["shared"]
            continue
        for f in _fields(type(value)):
            yield f, getattr(value, f.name), top.metadata["shared"] or f.metadata["shared"]


def _in_batch_key(spec: RunSpec, shared: Shared) -> bool:
    """Whether a field marked ``shared`` must be equal in a pass (its data's fields aside)."""
    return shared(spec) if callable(shared) else shared is True


def data_key(spec: RunSpec) -> str:
    """Specs with equal keys train and evaluate on the same tensors."""
    values = [value for _, value, shared in _leaves(spec) if shared == "data"]
    return json.dumps(values, sort_keys=True, default=str)


def batch_key(spec: RunSpec) -> str:
    """Specs with equal keys can share one batched training pass: their data and the fields
    marked shared. Learning rate, the optimizer's coefficients, penalty, schedule, early
    stopping, objective and class weights are per configuration in the solvers."""
    values = [value for _, value, shared in _leaves(spec) if _in_batch_key(spec, shared)]
    return json.dumps([data_key(spec), *values], default=str)


# --- Building the spec from a config ---------------------------------------------------------


_FIELDS: dict[type, tuple[Field[Any], ...]] = {}


def _fields(cls: type) -> tuple[Field[Any], ...]:
    """``dataclasses.fields`` of a spec class, worked out once: it filters the class's fields
    anew at every call, and a large sweep reads every spec's fields thousands of times."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = fields(cls)
    return found


@cache
def _types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _convert(hint: Any, value: Any) -> Any:
    """A config value as the spec's type (a config read without its schema holds ``lr: 1``)."""
    if value is None:
        return None
    for kind in (bool, int, float, str):
        if hint is kind or hint == kind | None:
            return kind(value)
    if hint == tuple[float, float]:
        return tuple(float(v) for v in value)
    return value


def _read(owner: type, node: Any, cfg: Any, top_level: bool = False) -> dict[str, Any]:
    """The values of ``owner``'s value fields (a group's, or RunSpec's own: ``top_level``) from
    the config ``node``; a key missing in a config composed before its option existed takes
    the field's default."""
    values = {}
    for f in fields(owner):
        if top_level and "node" in f.metadata:
            continue
        read = f.metadata["read"]
        if read is not None:
            values[f.name] = read(cfg)
            continue
        value = getattr(node, f.name, f.default)
        if value is MISSING:
            raise AttributeError(f"the config has no {f.name}")
        values[f.name] = _convert(_types(owner)[f.name], value)
    return values


def run_spec(cfg: Any, overrides: Sequence[str] = ()) -> RunSpec:
    """Validate ``cfg`` (a composed config, or anything with its attributes) and read its spec.

    Raises :class:`~sweeplr.errors.SweeplrError` with one line naming the first invalid value,
    as typed in ``overrides`` (the command line's) when one set it.
    """
    cfg = config_values(cfg)
    validate(cfg, overrides)
    groups = {}
    for top in fields(RunSpec):
        if "node" in top.metadata:
            node = top.metadata["node"]
            source = cfg if node is None else getattr(cfg, node, None)
            cls = _types(RunSpec)[top.name]
            groups[top.name] = cls(**_read(cls, {} if source is None else source, cfg))
    return RunSpec(**groups, **_read(RunSpec, cfg, cfg, top_level=True))
