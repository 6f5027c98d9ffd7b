"""Interleaved rounds for the benchmarks: every side once per round, in alternating order, then min and median.

The machine is shared (2 cores, other work on them): a side measured alone can land in a quiet or a busy
minute.  Running the sides in the same rounds, ABBA-ordered (``a b``, then ``b a``), makes the noise hit them
alike, and the ratio of mins (the least noisy figure) and of medians is what a benchmark reports::

    results = interleave(3, {"floor": run_floor, "certkeeper": run_certkeeper})
    report("ACME, 20 certificates", results, goal=1.3)

Each side is called with the round number (fresh names or folders per round) and returns the seconds of the
part that is measured, so that setup stays outside the figure.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

Side = Callable[[int], float]


def interleave(rounds: int, sides: Mapping[str, Side]) -> dict[str, list[float]]:
    """Seconds per side and round; odd rounds run the sides in reverse order."""
    names = list(sides)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else reversed(names):
            results[name].append(sides[name](round_number))
    return results


def ratios(results: Mapping[str, list[float]], side: str, baseline: str) -> tuple[float, float]:
    """``side`` over ``baseline``: (min over min, median over median)."""
    return (min(results[side]) / min(results[baseline]),
            statistics.median(results[side]) / statistics.median(results[baseline]))


def report(title: str, results: Mapping[str, list[float]], *, baseline: str = "floor", goal: float | None = None,
           out: TextIO = sys.stdout) -> dict[str, tuple[float, float]]:
    """Print min and median of every side and each side's ratio to ``baseline``; return the ratios."""
    rounds = len(next(iter(results.values()), []))
    print(f"{title} ({rounds} interleaved rounds)", file=out)
    found: dict[str, tuple[float, float]] = {}
    for name, seconds in results.items():
        line = f"  {name:>12}  min {min(seconds):8.3f} s  median {statistics.median(seconds):8.3f} s"
        if name != baseline and baseline in results:
            found[name] = low, middle = ratios(results, name, baseline)
            verdict = "" if goal is None else ("  ok" if low <= goal else "  MISSED") + f" (goal <= {goal:g}x)"
            line += f"  /{baseline}: min {low:6.3f}x  median {middle:6.3f}x{verdict}"
        print(line, file=out)
    return found
