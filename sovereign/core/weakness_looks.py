"""The weakness analyser's repeated looks at an account's trades (``core.weakness``): the
error budget spent across looks, the confirmation of a candidate, and the retirement test.

Repeated looks. The self-modification engine analyses its trades again and again as they
accumulate. Each look's Benjamini-Hochberg level is a share of one error budget ``alpha``
per account, spent across looks (``spending``: look ``k`` gets ``alpha * 6 / (pi^2 k^2)``,
which sums to ``alpha`` over all looks). Under the global null (no slice differs) a look
finds anything with probability at most its level, so the probability that any look ever
finds a false weakness is at most ``alpha``, however many looks there are (a union bound:
it needs no independence between looks). A weakness found at a look is then only a
*candidate*: it is confirmed on the trades that closed after it was found
(``confirm_weakness``: the same one-sided tests on the new trades alone, at
the account's ``alpha``), once, when enough of them have accumulated; a candidate that
does not hold on new data is dropped. A weakness whose rule was retired is a candidate
again only if the trades since the retirement show it too, at the look's level.

Retirement. A deployed rule is looked at again on its own record since its deployment
(``retirement_test``: the trades it prevented, followed by the shards' shadow book, against
the trades it kept), with the same spending of a budget ``alpha`` across its own looks,
and retired (or, for a size cut, relaxed towards 1) when the record rejects that it still
helps by the lower 95 % bound of the effect it was confirmed with.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from sovereign.core.codegen import eval_condition
from sovereign.core.weakness import TradeSample
from sovereign.core.weakness_stats import fisher_less, mean_or_nan, welch_less
from sovereign.domain.rules import Condition

__all__ = [
    "CONFIRM_LEVEL",
    "Confirmation",
    "RetirementTest",
    "confirm_weakness",
    "retirement_test",
    "spending",
]

CONFIRM_LEVEL = 0.05
"""The default level of the one look at a candidate's new trades (``confirm_weakness``);
the engine uses the account's ``alpha``."""


def spending(look: int, alpha: float) -> float:
    """The share of the error budget ``alpha`` that look number ``look`` (from 1) may spend:
    ``alpha * 6 / (pi^2 look^2)``. The shares sum to ``alpha`` over all looks."""
    if look < 1:
        raise ValueError(f"looks are numbered from 1, got {look}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha * 6.0 / (math.pi**2 * look * look)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The look at a candidate's new trades: whether it still holds, and the figures."""

    holds: bool
    n: int
    rest_n: int
    mean_return: float
    rest_mean_return: float
    p_value: float
    test: str
    se: float = math.nan  # standard error of the difference of the two means


def confirm_weakness(
    new_trades: TradeSample, condition: Condition, *, level: float = CONFIRM_LEVEL
) -> Confirmation:
    """Whether a candidate weakness holds on trades it was not found on.

    The slice is ``condition`` evaluated on ``new_trades`` (which closed after the
    candidate was found); it holds when its mean return is below the rest's and one of the
    two one-sided tests of the analysis (Welch's t on returns, Fisher's exact on wins) has
    ``p <= level / 2`` (the two tests share the level). The caller looks once."""
    trades = new_trades.select(np.isfinite(new_trades.pnl) & np.isfinite(new_trades.return_pct))
    mask = eval_condition(condition, trades.rule_features())
    inside, outside = trades.return_pct[mask], trades.return_pct[~mask]
    n_in, n_out = int(mask.sum()), int((~mask).sum())
    if n_in < 2 or n_out < 2:
        return Confirmation(
            False, n_in, n_out, mean_or_nan(inside), mean_or_nan(outside), 1.0, "none"
        )
    _, p_welch = welch_less(inside, outside)
    wins_in = int(trades.win[mask].sum())
    _, p_fisher = fisher_less(wins_in, n_in, int(trades.win[~mask].sum()), n_out)
    test, p = ("welch_t", p_welch) if p_welch <= p_fisher else ("fisher_exact", p_fisher)
    # Two tests, the smaller p: each at half the level (Bonferroni), so the look as a
    # whole is at ``level``.
    holds = p <= level / 2 and mean_or_nan(inside) < mean_or_nan(outside)
    se = math.sqrt(float(np.var(inside, ddof=1)) / n_in + float(np.var(outside, ddof=1)) / n_out)
    return Confirmation(holds, n_in, n_out, mean_or_nan(inside), mean_or_nan(outside), p, test, se)


@dataclass(frozen=True, slots=True)
class RetirementTest:
    """Whether a rule's record says it no longer earns its place (``retirement_test``)."""

    n: int
    kept_n: int
    mean_return: float
    kept_mean_return: float
    margin: float
    statistic: float
    p_value: float


def retirement_test(prevented: np.ndarray, kept: np.ndarray, *, margin: float) -> RetirementTest:
    """A one-sided Welch t-test of a deployed rule's record since its deployment.

    ``prevented`` are the returns of the trades the rule acted on (its shadow trades for a
    skip, its scaled trades for a size cut), ``kept`` those of the trades it left alone.
    The null hypothesis is that the rule still helps by at least ``margin`` (the prevented
    trades return at least ``margin`` less than the kept ones on average); it is rejected,
    and the rule retired, on evidence that ``mean(prevented) + margin > mean(kept)``. With
    ``margin`` the lower 95 % bound of the effect measured when the rule was confirmed, a
    weakness that disappears is retired once its record is long enough, and one that
    stays is retired with a probability of at most the level the test is run at."""
    prevented = prevented[np.isfinite(prevented)]
    kept = kept[np.isfinite(kept)]
    n, k = int(prevented.size), int(kept.size)
    if n < 2 or k < 2:
        return RetirementTest(
            n, k, mean_or_nan(prevented), mean_or_nan(kept), margin, math.nan, 1.0
        )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(prevented + margin, kept, equal_var=False, alternative="greater")
    p = float(res.pvalue)
    return RetirementTest(
        n,
        k,
        mean_or_nan(prevented),
        mean_or_nan(kept),
        margin,
        float(res.statistic),
        p if math.isfinite(p) else 1.0,
    )
