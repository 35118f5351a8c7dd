"""The forecast model, its error measure and its baseline; pure functions over counts and ``HourDrivers``.

The model is a Poisson regression with a log link (a GLM, fitted by statsmodels' IRLS) of the orders in
each hour:

    log E[orders] = hour-of-day effect                       (24 terms: the daily curve)
                  + day-off effect for each part of the day  (4 terms: weekends and holidays shop later)
                  + public-holiday effect + external drivers
                  + log(promotion intensity)                 (an offset: the calendar's planned effect)

Effects multiply, so a promotion twice as strong doubles whatever the hour would bring, at 04:00 as at
21:00, and a Double-11 far stronger than anything in the history is still forecast as that much stronger
(a tree model would cap it at the strongest promotion it has seen). In the fit each promotion in the
history also gets a term of its own, so however much it over- or under-delivered is absorbed there
instead of bending the ordinary daily curve; those terms also tell how much of their planned uplift
promotions actually brought (``realisation``), which scales the uplift of the promotions ahead.

Terms the history cannot tell anything about (no public holiday in the window, no day off) are left out
of the fit and count 0 in the forecast: such an hour is forecast like an ordinary one. An hour of the day
the history does not reach at all (less than a day of orders) is forecast at the seen hours' average.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agents.forecast.drivers import HourDrivers

Matrix = npt.NDArray[np.float64]
HOURS_A_WEEK = 168
# Where a day off differs from a working day: the night, the morning commute, the day, the evening.
DAY_PARTS = ((0, 7), (7, 10), (10, 18), (18, 24))
# The realisation estimate starts from this many promotions' worth of "delivered as planned", so one
# promotion in the history moves it only part of the way (and none leaves it at 1).
REALISATION_PRIOR = 1.0
REALISATION_BOUNDS = (0.25, 2.0)


def column_names(extra_names: Sequence[str] = ()) -> list[str]:
    return [*(f"hour_{h:02d}" for h in range(24)), *(f"day_off_{a:02d}_{b:02d}" for a, b in DAY_PARTS),
            "holiday", *(f"x_{n}" for n in extra_names)]  # fmt: skip


def profile_matrix(hours: Sequence[HourDrivers], n_extra: int) -> Matrix:
    """The design rows of the ordinary-hour profile (everything but promotions)."""
    x = np.zeros((len(hours), 24 + len(DAY_PARTS) + 1 + n_extra))
    for i, hd in enumerate(hours):
        x[i, hd.hour_of_day] = 1.0
        if hd.day_off:
            part = next(p for p, (a, b) in enumerate(DAY_PARTS) if a <= hd.hour_of_day < b)
            x[i, 24 + part] = 1.0
        x[i, 24 + len(DAY_PARTS)] = 1.0 if hd.holiday else 0.0
        if n_extra:
            x[i, 24 + len(DAY_PARTS) + 1 :] = hd.extra
    return x


def _identifiable(x: Matrix, hours: Sequence[HourDrivers]) -> npt.NDArray[np.bool_]:
    keep: npt.NDArray[np.bool_] = np.abs(x).sum(axis=0) > 0
    first_extra = 24 + len(DAY_PARTS) + 1
    if all(hd.day_off for hd in hours):  # only days off: their terms would just repeat the hour-of-day ones
        keep[24:first_extra] = False
    if all(hd.holiday for hd in hours):
        keep[first_extra - 1] = False
    for j in range(first_extra, x.shape[1]):
        keep[j] = bool(np.ptp(x[:, j]) > 0)
    return keep


@dataclass(frozen=True)
class FittedModel:
    coef: tuple[float, ...]  # per profile column; 0 for the terms left out
    n_extra: int
    realisation: float  # share of planned promotion uplift the history's promotions delivered (shrunk to 1)
    promotions_seen: int
    history_hours: int
    history_orders: float

    def ordinary(self, hours: Sequence[HourDrivers]) -> list[float]:
        """Orders per hour without the promotions."""
        eta = profile_matrix(hours, self.n_extra) @ np.asarray(self.coef)
        return [float(v) for v in np.exp(np.minimum(eta, 50.0))]

    def predict(self, hours: Sequence[HourDrivers]) -> list[float]:
        """Orders per hour: the ordinary hour times its promotion's planned effect, as promotions realise it."""
        return [base * (1.0 + (hd.intensity - 1.0) * self.realisation)
                for base, hd in zip(self.ordinary(hours), hours, strict=True)]  # fmt: skip


