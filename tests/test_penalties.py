"""Row weights, L2/L1 penalties and per-configuration validation rows in the batched engine.

Every case is checked against ``sweeplr.training.train`` (``torch.optim`` + autograd, the
reference path) configuration by configuration, in float64, and the penalised solutions against
scikit-learn's objective.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from sweeplr.batched import EngineResult, OptimizerConfig, Penalty, linear_init, train_batched
from sweeplr.batched import fused as fused_step
from sweeplr.model import LogisticRegression, loss_on_logits
from sweeplr.schedules import BatchSchedule
from sweeplr.spec import ScheduleSpec
from sweeplr.training import TorchOptimizer, Trained, train

N_ROWS, N_FEATURES, EPOCHS, BATCH = 150, 4, 40, 32
TOL = {"rtol": 1e-9, "atol": 1e-12}  # float64 agreement is ~1e-16 in practice

# (engine kind, per-kind options shared by engine and reference, lrs of the K configurations)
KINDS = {
    "sgd": ("sgd", {"momentum": 0.9}, [0.05, 0.2, 0.1, 0.3]),
    "adam": ("adam", {}, [0.01, 0.05, 0.02, 0.1]),
    "adamw": ("adamw", {"weight_decay": 0.01}, [0.01, 0.05, 0.02, 0.1]),
}
# Per configuration (K = 4): none, l2, l1, elasticnet -- penalty kinds mixed in one batch.
MIXED = {"l2": [0.0, 0.05, 0.0, 0.03], "l1": [0.0, 0.0, 0.02, 0.01]}


def make_data(n_classes: int, n: int = N_ROWS, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Overlapping classes in float64, so that training neither stalls nor separates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    centers = torch.randn(n_classes, N_FEATURES, generator=g, dtype=torch.float64)
    X = centers[y] + 1.5 * torch.randn(n, N_FEATURES, generator=g, dtype=torch.float64)
    return X, y


def row_weights(k: int | None, n: int = N_ROWS, seed: int = 1) -> Tensor:
    """Non-negative row weights with some exact zeros: ``[n]`` (k None) or ``[k, n]``."""
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if k is None else (k, n)
    w = 2 * torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.where(w < 0.2, 0.0, w)


def pick(value: Any, k: int) -> Any:
    return value[k] if isinstance(value, list) else value


def run_both(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    kind: str,
    epochs: int = EPOCHS,
    *,
    k: int = 4,
    sample_weight: Tensor | None = None,
    l2: float | list[float] = 0.0,
    l1: float | list[float] = 0.0,
    batch_size: int | None = None,
    val: tuple[Tensor, ...] | None = None,
    log_every: int = 1,
    lrs: list[float] | None = None,
    **engine_kwargs: Any,
) -> tuple[EngineResult, list[tuple[LogisticRegression, Trained]]]:
    """The engine on K configurations, and the reference on each of them alone."""
    name, options, kind_lrs = KINDS[kind]
    lrs = (kind_lrs if lrs is None else lrs)[:k]
    w0, b0 = linear_init(X.shape[1], n_classes, list(range(1, k + 1)), dtype=X.dtype)
    penalty = Penalty(l2=l2, l1=l1) if (l2 or l1) else None
    result = train_batched(
        X,
        y,
        n_classes,
        w0,
        b0,
        OptimizerConfig(name, lr=lrs, **options),  # type: ignore[arg-type]
        epochs,
        batch_size=batch_size,
        log_every=log_every,
        sample_weight=sample_weight,
        penalty=penalty,
        val=val,  # type: ignore[arg-type]
        **engine_kwargs,
    )
    references = []
    for i in range(k):
        model = LogisticRegression(X.shape[1], n_classes).double()
        with torch.no_grad():
            model.linear.weight.copy_(w0[i])
            model.linear.bias.copy_(b0[i])
        if val is None:
            xv, yv = X[:0], y[:0]
        else:  # the reference sees configuration i's validation rows only
            mask = val[2][i] > 0 if len(val) == 3 else torch.ones(len(val[1]), dtype=torch.bool)
            xv, yv = val[0][mask], val[1][mask]
        sw = None
        if sample_weight is not None:
            sw = sample_weight if sample_weight.ndim == 1 else sample_weight[i]
        spec = TorchOptimizer(name, lr=lrs[i], **options)
        ref = train(
            model,
            X,
            y,
            xv,
            yv,
            spec,
            epochs,
            batch_size=batch_size,
            log_every=1,
            sample_weight=sw,
            l2=pick(l2, i),
            l1=pick(l1, i),
        )
        references.append((model, ref))
    return result, references


def assert_matches(result: EngineResult, references: list, positions: range | None = None) -> None:
    """Parameters, zero pattern and train-loss history of each configuration equal the
    reference's."""
    for i, (model, ref) in enumerate(references):
        if positions is not None and i not in positions:
            continue
        weight = model.linear.weight.detach()
        torch.testing.assert_close(result.weight[i], weight, **TOL)
        torch.testing.assert_close(result.bias[i], model.linear.bias.detach(), **TOL)
        assert torch.equal(result.weight[i] == 0, weight == 0)
        if not result.history.epochs:
            continue  # the engine logged no history to compare (log_every=0)
        epochs = result.epochs_run[i]
        torch.testing.assert_close(
            result.history.train_loss[:epochs, i],
            torch.tensor(ref.history["train_loss"], dtype=torch.float64),
            **TOL,
        )


