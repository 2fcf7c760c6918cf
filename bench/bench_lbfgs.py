"""Time to solution of `sweeplr.batched.train_lbfgs` against scikit-learn's lbfgs solver.

Run ``python bench/bench_lbfgs.py`` (a few minutes; ``--rows`` shrinks the synthetic case,
``--threads`` pins torch's threads, ``--dtype float32`` solves in float32 as sweeplr did before
it solved in float64 like scikit-learn; ``--dtypes`` compares the two solves alone, in process
CPU seconds, the best of 3, which a busy machine disturbs less than wall time).  Both minimise the same l2-penalised logistic loss
(scikit-learn's ``C * sum(loss) + ||w||^2 / 2``, which scikit-learn itself divides by
``C * n``; here ``l2 = 1 / (C n)``) from zero weights, on the same float32 data:

* breast_cancer: ``load_breast_cancer``, ``train_test_split(test_size=0.33, random_state=42)``,
  ``StandardScaler`` fit on the training rows (the training rows are fitted);
* synthetic: ``make_classification(200_000, 50, n_informative=20, random_state=0)``, unscaled;

with K=1 (C=1) and K=16 (C = logspace(-3, 2, 16); scikit-learn fits them one after another,
``train_lbfgs`` all in one call).  Printed per case: time to solution -- wall seconds until every
configuration's objective is within 1e-5 (relative) of its optimum -- and the total time of the
run to its own stopping rule, each side by side with their ratio (scikit-learn / sweeplr).
For scikit-learn with K=16 the time to solution is the sum of each fit's own time to solution
(as if each fit were stopped the moment it got there), the total the sum of the fits.

How it is measured: each run records (time, parameters) after every iteration -- ``train_lbfgs``
by wrapping its private per-iteration method, scikit-learn by chaining a callback onto its
``scipy.optimize.minimize`` call -- and the objectives are computed afterwards in float64, so the
recording costs microseconds.  Both methods decrease the objective monotonically, so the first
iteration within tolerance is found by bisection over the recorded points.  The optimum of each
C is the best of a float64 ``train_lbfgs`` run to ``tolerance_grad=1e-9`` (``tolerance_change=1e-14``) and both recorded
runs' end points.

What differs between the two (same tolerance meaning as far as possible): ``tol`` is
scikit-learn's ``gtol`` (max |projected gradient| of the /(C n) objective) and sweeplr's
``tolerance_grad`` (max |gradient|, the same quantity without bounds); scikit-learn also stops on
a relative objective change of ``64 * eps``, sweeplr on an absolute one of ``tolerance_change``
(1e-9) and on a step below it; both keep 10 correction pairs (scipy's ``maxcor`` default;
``history_size=10``).  scipy's line search is Moré-Thuente (``maxls=50``) with a first step of
1/||g||, torch's the cubic strong-Wolfe search (c1=1e-4, c2=0.9 as scipy) with a first step of
min(1, 1/|g|_1); both work in float64 on the float32 data (sweeplr's solve, `--dtype`, is what
`sweeplr.fitting.lbfgs_dtype` picks).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import sklearn.linear_model._logistic as sk_logistic
import torch
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sweeplr.batched import lbfgs

TOL, HISTORY, MAX_ITER, RELATIVE = 1e-6, 10, 1000, 1e-5
Trace = list[tuple[float, np.ndarray]]  # (seconds since start, [K, F+1] weights then bias)


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    features, labels = load_breast_cancer(return_X_y=True)
    Xtr, _, ytr, _ = train_test_split(features, labels, test_size=0.33, random_state=42)
    return StandardScaler().fit_transform(Xtr).astype(np.float32), ytr


def synthetic(rows: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(rows, 50, n_informative=20, random_state=0)
    return X.astype(np.float32), y


def objective(X: np.ndarray, y: np.ndarray, params: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """The objective (1/n) sum s_i loss_i + l2/2 ||W||^2 for each row of ``params`` ([K, F+1]), in float64."""
    w, b = params[:, :-1].astype(np.float64), params[:, -1].astype(np.float64)
    z = X.astype(np.float64) @ w.T + b
    data = np.mean(np.logaddexp(0, z) - y[:, None] * z, axis=0)
    return data + 0.5 * l2 * np.sum(w * w, axis=1)


def first_within(
    X: np.ndarray, y: np.ndarray, trace: Trace, k: int, l2: float, target: float
) -> float:
    """Seconds at the first recorded point of configuration k within ``target`` (inf: none)."""

    def ok(i: int) -> bool:
        return bool(objective(X, y, trace[i][1][k : k + 1], np.array([l2]))[0] <= target)

    lo, hi = 0, len(trace) - 1
    if not ok(hi):
        return float("inf")
    while lo < hi:  # the objective only decreases along an L-BFGS run
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return trace[lo][0]


def run_sweeplr(
    X: np.ndarray, y: np.ndarray, cs: np.ndarray, dtype: torch.dtype
) -> tuple[float, Trace]:
    """One ``train_lbfgs`` call for all Cs in ``dtype``; (total seconds, per-iteration trace)."""
    yt = torch.from_numpy(y).long()
    k, n = len(cs), len(y)
    trace: Trace = []
    original = lbfgs._Run._iteration

    def recorded(self: Any, *args: Any) -> list[int]:
        alive = original(self, *args)
        trace.append((time.perf_counter() - start, self.P.cpu().numpy().copy()))
        return alive

    lbfgs._Run._iteration = recorded  # type: ignore[method-assign]
    try:
        weight, bias = torch.zeros(k, 1, X.shape[1], dtype=dtype), torch.zeros(k, 1, dtype=dtype)
        start = time.perf_counter()
        trace.append((0.0, torch.cat([weight[:, 0], bias], 1).numpy()))
        lbfgs.train_lbfgs(
            torch.from_numpy(X).to(dtype),  # timed: the fitting casts X once per pass
            yt,
            2,
            weight,
            bias,
            max_iter=MAX_ITER,
            history_size=HISTORY,
            tolerance_grad=TOL,
            penalty=SimpleNamespace(l2=torch.tensor(1.0 / (cs * n)), l1=0.0),
        )
        total = time.perf_counter() - start
    finally:
        lbfgs._Run._iteration = original  # type: ignore[method-assign]
    return total, trace


def run_sklearn(X: np.ndarray, y: np.ndarray, c: float) -> tuple[float, Trace]:
    """One scikit-learn fit; (seconds, per-iteration trace of [1, F+1] parameters)."""
    trace: Trace = []
    real = sk_logistic.optimize

    def minimize(*args: Any, callback: Callable[[np.ndarray], Any] | None = None, **kw: Any) -> Any:
        def record(xk: np.ndarray) -> Any:
            trace.append((time.perf_counter() - start, xk.copy()[None, :]))
            return callback(xk) if callback is not None else None

        return real.minimize(*args, callback=record, **kw)

    sk_logistic.optimize = SimpleNamespace(minimize=minimize)  # type: ignore[assignment]
    try:
        model = LogisticRegression(C=c, tol=TOL, max_iter=MAX_ITER)
        start = time.perf_counter()
        trace.append((0.0, np.zeros((1, X.shape[1] + 1))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        total = time.perf_counter() - start
    finally:
        sk_logistic.optimize = real
    return total, trace


def case(name: str, X: np.ndarray, y: np.ndarray, cs: np.ndarray, dtype: torch.dtype) -> None:
    n = len(y)
    l2 = 1.0 / (cs * n)
    run_sweeplr(X, y, cs[:1], dtype)  # warm-up (first-call costs of both libraries)
    run_sklearn(X, y, float(cs[0]))
    ours_total, ours_trace = run_sweeplr(X, y, cs, dtype)
    sk_runs = [run_sklearn(X, y, float(c)) for c in cs]
    # The optimum: float64 sweeplr run far past the benchmark's tolerance, or either run's end.
    exact = lbfgs.train_lbfgs(
        torch.from_numpy(X).double(),
        torch.from_numpy(y).long(),
        2,
        torch.zeros(len(cs), 1, X.shape[1], dtype=torch.float64),
        torch.zeros(len(cs), 1, dtype=torch.float64),
        max_iter=MAX_ITER,
        tolerance_grad=1e-9,
        tolerance_change=1e-14,
        penalty=SimpleNamespace(l2=torch.tensor(l2), l1=0.0),
    )
    exact_params = torch.cat([exact.weight[:, 0], exact.bias], 1).numpy()
    best = []
    for k in range(len(cs)):
        candidates = np.concatenate(
            [exact_params[k : k + 1], ours_trace[-1][1][k : k + 1], sk_runs[k][1][-1][1]]
        )
        best.append(float(objective(X, y, candidates, np.full(3, l2[k])).min()))
    targets = [b * (1 + RELATIVE) for b in best]
    ours_tts = max(first_within(X, y, ours_trace, k, l2[k], targets[k]) for k in range(len(cs)))
    sk_tts = sum(
        first_within(X, y, trace, 0, l2[k], targets[k]) for k, (_, trace) in enumerate(sk_runs)
    )
    sk_total = sum(total for total, _ in sk_runs)
    sk_iters = sum(len(trace) - 1 for _, trace in sk_runs)
    print(
        f"  {name:14s} K={len(cs):2d}  time to solution: sklearn {sk_tts:7.3f}  sweeplr "
        f"{ours_tts:7.3f}  ratio {sk_tts / ours_tts:5.2f}x  |  total: sklearn {sk_total:7.3f} "
        f"({sk_iters} it)  sweeplr {ours_total:7.3f} ({len(ours_trace) - 1} it)  "
        f"ratio {sk_total / ours_total:5.2f}x",
        flush=True,
    )


def compare_dtypes(name: str, X: np.ndarray, y: np.ndarray, cs: np.ndarray) -> None:
    """The float64 solve's cost against float32's: process CPU seconds, the best of 3."""
    best: dict[torch.dtype, tuple[float, int]] = {}
    for _ in range(3):
        for dtype in (torch.float32, torch.float64):
            start = time.process_time()
            _, trace = run_sweeplr(X, y, cs, dtype)
            seconds = time.process_time() - start
            best[dtype] = min(best.get(dtype, (math.inf, 0)), (seconds, len(trace) - 1))
    (s32, it32), (s64, it64) = best[torch.float32], best[torch.float64]
    print(
        f"  {name:14s} K={len(cs):2d}  CPU seconds: float32 {s32:7.3f} ({it32} it)  "
        f"float64 {s64:7.3f} ({it64} it)  float64/float32 {s64 / s32:5.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the synthetic case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64", help="sweeplr's solve"
    )
    parser.add_argument("--dtypes", action="store_true", help="float64's cost against float32's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; sweeplr in "
        f"{'float32 and float64' if args.dtypes else args.dtype}; seconds, tol={TOL}"
    )
    grid = np.logspace(-3, 2, 16)
    for name, (X, y) in (
        ("breast_cancer", breast_cancer()),
        (f"synthetic {args.rows // 1000}k", synthetic(args.rows)),
    ):
        for cs in (np.array([1.0]), grid):
            if args.dtypes:
                compare_dtypes(name, X, y, cs)
            else:
                case(name, X, y, cs, dtype)


if __name__ == "__main__":
    main()
