import pytest

from abcrown_plugins.training import EpsSchedule, lr_at, ramp_fraction


@pytest.mark.parametrize("shape", ["smooth", "linear"])
def test_ramp_is_monotone_from_0_to_1(shape):
    ts = [i / 200 for i in range(201)]
    vals = [ramp_fraction(t, shape) for t in ts]
    assert vals[0] == pytest.approx(0.0) and vals[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_eps_schedule_warmup_ramp_hold():
    s = EpsSchedule(eps=0.1, warmup_epochs=2, ramp_epochs=3, steps_per_epoch=10, shape="linear")
    assert s(0, 0) == 0 and s(1, 9) == 0
    assert 0 < s(2, 0) < s(3, 5) < 0.1
    assert s(4, 9) == pytest.approx(0.1) and s(9, 3) == pytest.approx(0.1)
    smooth = EpsSchedule(0.1, 2, 3, 10, "smooth")
    assert smooth(2, 5) < s(2, 5)  # smooth starts slower


def test_lr_steps():
    assert lr_at(0, 1.0, (2, 4), 0.1) == 1.0
    assert lr_at(2, 1.0, (2, 4), 0.1) == pytest.approx(0.1)
    assert lr_at(5, 1.0, (2, 4), 0.1) == pytest.approx(0.01)