@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "case",
    [
        {"sample_weight": "shared"},
        {"sample_weight": "per-config"},
        {"l2": [0.01, 0.1, 0.05, 0.0]},
        {"l1": [0.005, 0.05, 0.02, 0.01]},
        {"l2": 0.02, "l1": [0.01, 0.03, 0.0, 0.05]},  # elasticnet
        {"sample_weight": "per-config", **MIXED},  # none / l2 / l1 / elasticnet in one batch
    ],
    ids=["weight-shared", "weight-per-config", "l2", "l1", "elasticnet", "mixed"],
)
def test_full_batch_matches_the_reference(case: dict[str, Any], kind: str, n_classes: int) -> None:
    X, y = make_data(n_classes)
    kwargs = dict(case)
    if "sample_weight" in kwargs:
        kwargs["sample_weight"] = row_weights(None if case["sample_weight"] == "shared" else 4)
    result, refs = run_both(X, y, n_classes, kind, **kwargs)
    assert result.status == ["completed"] * 4
    assert_matches(result, refs)


@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shared", [True, False], ids=["weight-shared", "weight-per-config"])
def test_mini_batches_take_their_rows_weights(kind: str, n_classes: int, shared: bool) -> None:
    """150 rows in batches of 32: the last batch is smaller, and still divides by its rows."""
    X, y = make_data(n_classes)
    sw = row_weights(None if shared else 4)
    result, refs = run_both(X, y, n_classes, kind, 12, sample_weight=sw, batch_size=BATCH, **MIXED)
    assert_matches(result, refs)


def test_train_loss_is_the_weighted_data_loss() -> None:
    """History's train loss is (1/n) sum s_i loss_i before the update, without the penalty."""
    X, y = make_data(3)
    sw = row_weights(2)
    w0, b0 = linear_init(N_FEATURES, 3, [1, 2], dtype=X.dtype)
    result = train_batched(
        X,
        y,
        3,
        w0,
        b0,
        OptimizerConfig("sgd", lr=0.1),
        1,
        log_every=1,
        sample_weight=sw,
        penalty=Penalty(l2=1.0, l1=0.5),
    )
    for k in range(2):
        logits = X @ w0[k].t() + b0[k]
        expected = loss_on_logits(logits, y, sw[k])
        manual = (sw[k] * torch.nn.functional.cross_entropy(logits, y, reduction="none")).sum()
        torch.testing.assert_close(expected, manual / N_ROWS)  # divides by n, not sum(s)
        torch.testing.assert_close(result.history.train_loss[0, k], expected)