def _glm_coefficients(y: Matrix, x: Matrix, offset: Matrix) -> Matrix:
    from statsmodels.genmod.families import Poisson
    from statsmodels.genmod.generalized_linear_model import GLM

    with warnings.catch_warnings():
        # An hour of the day with no order in the whole window drives its term towards -inf (perfect
        # separation); statsmodels warns, and the forecast for that hour is, rightly, about 0.
        warnings.simplefilter("ignore")
        params = GLM(y, x, family=Poisson(), offset=offset).fit(maxiter=100).params
    result: Matrix = np.asarray(params, dtype=np.float64)
    return result


def fit(counts: Sequence[float], hours: Sequence[HourDrivers]) -> FittedModel:
    """Fit on a history: orders per hour and the drivers of those hours."""
    if len(counts) != len(hours):
        raise ValueError(f"{len(counts)} counts for {len(hours)} hours")
    y = np.asarray(counts, dtype=np.float64)
    if not len(y) or y.sum() <= 0:
        raise ValueError("no orders in the history to learn from")
    n_extra = len(hours[0].extra)
    profile = profile_matrix(hours, n_extra)
    keep = _identifiable(profile, hours)
    promotions = sorted({hd.promotion for hd in hours if hd.promotion})
    dummies = np.zeros((len(hours), len(promotions)))
    column = {key: j for j, key in enumerate(promotions)}
    for i, hd in enumerate(hours):
        if hd.promotion:
            dummies[i, column[hd.promotion]] = 1.0
    offset = np.log(np.asarray([hd.intensity for hd in hours]))
    params = _glm_coefficients(y, np.hstack([profile[:, keep], dummies]), offset)
    if not np.all(np.isfinite(params)):
        raise ValueError("the model did not converge on this history")
    coef = np.zeros(profile.shape[1])
    coef[keep] = params[: int(keep.sum())]
    seen = keep[:24]
    if not seen.all():  # less than a day of history: an hour of the day not seen gets the seen hours' average
        coef[:24][~seen] = math.log(float(np.mean(np.exp(coef[:24][seen]))))
    delivered = params[int(keep.sum()) :]
    planned = [float(np.mean([hd.intensity for hd in hours if hd.promotion == key])) for key in promotions]
    return FittedModel(tuple(float(c) for c in coef), n_extra, realisation(planned, [float(d) for d in delivered]),
                       len(promotions), len(hours), float(y.sum()))  # fmt: skip


def realisation(planned: Sequence[float], delivered_log_ratio: Sequence[float]) -> float:
    """How much of their planned uplift promotions brought: sum of delivered uplift over sum of planned, over
    promotions planned to lift orders, with ``REALISATION_PRIOR`` promotions' worth of 1 added to both."""
    lifting = [(p, p * math.exp(d)) for p, d in zip(planned, delivered_log_ratio, strict=True) if p > 1.0]
    planned_uplift = sum(p - 1.0 for p, _ in lifting) + REALISATION_PRIOR
    delivered_uplift = sum(r - 1.0 for _, r in lifting) + REALISATION_PRIOR
    low, high = REALISATION_BOUNDS
    return min(high, max(low, delivered_uplift / planned_uplift))


def wape(actual: Sequence[float], forecast: Sequence[float]) -> float:
    """Weighted absolute percentage error: sum of |actual - forecast| over the sum of actual."""
    if len(actual) != len(forecast):
        raise ValueError(f"{len(actual)} actual values for {len(forecast)} forecast ones")
    total = float(sum(actual))
    error = float(sum(abs(a - f) for a, f in zip(actual, forecast, strict=True)))
    if total <= 0:
        return 0.0 if error == 0 else math.inf
    return error / total


def accuracy(actual: Sequence[float], forecast: Sequence[float]) -> float:
    """1 - WAPE: 1 is exact; 0.89 means the hourly errors add up to 11% of the orders."""
    return 1.0 - wape(actual, forecast)


def seasonal_naive(history: Sequence[float], horizon: int, season: int = HOURS_A_WEEK) -> list[float]:
    """The baseline: each hour ahead forecast as the same hour one season (a week) before."""
    if len(history) < season:
        raise ValueError(f"the seasonal-naive forecast needs {season} hours of history, not {len(history)}")
    last = list(history[-season:])
    return [float(last[i % season]) for i in range(horizon)]
