"""Standard errors and 95% intervals for evaluation metrics (pure Python, no torch).

Conventions, shared with Inspect AI's `stderr()` so every evaluator's numbers compare:

- the standard error of a mean over items uses the sample standard deviation (ddof=1):
  `stdev(values) / sqrt(n)`; it needs at least two items (`None` below two);
- an interval is `value ± z · stderr` with `z = 1.96` for 95% (the normal approximation),
  except where a proportion is 0 or 1 (every item agrees): there `wilson_interval` gives an
  honest interval instead of `± 0`;
- a metric's standard error is reported next to it as `<metric>_stderr`.

Example:
    >>> round(mean_stderr([1, 0, 1, 1]), 4)
    0.25
    >>> [round(x, 4) for x in wilson_interval(81, 263)]
    [0.2553, 0.3662]
    >>> round(pass_at_k(n=5, c=2, k=2), 4)
    0.7
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)
"""The two-sided 95% normal quantile, 1.95996..."""

STDERR_SUFFIX = "_stderr"


def mean_stderr(values: Sequence[float]) -> float | None:
    """The standard error of the mean of `values` (sample stdev, ddof=1, over sqrt(n));
    None for fewer than two values.

    Example:
        >>> mean_stderr([0.0, 1.0])
        0.5
        >>> mean_stderr([3.0]) is None
        True
    """
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def mean_with_stderr(name: str, values: Sequence[float]) -> dict[str, float]:
    """`{name: mean, name_stderr: its standard error}`; the stderr key is left out for fewer
    than two values (a standard error needs two).

    Example:
        >>> mean_with_stderr("accuracy", [1.0, 0.0, 1.0, 1.0])
        {'accuracy': 0.75, 'accuracy_stderr': 0.25}
    """
    if not values:
        raise ValueError(f"mean_with_stderr({name!r}, []): no values to average.")
    result = {name: math.fsum(values) / len(values)}
    stderr = mean_stderr(values)
    if stderr is not None:
        result[name + STDERR_SUFFIX] = stderr
    return result


def ratio_stderr(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """The standard error of `sum(numerators) / sum(denominators)` over independent items
    (delta method, clustered by item, with the n/(n-1) correction): the right error for a
    per-token loss averaged over examples of different lengths. Items with a zero denominator
    do not count. With equal denominators it equals `mean_stderr` of the per-item ratios.

    Example:
        >>> round(ratio_stderr([2.0, 6.0], [1.0, 1.0]), 4) == mean_stderr([2.0, 6.0])
        True
        >>> round(ratio_stderr([1.0, 9.0, 4.0], [1.0, 3.0, 2.0]), 4)
        0.5092
    """
    pairs = [(s, w) for s, w in zip(numerators, denominators, strict=True) if w != 0]
    n = len(pairs)
    if n < 2:
        return None
    total = math.fsum(w for _, w in pairs)
    ratio = math.fsum(s for s, _ in pairs) / total
    residuals = math.fsum((s - ratio * w) ** 2 for s, w in pairs)
    return math.sqrt(n / (n - 1) * residuals) / abs(total)


def normal_interval(value: float, stderr: float, z: float = Z95) -> tuple[float, float]:
    """`value ± z · stderr` (95% by default).

    Example:
        >>> [round(x, 3) for x in normal_interval(0.5, 0.1)]
        [0.304, 0.696]
    """
    return value - z * stderr, value + z * stderr


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion `successes / n` (95% by default).
    Unlike `p ± z·stderr` it stays inside [0, 1] and is not a point when every trial agrees:
    0 of 20 gives [0, 0.161].

    Example:
        >>> [round(x, 4) for x in wilson_interval(0, 20)]
        [0.0, 0.1611]
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval({successes}, {n}): expected 0 <= successes <= n, n >= 1."
        )
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(
    successes_a: float, n_a: int, successes_b: float, n_b: int, z: float = Z95
) -> tuple[float, float]:
    """An interval for `p_b - p_a` of two independent proportions from their Wilson intervals
    (Newcombe 1998, method 10): sound for small samples and rates near 0 or 1.

    Example:
        >>> [round(x, 4) for x in newcombe_interval(48, 80, 56, 70)]
        [0.0524, 0.3339]
    """
    p_a, p_b = successes_a / n_a, successes_b / n_b
    low_a, high_a = wilson_interval(successes_a, n_a, z)
    low_b, high_b = wilson_interval(successes_b, n_b, z)
    diff = p_b - p_a
    return (
        diff - math.sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2),
        diff + math.sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2),
    )


def is_binary_mean(value: float, stderr: float | None, n: int) -> bool:
    """Whether a mean over `n` items with this (ddof=1) standard error can only come from 0/1
    values: then `stderr == sqrt(p(1-p)/(n-1))`. Lets an interval treat an accuracy as a
    binomial proportion without seeing its items.

    Example:
        >>> is_binary_mean(0.5, math.sqrt(0.25 / 3), 4), is_binary_mean(0.5, 0.1, 4)
        (True, False)
    """
    if n < 2 or stderr is None or not 0 <= value <= 1:
        return False
    successes = value * n
    if abs(successes - round(successes)) > 1e-6 * n:
        return False
    return math.isclose(stderr, math.sqrt(value * (1 - value) / (n - 1)), abs_tol=1e-9)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate of one item with `c` correct answers among `n` samples
    (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"):
    `1 - C(n - c, k) / C(n, k)`, the chance that k answers drawn without replacement from the
    n include a correct one.

    Example:
        >>> pass_at_k(n=4, c=1, k=1), pass_at_k(n=4, c=1, k=4), pass_at_k(n=4, c=0, k=2)
        (0.25, 1.0, 0.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k(n={n}, c={c}, k={k}): expected 0 <= c <= n and 1 <= k <= n.")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def paired_difference(
    before: Sequence[float], after: Sequence[float]
) -> tuple[float, float | None]:
    """`mean(after - before)` over the same items and its standard error: pairing removes the
    items' own spread, so it is much tighter than comparing two independent means.

    Example:
        >>> paired_difference([0, 1, 1, 0], [1, 1, 1, 0])
        (0.25, 0.25)
    """
    if len(before) != len(after) or not before:
        raise ValueError(
            f"paired_difference: got {len(before)} and {len(after)} values; expected the same "
            "items (at least one) on both sides."
        )
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    return math.fsum(diffs) / len(diffs), mean_stderr(diffs)


def unpaired_stderr(stderr_a: float, stderr_b: float) -> float:
    """The standard error of the difference of two independent means.

    Example:
        >>> unpaired_stderr(0.3, 0.4)
        0.5
    """
    return math.hypot(stderr_a, stderr_b)
