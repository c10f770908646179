import numpy as np
import pytest

from clients.profiles import Distribution, compute_speeds


@pytest.mark.parametrize(
    "dist",
    [
        Distribution(),
        Distribution(kind="uniform", low=2.0, high=5.0),
        Distribution(kind="lognormal", mean=3.0, sigma=0.7),
        Distribution(kind="exponential", mean=2.0),
    ],
)
def test_sample_shape_dtype_and_determinism(dist):
    a = dist.sample(1000, np.random.default_rng(0))
    assert a.shape == (1000,) and a.dtype == np.float64
    np.testing.assert_array_equal(a, dist.sample(1000, np.random.default_rng(0)))
    if dist.kind != "constant":
        assert not np.array_equal(a, dist.sample(1000, np.random.default_rng(1)))


def test_constant():
    np.testing.assert_array_equal(Distribution(value=2.5).sample(4, np.random.default_rng(0)), [2.5] * 4)


def test_uniform_stays_in_bounds():
    x = Distribution(kind="uniform", low=2.0, high=5.0).sample(20000, np.random.default_rng(0))
    assert x.min() >= 2.0 and x.max() < 5.0
    assert x.mean() == pytest.approx(3.5, abs=0.05)


def test_lognormal_median_is_mean():
    x = Distribution(kind="lognormal", mean=3.0, sigma=0.7).sample(20000, np.random.default_rng(0))
    assert np.median(x) == pytest.approx(3.0, rel=0.03)
    assert np.std(np.log(x)) == pytest.approx(0.7, rel=0.03)


def test_exponential_mean():
    x = Distribution(kind="exponential", mean=2.0).sample(20000, np.random.default_rng(0))
    assert x.mean() == pytest.approx(2.0, rel=0.03)
    assert x.min() >= 0.0


def test_from_spec():
    assert Distribution.from_spec(4) == Distribution(kind="constant", value=4.0)
    assert Distribution.from_spec(0.25).value == 0.25
    d = Distribution.from_spec({"kind": "uniform", "low": 1, "high": 2})
    assert d == Distribution(kind="uniform", low=1.0, high=2.0)
    assert isinstance(d.low, float) and isinstance(d.high, float)
    assert Distribution.from_spec(d) is d


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "uniform", "lo": 1}, "unknown distribution key.*lo; valid keys: kind, value, low, high, mean, sigma"),
        ({"kind": "gamma"}, "unknown distribution kind 'gamma'; choose one of constant, uniform, uniform_int, lognormal, exponential"),
        ("fast", "must be a number or a mapping"),
        (True, "must be a number or a mapping"),
    ],
)
def test_from_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        Distribution.from_spec(spec)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="uniform", low=3.0, high=1.0), r"low \(3.0\) must not exceed high \(1.0\)"),
        (dict(kind="lognormal", sigma=-0.1), "sigma must be >= 0"),
        (dict(kind="exponential", mean=0.0), "mean must be > 0"),
        (dict(value=float("nan")), "value must be a finite number"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Distribution(**kwargs)


def test_compute_speeds():
    speeds = compute_speeds(Distribution(kind="lognormal", mean=100.0, sigma=1.0), 500, np.random.default_rng(0))
    assert speeds.shape == (500,) and (speeds > 0).all()
    for bad in (Distribution(value=0.0), Distribution(kind="uniform", low=0.0, high=10.0)):
        with pytest.raises(ValueError, match="compute speeds must be > 0"):
            compute_speeds(bad, 10, np.random.default_rng(0))


def test_uniform_int_gives_whole_numbers_in_range_and_inf_constant_is_allowed():
    import numpy as np

    d = Distribution.from_spec({"kind": "uniform_int", "low": 8, "high": 12})
    x = d.sample(10_000, np.random.default_rng(0))
    assert set(np.unique(x).tolist()) == {8.0, 9.0, 10.0, 11.0, 12.0}
    assert np.array_equal(d.quantile(np.array([0.0, 0.999999])), [8.0, 12.0])
    assert Distribution.from_spec(float("inf")).sample(2, np.random.default_rng(0)).tolist() == [np.inf] * 2
    with pytest.raises(ValueError):
        Distribution(kind="uniform", low=float("inf"), high=float("inf"))
