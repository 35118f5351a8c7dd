"""The bench's "lag flat" figure: the backlog's growth per second over the second half of the sends."""

from loadtest.run import lag_slope


def test_a_flat_lag_has_no_slope() -> None:
    samples = [(float(t), 500 + (t % 2) * 20) for t in range(60)]
    assert abs(lag_slope(samples, 30, 60)) < 2


def test_a_growing_lag_gives_the_shortfall_per_second() -> None:
    samples = [(float(t), 250 * t) for t in range(60)]
    assert lag_slope(samples, 30, 60) == 250.0


def test_only_the_window_counts() -> None:
    samples = [(float(t), 10_000 if t < 30 else 0) for t in range(60)]
    assert lag_slope(samples, 30, 60) == 0.0


def test_too_few_samples_say_nothing() -> None:
    assert lag_slope([(1.0, 5), (2.0, 900)], 0, 60) is None