@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
def test_k_fold_members_train_and_validate_on_their_rows(n_classes: int) -> None:
    """Cross-validation in one batch: member k trains on the other folds (row weights 1, 0 on
    its fold) and is scored on its fold only (val_weight mask), as the reference on those rows."""
    X, y = make_data(n_classes)
    folds = torch.arange(N_ROWS) % 3
    masks = torch.stack([(folds == f).to(X.dtype) for f in range(3)])
    result, refs = run_both(
        X, y, n_classes, "adam", k=3, sample_weight=1 - masks, val=(X, y, masks), l2=0.01
    )
    assert_matches(result, refs)
    history = result.history
    assert history.val_loss is not None and history.val_accuracy is not None
    for k, (_, ref) in enumerate(refs):
        expected = torch.tensor(ref.history["val_loss"], dtype=torch.float64)
        torch.testing.assert_close(history.val_loss[:, k], expected, **TOL)
        accuracy = torch.tensor(ref.history["val_accuracy"], dtype=torch.float64)
        torch.testing.assert_close(history.val_accuracy[:, k], accuracy, rtol=1e-6, atol=1e-6)


def test_validation_weights_are_weighted_means() -> None:
    """Non-0/1 validation weights: sum(w * loss) / sum(w) per configuration."""
    X, y = make_data(2)
    Xv, yv = make_data(2, n=40, seed=5)
    vw = row_weights(2, n=40, seed=3)
    w0, b0 = linear_init(N_FEATURES, 2, [1, 2], dtype=X.dtype)
    result = train_batched(
        X, y, 2, w0, b0, OptimizerConfig("sgd", lr=0.1), 3, log_every=3, val=(Xv, yv, vw)
    )
    assert result.history.val_loss is not None and result.history.val_accuracy is not None
    for k in range(2):
        z = Xv @ result.weight[k, 0] + result.bias[k, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            z, yv.double(), reduction="none"
        )
        correct = ((z > 0) == yv.bool()).double()
        torch.testing.assert_close(
            result.history.val_loss[-1, k], (vw[k] * loss).sum() / vw[k].sum(), **TOL
        )
        torch.testing.assert_close(
            result.history.val_accuracy[-1, k], (vw[k] * correct).sum() / vw[k].sum(), **TOL
        )


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_strong_l1_gives_exact_zeros(kind: str) -> None:
    X, y = make_data(3)
    result, refs = run_both(X, y, 3, kind, 100, k=2, l1=[0.3, 0.0])
    assert_matches(result, refs)
    assert int((result.weight[0] == 0).sum()) >= 3  # exactly 0.0, not merely small
    assert not bool((result.weight[1] == 0).any())  # l1 = 0 in the same batch: no zeros
    assert not bool((result.bias == 0).any())  # the bias is never penalised


def test_l1_thresholds_with_the_scheduled_lr() -> None:
    """SGD's proximal step uses the lr the step used, which a schedule changes every epoch."""
    X, y = make_data(2)
    schedule = ScheduleSpec("cosine", min_lr=0.001, warmup_epochs=5)
    lrs, l1s = [0.2, 0.5], [0.02, 0.05]
    w0, b0 = linear_init(N_FEATURES, 2, [1, 2], dtype=X.dtype)
    result = train_batched(
        X,
        y,
        2,
        w0,
        b0,
        OptimizerConfig("sgd", lr=lrs),
        EPOCHS,
        log_every=1,
        lr_schedule=BatchSchedule(lrs, [schedule] * 2, EPOCHS, ["min"] * 2, [None] * 2),
        penalty=Penalty(l1=l1s),
    )
    for k in range(2):
        model = LogisticRegression(N_FEATURES, 2).double()
        with torch.no_grad():
            model.linear.weight.copy_(w0[k])
            model.linear.bias.copy_(b0[k])
        spec = TorchOptimizer("sgd", lr=lrs[k])
        ref = train(
            model, X, y, X[:0], y[:0], spec, EPOCHS, log_every=1, schedule=schedule, l1=l1s[k]
        )
        torch.testing.assert_close(result.weight[k], model.linear.weight.detach(), **TOL)
        expected_lr = torch.tensor(ref.history["lr"], dtype=torch.float64)
        torch.testing.assert_close(result.history.lr[:, k], expected_lr)
        assert len(set(ref.history["lr"])) > 10  # the lr changed from epoch to epoch


