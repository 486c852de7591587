import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowception_ext.schedules import (CosineKappa, EarlyKappa, LinearKappa, LogitNormalTime, PolynomialKappa, UniformTime,
                                       kappa_from_name, time_distribution_from_name)

SCHEDULERS = [LinearKappa(), PolynomialKappa(2.0), PolynomialKappa(0.5), CosineKappa(), EarlyKappa(), EarlyKappa(1.5)]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=lambda s: str(s.to_dict()))
def test_hazard_matches_finite_differences(sched):
    t = torch.linspace(0.02, 0.95, 200, dtype=torch.float64)
    h = 1e-6
    dk = (sched.kappa(t + h) - sched.kappa(t - h)) / (2 * h)
    expected = dk / (1 - sched.kappa(t))
    torch.testing.assert_close(sched.hazard(t), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=lambda s: str(s.to_dict()))
def test_kappa_inverse_endpoints_monotone(sched):
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(sched.kappa(sched.inverse(u)), u, rtol=0, atol=1e-12)
    assert sched.kappa(0.0) == 0.0 and abs(sched.kappa(1.0) - 1.0) < 1e-15
    k = sched.kappa(u)
    assert (k.diff() >= 0).all()
    assert sched.hazard(1.0) == 0.0 and sched.hazard(1.5) == 0.0


def test_linear_hazard_closed_form():
    t = torch.tensor([0.0, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(LinearKappa().hazard(t), 1 / (1 - t))


def test_early_hazard_closed_form_and_median():
    t = torch.tensor([0.0, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(EarlyKappa(5.0).hazard(t), 5 / (1 - t))  # finite at 0, unlike t^p with p < 1
    assert math.isclose(EarlyKappa(20.0).hazard(0.85), 20 / 0.15)  # where 1 − κ rounds to 0 in float64
    assert math.isclose(EarlyKappa(5.0).inverse(0.5), 1 - 2 ** -0.2)
    assert EarlyKappa(1.0).to_dict() == {"name": "early", "power": 1.0}
    torch.testing.assert_close(EarlyKappa(1.0).kappa(t), LinearKappa().kappa(t))


def test_float_in_float_out():
    assert isinstance(LinearKappa().hazard(0.5), float)
    assert math.isclose(CosineKappa().inverse(CosineKappa().kappa(0.3)), 0.3)


def test_time_distributions():
    g = torch.Generator().manual_seed(0)
    for dist in (LogitNormalTime(), UniformTime()):
        s = dist.sample((20000,), generator=g)
        assert s.min() > 0 and s.max() < 1
        assert abs(float(s.mean()) - 0.5) < 0.01
    # logit-normal: logit(s) ~ N(0, 1)
    s = LogitNormalTime().sample((20000,), generator=g)
    z = torch.logit(s)
    assert abs(float(z.std()) - 1.0) < 0.03


def test_logit_normal_uniform_fraction():
    """With ``uniform_fraction = q``, P(s < x) = q·x + (1 − q)·Φ(logit x); q = 0 draws as before."""
    g = torch.Generator().manual_seed(1)
    s = LogitNormalTime(uniform_fraction=0.3).sample((40000,), generator=g).numpy()
    cdf = lambda x: 0.3 * x + 0.7 * stats.norm.cdf(np.log(x) - np.log1p(-x))
    assert stats.kstest(s, cdf).pvalue > 1e-4
    assert stats.kstest(s, lambda x: stats.norm.cdf(np.log(x) - np.log1p(-x))).pvalue < 1e-6  # the test can fail
    a = LogitNormalTime().sample((100,), generator=torch.Generator().manual_seed(2))
    b = LogitNormalTime(uniform_fraction=0.0).sample((100,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert time_distribution_from_name(LogitNormalTime(uniform_fraction=0.3).to_dict()) == LogitNormalTime(uniform_fraction=0.3)
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="uniform_fraction"):
            LogitNormalTime(uniform_fraction=bad)


def test_from_name_roundtrip_and_errors():
    for sched in SCHEDULERS:
        assert kappa_from_name(sched.to_dict()) == sched
    assert time_distribution_from_name("uniform") == UniformTime()
    with pytest.raises(ValueError, match="unknown kappa"):
        kappa_from_name("quadratic")
    with pytest.raises(ValueError, match="power"):
        PolynomialKappa(0.0)
    with pytest.raises(ValueError, match="power must be >= 1"):
        EarlyKappa(0.5)
    with pytest.raises(TypeError, match="kappa scheduler"):
        kappa_from_name(3)
