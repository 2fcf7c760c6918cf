"""Batched L-BFGS (`sweeplr.batched.lbfgs`) against torch.optim.LBFGS and scikit-learn.

The reference is `sweeplr.training.train_lbfgs_reference`: the real ``torch.optim.LBFGS``
(strong Wolfe) on ``nn.Linear`` with autograd, one configuration at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from sweeplr.batched import EngineResult, lbfgs, linear_init, train_lbfgs
from sweeplr.model import LogisticRegression
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED
from sweeplr.training import Trained, train_lbfgs_reference

N_ROWS, N_FEATURES = 120, 4


@dataclass(frozen=True)
class _Penalty:
    l2: object = 0.0
    l1: object = 0.0


def _data(n_classes: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(n_classes)
    X = torch.randn(N_ROWS + 40, N_FEATURES, generator=g, dtype=dtype)
    w = torch.randn(N_FEATURES, n_classes, generator=g, dtype=dtype)
    logits = X @ w + 1.5 * torch.randn(N_ROWS + 40, n_classes, generator=g, dtype=dtype)
    y = logits.argmax(1)
    return X[:N_ROWS], y[:N_ROWS], X[N_ROWS:], y[N_ROWS:]


def _reference(
    X: Tensor,
    y: Tensor,
    Xv: Tensor,
    yv: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    *,
    lr: float,
    l2: float,
    sample_weight: Tensor | None,
    **kwargs: object,
) -> tuple[Trained, LogisticRegression]:
    model = LogisticRegression(X.shape[1], n_classes).to(X.dtype)
    with torch.no_grad():
        model.linear.weight.copy_(weight)
        model.linear.bias.copy_(bias)
    result = train_lbfgs_reference(
        model, X, y, Xv, yv, lr=lr, l2=l2, sample_weight=sample_weight, **kwargs
    )
    return result, model


def _check_against_reference(
    n_classes: int,
    lrs: list[float],
    l2s: list[float],
    weights: Tensor | None,
    **kwargs: object,
) -> EngineResult:
    X, y, Xv, yv = _data(n_classes)
    k = len(lrs)
    weight, bias = linear_init(N_FEATURES, n_classes, list(range(k)), dtype=X.dtype)
    result = train_lbfgs(
        X,
        y,
        n_classes,
        weight,
        bias,
        lr=lrs,
        penalty=_Penalty(l2=l2s),
        sample_weight=weights,
        val=(Xv, yv),
        **kwargs,  # type: ignore[arg-type]
    )
    for kk in range(k):
        ref, model = _reference(
            X,
            y,
            Xv,
            yv,
            n_classes,
            weight[kk],
            bias[kk],
            lr=lrs[kk],
            l2=l2s[kk],
            sample_weight=None if weights is None else weights[kk],
            **kwargs,
        )
        assert result.status[kk] == ref.status
        assert result.epochs_run[kk] == ref.epochs_run
        torch.testing.assert_close(result.weight[kk], model.linear.weight, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(result.bias[kk], model.linear.bias, rtol=1e-8, atol=1e-10)
        hist = result.history
        rows = [hist.epochs.index(e) for e in ref.history["epoch"]]
        torch.testing.assert_close(
            hist.train_loss[rows, kk], torch.tensor(ref.history["train_loss"], dtype=X.dtype)
        )
        assert hist.val_loss is not None and hist.val_accuracy is not None
        torch.testing.assert_close(
            hist.val_loss[rows, kk], torch.tensor(ref.history["val_loss"], dtype=X.dtype)
        )
        torch.testing.assert_close(
            hist.val_accuracy[rows, kk], torch.tensor(ref.history["val_accuracy"], dtype=X.dtype)
        )
        # Rows the reference did not log belong to other configurations' last iterations, or
        # come after this one stopped (NaN).
        after = [i for i, e in enumerate(hist.epochs) if e > result.epochs_run[kk]]
        assert bool(hist.train_loss[after, kk].isnan().all())
    return result


@pytest.mark.parametrize("n_classes", [2, 3])
def test_matches_torch_lbfgs_per_configuration(n_classes: int) -> None:
    """(a) K=4 different lr / l2 / sample weights, a small history (its ring shifts)."""
    g = torch.Generator().manual_seed(7)
    weights = torch.rand(4, N_ROWS, generator=g, dtype=torch.float64) * 2
    weights[1] = 1.0
    result = _check_against_reference(
        n_classes,
        lrs=[1.0, 0.5, 1.0, 0.1],
        l2s=[0.0, 1e-2, 1e-3, 0.1],
        weights=weights,
        max_iter=40,
        history_size=5,
        tolerance_grad=1e-7,
        tolerance_change=1e-9,
        log_every=7,
    )
    assert result.status == [COMPLETED] * 4


def test_configurations_converge_at_different_iterations() -> None:
    """(d) each stops at its own iteration with torch's exits; the history ends per config."""
    result = _check_against_reference(
        2,
        lrs=[1.0, 1.0, 0.3, 1.0],
        l2s=[1.0, 0.1, 0.01, 0.0],
        weights=None,
        max_iter=200,
        history_size=100,
        tolerance_grad=1e-6,
        tolerance_change=1e-12,
        log_every=5,
    )
    runs = result.epochs_run
    assert len(set(runs)) >= 3 and max(runs) < 200, runs
    assert result.history.epochs[-1] == max(runs)
    for kk, last in enumerate(runs):
        assert last in result.history.epochs  # the last iteration of each is logged
        assert math.isfinite(
            float(result.history.train_loss[result.history.epochs.index(last), kk])
        )