def test_stopped_configurations_take_their_weights_and_penalties_along() -> None:
    """A diverging member (huge lr) and a pruned one drop out of the batch; the others keep
    their own row weights, penalties and validation rows (``_stop`` selects them all)."""
    X, y = make_data(2)
    folds = torch.arange(N_ROWS) % 4
    masks = torch.stack([(folds == f).to(X.dtype) for f in range(4)])
    sw = row_weights(4) * (1 - masks)

    def prune_second(epoch: int, active: Tensor, *_: Tensor) -> list[bool]:
        return [epoch == 7 and k == 1 for k in range(4)]

    # Member 0's huge lr and l2 make W grow by a factor 1e20 a step: inf within 40 epochs.
    result, refs = run_both(
        X,
        y,
        2,
        "sgd",
        lrs=[1e10, 0.1, 0.2, 0.3],
        sample_weight=sw,
        val=(X, y, masks),
        on_report=prune_second,
        check_every=3,
        l2=[1e10, *MIXED["l2"][1:]],
        l1=MIXED["l1"],
    )
    assert result.status[0] == "diverged" and result.status[1] == "pruned"
    assert result.status[2:] == ["completed", "completed"]
    assert_matches(result, refs, positions=range(2, 4))
    assert result.history.val_loss is not None
    for k in (2, 3):
        expected = torch.tensor(refs[k][1].history["val_loss"], dtype=torch.float64)
        torch.testing.assert_close(result.history.val_loss[:, k], expected, **TOL)


@pytest.mark.parametrize("fused", [False, True], ids=["small", "fused-sizes"])
@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
def test_weighted_runs_skip_the_fast_paths(
    n_classes: int, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlogged epochs of a small binary full batch would be folded, and shrunken sizes make
    steps fused; weighted and penalised runs take the plain step, which has the weights and
    penalties, so they still match the reference."""
    if fused:

        def sizes(ko: int, *_: object) -> tuple[int, int]:
            return (40 if ko == 1 else 24), 16

        monkeypatch.setattr(fused_step, "fused_sizes", sizes)
        monkeypatch.setattr(fused_step, "_FUSED_MIN_X_BYTES", 0)
    X, y = make_data(n_classes)
    for case in ({"sample_weight": row_weights(None)}, {"l2": 0.1}, {"l1": 0.05}):
        for k in (1, 2):
            result, refs = run_both(X, y, n_classes, "sgd", 10, k=k, log_every=0, **case)
            assert result.history.epochs == []
            assert_matches(result, refs)


def test_unweighted_runs_keep_the_fast_path() -> None:
    """An all-zero penalty is no penalty: the run is bit-identical to one without it."""
    X, y = make_data(2)
    w0, b0 = linear_init(N_FEATURES, 2, [1, 2], dtype=X.dtype)
    cfg = OptimizerConfig("adam", lr=[0.01, 0.1])
    plain = train_batched(X, y, 2, w0, b0, cfg, EPOCHS)
    zero = train_batched(X, y, 2, w0, b0, cfg, EPOCHS, penalty=Penalty())
    assert torch.equal(plain.weight, zero.weight) and torch.equal(plain.bias, zero.bias)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_weight": torch.ones(N_ROWS - 1, dtype=torch.float64)}, "sample_weight must be"),
        ({"sample_weight": torch.ones(3, N_ROWS, dtype=torch.float64)}, "sample_weight must be"),
        ({"sample_weight": torch.ones(N_ROWS)}, "sample_weight must share X's dtype"),
        ({"sample_weight": -torch.ones(N_ROWS, dtype=torch.float64)}, "finite and >= 0"),
        ({"sample_weight": torch.full((N_ROWS,), np.nan, dtype=torch.float64)}, "finite"),
        ({"val_weight": torch.ones(2, 10, dtype=torch.float64)}, r"val_weight must be \[2, 20\]"),
        ({"val_weight": torch.ones(2, 20)}, "val_weight must share X's dtype"),
        ({"val_weight": torch.zeros(2, 20, dtype=torch.float64)}, "a row with weight > 0"),
        ({"penalty": Penalty(l2=-1.0)}, "penalty.l2 must be >= 0"),
        ({"penalty": Penalty(l1=[0.1, 0.2, 0.3])}, "penalty.l1 must be a scalar or have length 2"),
        ({"penalty": Penalty(l1=float("inf"))}, "penalty.l1 must be finite"),
    ],
)
def test_rejects_invalid_weights_and_penalties(kwargs: dict[str, Any], message: str) -> None:
    X, y = make_data(2)
    w0, b0 = linear_init(N_FEATURES, 2, [1, 2], dtype=X.dtype)
    val_weight = kwargs.pop("val_weight", None)
    val = None if val_weight is None else (X[:20], y[:20], val_weight)
    with pytest.raises(ValueError, match=message):
        train_batched(X, y, 2, w0, b0, OptimizerConfig("sgd", lr=0.1), 1, val=val, **kwargs)


# ----- scikit-learn's optimum --------------------------------------------------------------------


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """569 x 30, standardised: scikit-learn's reference problem for penalised logistic loss."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def objective(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, l2: float, l1: float) -> float:
    """scikit-learn's objective divided by C*n: mean log-loss + l2/2 ||w||^2 + l1 ||w||_1."""
    z = X @ w + b
    return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w + l1 * np.abs(w).sum())


