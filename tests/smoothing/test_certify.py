"""The randomized-smoothing certificate: closed forms, sampling contract, input checks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import beta, binomtest, norm

from abcrown_plugins.errors import UserError
from abcrown_plugins.smoothing import (
    ABSTAIN,
    certify,
    decide,
    max_certifiable_radius,
    noise_batches,
    predict,
    radius_from_counts,
    sample_counts,
    warn_unreachable,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear_forward(w: torch.Tensor):
    """A fixed linear classifier on flattened inputs (its own decision regions, no training)."""

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1) @ w

    return forward


def test_radius_equals_closed_form_from_the_same_counts():
    x = torch.rand(1, 4, 4, generator=_gen(1))
    w = torch.randn(16, 3, generator=_gen(2))
    forward = _linear_forward(w)
    res = certify(forward, x, n0=20, n=500, alpha=0.01, sigma=0.3, num_classes=3, batch_size=64, generator=_gen(3))
    assert sum(res.counts) == 500 and len(res.counts) == 3
    # recompute the selection from the same generator stream, then the bound in closed form
    g = _gen(3)
    selection = sample_counts(forward, x, 20, 0.3, 3, 64, g)
    c_a = int(selection.argmax())
    counts = sample_counts(forward, x, 500, 0.3, 3, 64, g)
    assert counts.tolist() == res.counts
    n_a = res.counts[c_a]
    p_lower = beta.ppf(0.01, n_a, 500 - n_a + 1)
    assert res.pA_lower == pytest.approx(p_lower, rel=1e-12)
    if p_lower > 0.5:
        assert res.prediction == c_a
        assert res.radius == pytest.approx(0.3 * norm.ppf(p_lower), rel=1e-12)
    else:
        assert res.prediction == ABSTAIN and res.radius == 0.0


def test_decide_abstains_exactly_when_pA_lower_is_at_most_one_half():
    n, alpha, sigma = 60, 0.01, 0.5
    selection = torch.tensor([1, 7, 2])  # cA = 1, whatever the estimation counts favour
    decisions = set()
    for hits in range(n + 1):
        counts = torch.tensor([n - hits, hits, 0])
        res = decide(selection, counts, 10, n, alpha, sigma, 1.5)
        p_lower = radius_from_counts(hits, n, alpha, sigma)[0]
        assert res.pA_lower == p_lower and res.counts == counts.tolist() and res.time_s == 1.5
        assert (res.n0, res.n, res.alpha, res.sigma) == (10, n, alpha, sigma)
        if p_lower <= 0.5:
            assert res.prediction == ABSTAIN and res.radius == 0.0
        else:
            assert res.prediction == 1 and res.radius == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-12)
        decisions.add(res.prediction)
    assert decisions == {ABSTAIN, 1}  # both sides of the threshold were reached


def test_certify_is_decide_on_its_sample_counts():
    x = torch.rand(1, 4, 4, generator=_gen(11))
    forward = _linear_forward(torch.randn(16, 3, generator=_gen(12)))
    predictions = []
    for sigma in (0.05, 2.0):  # a certified and an abstaining input
        res = certify(forward, x, 20, 300, 0.01, sigma, 3, 64, _gen(13))
        g = _gen(13)
        selection = sample_counts(forward, x, 20, sigma, 3, 64, g)
        counts = sample_counts(forward, x, 300, sigma, 3, 64, g)
        assert res == decide(selection, counts, 20, 300, 0.01, sigma, res.time_s)
        predictions.append(res.prediction)
    assert predictions[0] != ABSTAIN and predictions[1] == ABSTAIN


def test_radius_from_counts_closed_forms():
    # all samples agree: pA_lower = alpha^(1/n) exactly
    p, r = radius_from_counts(100, 100, 0.001, 0.25)
    assert p == pytest.approx(0.001 ** (1 / 100), rel=1e-10)
    assert r == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100)), rel=1e-10)
    # the reference's fact: n = 1e5, alpha = 1e-3 caps the radius near 3.8 sigma
    assert max_certifiable_radius(100000, 0.001, 1.0) == pytest.approx(3.8, abs=0.05)
    # no hits, or a bound at or below 1/2: abstain with radius 0
    assert radius_from_counts(0, 50, 0.01, 0.5) == (0.0, 0.0)
    p, r = radius_from_counts(50, 100, 0.01, 0.5)
    assert p < 0.5 and r == 0.0
    # monotone in the count, linear in sigma
    radii = [radius_from_counts(k, 1000, 0.001, 0.5)[1] for k in range(600, 1001, 50)]
    assert all(a <= b for a, b in zip(radii, radii[1:]))
    assert radius_from_counts(900, 1000, 0.001, 1.0)[1] == pytest.approx(
        2 * radius_from_counts(900, 1000, 0.001, 0.5)[1], rel=1e-12)
    with pytest.raises(ValueError):
        radius_from_counts(11, 10, 0.01, 0.5)


def test_noise_batches_are_the_inputs_sample_counts_uses():
    x = torch.rand(3, 5, 5, generator=_gen(4))
    batches = list(noise_batches(x, 10, 0.5, 4, _gen(5)))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    seen = []

    def recording(batch):
        seen.append(batch.clone())
        return torch.zeros(batch.shape[0], 2)

    sample_counts(recording, x, 10, 0.5, 2, 4, _gen(5))
    assert all(torch.equal(a, b) for a, b in zip(batches, seen))
    # noise is N(0, sigma^2), centred on x, not clipped
    many = torch.cat(list(noise_batches(x, 4000, 0.5, 1000, _gen(6))))
    noise = many - x
    assert abs(noise.mean().item()) < 0.01
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    assert many.min() < 0 and many.max() > 1
    # the same generator state gives the same noise; another state differs
    again = torch.cat(list(noise_batches(x, 4000, 0.5, 1000, _gen(6))))
    assert torch.equal(many, again)
    assert not torch.equal(many, torch.cat(list(noise_batches(x, 4000, 0.5, 1000, _gen(7)))))


def test_constant_classifier_certifies_the_maximal_radius():
    x = torch.rand(1, 3, 3)
    def constant(batch):
        out = torch.zeros(batch.shape[0], 4)
        out[:, 2] = 1
        return out

    res = certify(constant, x, 10, 200, 0.001, 0.5, 4, 50, _gen(0))
    assert res.prediction == 2
    assert res.counts == [0, 0, 200, 0]
    assert res.radius == pytest.approx(max_certifiable_radius(200, 0.001, 0.5), rel=1e-12)
    assert predict(constant, x, 200, 0.001, 0.5, 4, 50, _gen(0)) == 2


def test_certified_radius_is_sound_for_a_linear_binary_classifier():
    """For f(x) = sign(w.x + b) the smoothed classifier is exact: P(A) = Phi(|w.x+b| / (sigma ||w||)),
    so the true robust radius is |w.x+b| / ||w||. A certified radius must not exceed it (w.p. 1 - alpha)."""
    w = torch.randn(12, generator=_gen(8))
    sigma = 0.4
    for seed in range(5):
        x = torch.rand(3, 2, 2, generator=_gen(100 + seed))
        b = -float(x.flatten() @ w) + 0.3 * (seed - 2) * float(w.norm())

        def forward(batch):
            s = batch.flatten(1) @ w + b
            return torch.stack([-s, s], 1)

        res = certify(forward, x, 20, 2000, 0.001, sigma, 2, 500, _gen(seed))
        true_radius = abs(float(x.flatten() @ w) + b) / float(w.norm())
        assert res.radius <= true_radius + 1e-9
        if res.prediction != ABSTAIN:
            assert res.prediction == int(float(x.flatten() @ w) + b > 0)
            # with 2000 samples the bound is reasonably tight
            assert res.radius >= true_radius - 0.6 * sigma


def test_predict_abstains_on_a_tie_and_matches_binomtest():
    x = torch.zeros(1, 1, 1)
    calls = {"i": 0}

    def alternating(batch):
        out = torch.zeros(batch.shape[0], 3)
        idx = (torch.arange(batch.shape[0]) + calls["i"]) % 2
        calls["i"] += batch.shape[0]
        out[torch.arange(batch.shape[0]), idx] = 1
        return out

    assert predict(alternating, x, 100, 0.05, 0.1, 3, 10, _gen(0)) == ABSTAIN
    assert binomtest(50, 100, 0.5).pvalue > 0.05


@pytest.mark.parametrize("kwargs, word", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
    ({"n0": 600}, "n0"), ({"n0": 0}, "n0"), ({"n": 0}, "n "), ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings_are_user_errors(kwargs, word):
    args = {"n0": 10, "n": 500, "alpha": 0.01, "sigma": 0.25, "num_classes": 2, "batch_size": 10}
    args.update(kwargs)
    with pytest.raises(UserError) as e:
        certify(lambda b: torch.zeros(b.shape[0], 2), torch.zeros(1, 2, 2), generator=_gen(0), **args)
    assert word.strip() in str(e.value) and "\n" not in str(e.value)


def test_warning_when_radius_is_out_of_reach():
    top = max_certifiable_radius(100, 0.001, 0.25)
    assert top == pytest.approx(0.25 * norm.ppf(0.001 ** 0.01))
    with pytest.warns(UserWarning, match="out of reach"):
        msg = warn_unreachable([0.25, 1.0], 100, 0.001, 0.25)
    assert msg is not None and "1" in msg
    assert warn_unreachable([0.1, 0.25], 100000, 0.001, 0.25) is None
    assert math.isfinite(top)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_are_refused_not_counted_as_a_class(bad):
    def forward(batch):
        logits = torch.zeros(batch.shape[0], 3)
        logits[:, 1] = 1.0
        logits[-1, 0] = bad  # one noisy input of each batch gives a broken logit
        return logits

    x = torch.rand(1, 4, 4)
    with pytest.raises(UserError, match=r"logits are not finite \(NaN or inf\) on 1 of 8 noisy inputs"):
        sample_counts(forward, x, 8, 0.25, 3, 8, _gen())
    with pytest.raises(UserError, match="not finite"):
        certify(forward, x, 4, 8, 0.001, 0.25, 3, 8, _gen())
    with pytest.raises(UserError, match="not finite"):
        predict(forward, x, 8, 0.001, 0.25, 3, 8, _gen())