@pytest.mark.parametrize("n_classes", [2, 3])
def test_k64_matches_torch_on_sampled_configurations(n_classes: int) -> None:
    """K=64 (an lr x l2 grid) in one call; three of them checked against torch one by one."""
    X, y, Xv, yv = _data(n_classes)
    lrs = [0.1, 0.3, 1.0, 2.0] * 16
    l2s = np.repeat(np.logspace(-4, 0, 16), 4).tolist()
    weight, bias = linear_init(N_FEATURES, n_classes, list(range(64)), dtype=X.dtype)
    kwargs = {"max_iter": 30, "history_size": 10, "tolerance_grad": 1e-7, "tolerance_change": 1e-9}
    result = train_lbfgs(X, y, n_classes, weight, bias, lr=lrs, penalty=_Penalty(l2=l2s), **kwargs)
    assert result.status == [COMPLETED] * 64
    for kk in (0, 29, 63):
        ref, model = _reference(
            X, y, Xv, yv, n_classes, weight[kk], bias[kk], lr=lrs[kk], l2=l2s[kk],
            sample_weight=None, log_every=0, **kwargs,
        )  # fmt: skip
        assert (ref.status, ref.epochs_run) == (result.status[kk], result.epochs_run[kk])
        torch.testing.assert_close(result.weight[kk], model.linear.weight, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(result.bias[kk], model.linear.bias, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_evaluation_budget_exits_match_torch(max_iter: int) -> None:
    """Small max_iter: max_eval = max_iter * 5 // 4 caps the line searches (max_ls 0 at 1)."""
    _check_against_reference(
        3,
        lrs=[1.0, 3.0],
        l2s=[0.0, 0.01],
        weights=None,
        max_iter=max_iter,
        history_size=3,
        tolerance_grad=1e-7,
        tolerance_change=1e-9,
        log_every=1,
    )


def test_divergence_mid_run_is_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss that turns non-finite in a later line search stops only its configuration."""
    X, y, _, _ = _data(2)
    weight, bias = linear_init(N_FEATURES, 2, [0, 1, 2], dtype=X.dtype)
    kwargs = {"max_iter": 25, "tolerance_change": 1e-12, "log_every": 1}
    alone = train_lbfgs(X, y, 2, weight[[0, 2]], bias[[0, 2]], **kwargs)
    real = lbfgs._Problem.evaluate
    calls = {"n": 0}

    def poisoned(self: lbfgs._Problem, P: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f, data, grad = real(self, P, idx)
        if 1 in idx.tolist():
            calls["n"] += 1
            if calls["n"] >= 6:  # config 1's sixth evaluation and later: an overflow
                f = torch.where(idx == 1, math.inf, f)
        return f, data, grad

    monkeypatch.setattr(lbfgs._Problem, "evaluate", poisoned)
    both = train_lbfgs(X, y, 2, weight, bias, **kwargs)
    assert both.status[1] == DIVERGED
    epoch = both.diverged_epoch[1]
    assert epoch is not None and epoch > 1 and both.epochs_run[1] == epoch
    hist = both.history
    assert bool(torch.isfinite(hist.train_loss[: epoch - 1, 1]).all())
    assert bool(hist.train_loss[epoch - 1 :, 1].isnan().all())
    torch.testing.assert_close(both.weight[[0, 2]], alone.weight, rtol=1e-12, atol=1e-14)
    assert [both.epochs_run[0], both.epochs_run[2]] == alone.epochs_run


def test_k1_float32_multiclass_and_start_exit() -> None:
    """K=1 float32 runs; a configuration already optimal at the start runs 0 iterations."""
    X, y, _, _ = _data(3, torch.float32)
    weight, bias = linear_init(N_FEATURES, 3, [0], dtype=torch.float32)
    result = train_lbfgs(X, y, 3, weight, bias, max_iter=100, tolerance_grad=1e-4)
    assert result.status == [COMPLETED] and 0 < result.epochs_run[0] < 100
    again = train_lbfgs(X, y, 3, result.weight, result.bias, max_iter=100, tolerance_grad=1e-4)
    assert again.epochs_run == [0] and torch.equal(again.weight, result.weight)


def test_l1_is_refused() -> None:
    X, y, _, _ = _data(2)
    weight, bias = linear_init(N_FEATURES, 2, [0, 1], dtype=X.dtype)
    with pytest.raises(ValueError, match="l1 needs a proximal optimizer"):
        train_lbfgs(X, y, 2, weight, bias, max_iter=5, penalty=_Penalty(l2=0.1, l1=[0.0, 0.1]))


def test_divergence_and_pruning_are_isolated() -> None:
    """(c) a diverging and a pruned configuration leave the others exactly as run alone."""
    X, y, Xv, yv = _data(2)
    weight, bias = linear_init(N_FEATURES, 2, [0, 1, 2, 3], dtype=X.dtype)
    lrs = [1.0, 1e308, 1.0, 0.5]  # config 1: the first trial step overflows the logits
    reports: list[tuple[int, Tensor]] = []

    def on_report(
        epoch: int, active: Tensor, loss: Tensor, vl: Tensor, va: Tensor
    ) -> list[bool] | None:
        reports.append((epoch, active))
        return [epoch == 3 and k == 2 for k in range(4)]

    kwargs = {"max_iter": 30, "tolerance_change": 1e-12, "log_every": 2}
    both = train_lbfgs(X, y, 2, weight, bias, lr=lrs, val=(Xv, yv), on_report=on_report, **kwargs)
    assert both.status == [COMPLETED, DIVERGED, PRUNED, COMPLETED]
    assert both.diverged_epoch[1] == 1 and both.epochs_run[1] == 1
    assert both.epochs_run[2] == 3
    assert reports[0][1].tolist() == [True, False, True, True]
    assert reports[3][1].tolist()[1:3] == [False, False]
    ref, _ = _reference(
        X, y, Xv, yv, 2, weight[1], bias[1], lr=1e308, l2=0.0, sample_weight=None,
        history_size=100, tolerance_grad=1e-7, **kwargs,
    )  # fmt: skip
    assert (ref.status, ref.diverged_epoch) == (DIVERGED, 1)
    alone = train_lbfgs(
        X, y, 2, weight[[0, 3]], bias[[0, 3]], lr=[1.0, 0.5], val=(Xv, yv), **kwargs
    )
    torch.testing.assert_close(both.weight[[0, 3]], alone.weight, rtol=1e-12, atol=1e-14)
    assert [both.epochs_run[0], both.epochs_run[3]] == alone.epochs_run
    hist = both.history
    assert bool(hist.train_loss[:, 1].isnan().all())
    pruned_after = [i for i, e in enumerate(hist.epochs) if e > 3]
    assert bool(hist.train_loss[pruned_after, 2].isnan().all())
    assert not bool(hist.train_loss[hist.epochs.index(2), 2].isnan())


def test_masked_validation_and_shared_sample_weight() -> None:
    """val_weight masks give means over each configuration's rows; [n] weights are shared."""
    X, y, Xv, yv = _data(2)
    weight, bias = linear_init(N_FEATURES, 2, [0, 0], dtype=X.dtype)
    mask = torch.ones(2, len(yv), dtype=X.dtype)
    mask[1, ::2] = 0
    sw = torch.rand(N_ROWS, generator=torch.Generator().manual_seed(3), dtype=X.dtype)
    result = train_lbfgs(
        X, y, 2, weight, bias, max_iter=5, sample_weight=sw, val=(Xv, yv, mask), log_every=5
    )
    assert result.history.val_loss is not None
    assert result.epochs_run == [5, 5]
    full = train_lbfgs(X, y, 2, weight[1:], bias[1:], max_iter=5, sample_weight=sw,
                       val=(Xv[1::2], yv[1::2]), log_every=5)  # fmt: skip
    assert full.history.val_loss is not None
    torch.testing.assert_close(result.history.val_loss[-1, 1], full.history.val_loss[-1, 0])


def test_matches_scikit_learn_on_breast_cancer() -> None:
    """(b) l2, C=1: the objective within 1e-5 of scikit-learn's lbfgs, same test predictions."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    features, labels = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, _ = train_test_split(features, labels, test_size=0.33, random_state=42)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    c = 1.0
    sk = SkLogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(Xtr, ytr)
    X = torch.tensor(Xtr, dtype=torch.float32)
    y = torch.tensor(ytr, dtype=torch.int64)
    n = len(ytr)
    weight = torch.zeros(1, 1, X.shape[1])
    bias = torch.zeros(1, 1)
    result = train_lbfgs(
        X, y, 2, weight, bias, max_iter=1000, tolerance_grad=1e-7, penalty=_Penalty(l2=1 / (c * n))
    )
    assert result.status == [COMPLETED]

    def objective(w: np.ndarray, b: float) -> float:  # scikit-learn's, divided by C*n
        z = Xtr @ w + b
        return float(np.mean(np.logaddexp(0, z) - ytr * z) + 0.5 / (c * n) * w @ w)

    ours = objective(result.weight[0, 0].double().numpy(), float(result.bias[0, 0]))
    theirs = objective(sk.coef_[0], float(sk.intercept_[0]))
    assert abs(ours - theirs) <= 1e-5 * theirs, (ours, theirs)
    predicted = (torch.tensor(Xte, dtype=torch.float32) @ result.weight[0, 0] + result.bias[0]) > 0
    assert np.array_equal(predicted.long().numpy(), sk.predict(Xte))