def engine_solution(
    X: np.ndarray, y: np.ndarray, epochs: int, penalty: Penalty
) -> tuple[np.ndarray, float]:
    """Full-batch (proximal) gradient descent with the engine, lr 0.5, float64."""
    w0, b0 = linear_init(X.shape[1], 2, [0], dtype=torch.float64)
    result = train_batched(
        torch.from_numpy(X),
        torch.from_numpy(y).long(),
        2,
        w0,
        b0,
        OptimizerConfig("sgd", lr=0.5),
        epochs,
        penalty=penalty,
    )
    assert result.status == ["completed"]
    return result.weight[0, 0].numpy(), float(result.bias[0, 0])


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_l2_reaches_scikit_learns_optimum(breast_cancer: tuple, C: float) -> None:
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    X, y = breast_cancer
    l2 = 1 / (C * len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a deprecated option or no convergence
        sk = SkLogisticRegression(C=C, l1_ratio=0.0, tol=1e-12, max_iter=10000).fit(X, y)
    expected = objective(X, y, sk.coef_[0], sk.intercept_[0], l2, 0.0)
    w, b = engine_solution(X, y, 3000 if C < 1 else 20000, Penalty(l2=l2))
    assert objective(X, y, w, b, l2, 0.0) == pytest.approx(expected, rel=1e-6)  # seen: 1e-13
    np.testing.assert_allclose(w, sk.coef_[0], rtol=1e-4, atol=1e-5)


def test_l1_reaches_scikit_learns_optimum_and_zeros(breast_cancer: tuple) -> None:
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    X, y = breast_cancer
    C = 0.1
    l1 = 1 / (C * len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sk = SkLogisticRegression(
            C=C, l1_ratio=1.0, solver="saga", tol=1e-12, max_iter=100000, random_state=0
        ).fit(X, y)
    expected = objective(X, y, sk.coef_[0], sk.intercept_[0], 0.0, l1)
    w, b = engine_solution(X, y, 20000, Penalty(l1=l1))
    assert objective(X, y, w, b, 0.0, l1) == pytest.approx(expected, rel=1e-6)  # seen: < 1e-15
    zeros = w == 0.0
    assert 0 < int(zeros.sum()) < len(w)  # a sparse solution, with exact zeros
    np.testing.assert_array_equal(zeros, sk.coef_[0] == 0.0)
