"""torch's strong-Wolfe line search (``torch.optim.lbfgs._strong_wolfe``, BSD-3-Clause, ported
from torch 2.13) as a generator, so that `sweeplr.batched.lbfgs` can batch the evaluations of
many line searches.

Ported code, kept in torch's shape (same branches in the same order, so each configuration
follows torch's search step for step): `strong_wolfe` is longer than this package's other
functions on purpose, and is excepted from its 80-line limit.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

# A line search yields trial steps t and is sent (f, gtd, payload) for each; it returns
# (f, payload, t, evaluations) of the accepted point.  The payload is opaque to it: the driver
# uses (round, row) to find the trial's parameters and gradient again (None: the start point).
LineSearch = Generator[float, tuple[float, float, Any], tuple[float, Any, float, int]]


@np.errstate(all="ignore")
def cubic_interpolate(
    x1: float,
    f1: float,
    g1: float,
    x2: float,
    f2: float,
    g2: float,
    bounds: tuple[float, float] | None = None,
) -> float:
    """torch.optim.lbfgs._cubic_interpolate (BSD-3-Clause, ported from torch 2.13), on float64.

    numpy scalars, with their warnings off, so that a zero division (a bracket that collapsed
    to a point) gives inf/nan silently as torch's tensors do, not an exception.
    """
    x1, f1, g1, x2, f2, g2 = (np.float64(v) for v in (x1, f1, g1, x2, f2, g2))
    if bounds is not None:
        xmin_bound, xmax_bound = np.float64(bounds[0]), np.float64(bounds[1])
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return float(min(max(min_pos, xmin_bound), xmax_bound))
    return float((xmin_bound + xmax_bound) / 2.0)


def strong_wolfe(
    t: float,
    f: float,
    gtd: float,
    d_norm: float,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
    c1: float = 1e-4,
    c2: float = 0.9,
) -> LineSearch:
    """torch.optim.lbfgs._strong_wolfe (BSD-3-Clause, ported from torch 2.13) as a generator.

    Same branches in the same order; instead of calling ``obj_func(x, t, d)`` it yields ``t``
    and receives ``(f_new, gtd_new, payload)``, so the caller can batch the evaluations of many
    line searches.  Gradients are carried as payloads because only the accepted point's is
    needed (torch clones them into the bracket; the values are the same).
    """
    f, gtd, t = float(f), float(gtd), float(t)
    g: Any = None  # payload of the start point
    f_new, gtd_new, g_new = yield t
    f_new, gtd_new = float(f_new), float(gtd_new)
    ls_func_evals = 1

    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list[float] = []
    bracket_f: list[float] = []
    bracket_g: list[Any] = []
    bracket_gtd: list[float] = []
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = cubic_interpolate(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step)
        )
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, gtd_new, g_new = yield t
        f_new, gtd_new = float(f_new), float(gtd_new)
        ls_func_evals += 1
        ls_iter += 1

    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, gtd_new, g_new = yield t
        f_new, gtd_new = float(f_new), float(gtd_new)
        ls_func_evals += 1
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals
