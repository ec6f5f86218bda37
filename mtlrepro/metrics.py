"""Task metrics and the relative improvement Delta_p of the RW paper.

Every task declares its metrics with a direction ("higher" or "lower" is
better); the metrics themselves are accumulated over whole evaluation sets by
:mod:`mtlrepro.accumulators`. Percentages are in percent, as in the papers.
"""

from __future__ import annotations

from collections.abc import Mapping

HIGHER = "higher"
LOWER = "lower"


def delta_p(
    method: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, Mapping[str, str]],
) -> float:
    """Relative improvement over a baseline, in percent (RW paper, Sec. 5, "Delta_p").

    ``delta_p = 100/T * sum_t 1/N_t * sum_n s_tn * (M_tn - B_tn) / B_tn`` with
    ``s_tn = +1`` when higher is better and ``-1`` when lower is better, so a
    positive value means better than the baseline. ``method`` and ``baseline``
    map task -> metric -> value; ``directions`` maps task -> metric -> direction.
    """
    per_task = []
    for task, metrics in directions.items():
        terms = []
        for name, direction in metrics.items():
            if direction not in (HIGHER, LOWER):
                raise ValueError(f"metric {task}.{name}: direction must be 'higher' or 'lower', got {direction!r}")
            base = baseline[task][name]
            if base == 0:
                raise ValueError(f"metric {task}.{name}: baseline value is 0, Delta_p is undefined")
            sign = 1.0 if direction == HIGHER else -1.0
            terms.append(sign * (method[task][name] - base) / base)
        per_task.append(sum(terms) / len(terms))
    return 100.0 * sum(per_task) / len(per_task)
