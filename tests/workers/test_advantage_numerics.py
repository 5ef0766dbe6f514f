"""Numerics of the group estimators, the policy-loss clamp and dynamic filtering at the scores' precision.

The rule under test (module docstring of :mod:`rlhf_workers.algorithms`): a group whose rewards are
equal to within ``GROUP_TIE_ULPS * eps * max|r|`` gets advantage exactly 0 under every group
estimator; ``group_norm`` divides by ``max(std, GROUP_STD_FLOOR * max|r|) + 1e-9``; statistics in
float64. Reference values are OpenRLHF's formulas evaluated in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_workers import algorithms as alg

GROUP = ("reinforce_baseline", "rloo", "group_norm", "dr_grpo")
NON_DYADIC = (0.1, 0.3, 0.7, 0.8335, 1 / 3)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def openrlhf(r: torch.Tensor, n: int, estimator: str) -> torch.Tensor:
    """OpenRLHF's group shaping (experience_maker), in float64."""
    g = r.double().reshape(-1, n)
    if estimator == "rloo":
        return (g - (g.sum(-1, keepdim=True) - g) / (n - 1)).reshape(-1)
    if estimator == "group_norm":
        return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + 1e-9)).reshape(-1)
    return (g - g.mean(-1, keepdim=True)).reshape(-1)


def bound(r: torch.Tensor, n: int, estimator: str) -> torch.Tensor:
    """The stated bound on |advantage| per sample (module docstring)."""
    g = r.double().reshape(-1, n)
    spread = (g.amax(-1) - g.amin(-1)).repeat_interleave(n)
    if estimator == "group_norm":
        return torch.full_like(spread, (n - 1) / math.sqrt(n))
    return spread if estimator == "rloo" else spread * (n - 1) / n


# --------------------------------------------------------------------------- the reported case


def test_issue_case_failing_group_of_partial_scores_is_zero():
    # OpenRLHF in float32: +29.8 for each of the eight 0.3s. Second group: one outlier among 8,
    # (n - 1)/sqrt(n) = 7/sqrt(8) = 2.474874 and -1/sqrt(8) = -0.353553.
    r = t([0.3] * 8 + [1.0] + [0.3] * 7)
    out = alg.shape_group_rewards(r, 8, "group_norm")
    assert out[:8].tolist() == [0.0] * 8
    assert out[8:].tolist() == pytest.approx([7 / math.sqrt(8)] + [-1 / math.sqrt(8)] * 7, abs=1e-6)
    for est in GROUP:
        assert alg.shape_group_rewards(r, 8, est)[:8].tolist() == [0.0] * 8, est
    assert alg.zero_signal_groups(r, 8).tolist() == [True, False]


@pytest.mark.parametrize("estimator", GROUP)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_non_dyadic_values_give_exact_zero_for_every_group_size(estimator, dtype):
    for v in NON_DYADIC:
        for n in range(2, 65):
            # a zero-signal group next to an informative one
            r = torch.cat([torch.full((n,), v, dtype=dtype), torch.linspace(0, 1, n, dtype=dtype)])
            out = alg.shape_group_rewards(r, n, estimator)
            assert out[:n].tolist() == [0.0] * n, (v, n)
            assert out[n:].abs().sum() > 0


@pytest.mark.parametrize("estimator", GROUP)
def test_compute_advantages_zero_groups_are_zero_on_every_token(estimator):
    # 3 groups of 4: two ties (0.3s, 1/3s), one informative; uneven lengths so whitening has a non-zero mean
    r = t([0.3] * 4 + [1 / 3] * 4 + [0.0, 1.0, 0.0, 0.25])
    lengths = t([3, 1, 2, 3, 1, 2, 3, 1, 3, 1, 2, 2])
    mask = (torch.arange(3).unsqueeze(0) < lengths.unsqueeze(1)).float()
    res = alg.compute_advantages(estimator, r, mask, 4)
    assert res.zero_groups == 2
    assert res.advantages[:8].abs().sum().item() == 0.0
    assert res.returns[:8].abs().sum().item() == 0.0
    assert res.advantages[8:].abs().sum().item() > 0
    if estimator == "reinforce_baseline":  # whitened: the informative group is as OpenRLHF has it
        assert res.whitened
        shaped = openrlhf(r, 4, estimator).float()
        ref = alg.whiten_advantages(shaped.unsqueeze(1).expand(-1, 3) * mask, mask)
        assert torch.allclose(res.advantages[8:], ref[8:], atol=1e-6)


def test_zero_groups_keep_the_kl_penalty_in_the_reward():
    r = t([0.3] * 2 + [0.0, 1.0])
    mask = torch.ones(4, 2)
    kl = t([[0.1, 0.2]] * 4)
    res = alg.compute_advantages("group_norm", r, mask, 2, kl=kl, kl_coef=0.5)
    assert res.zero_groups == 1
    # tied group: only the KL penalty, -0.5 * [.1, .2] -> returns [-.15, -.1]
    assert res.advantages[:2].tolist() == [pytest.approx([-0.15, -0.1])] * 2
    # and as a loss instead (use_kl_loss) the tied group is 0 again
    res = alg.compute_advantages("group_norm", r, mask, 2, kl=kl, kl_coef=0.5, use_kl_loss=True)
    assert res.advantages[:2].abs().sum().item() == 0.0


def test_zero_groups_count_is_zero_for_ungrouped_estimators():
    r = t([0.3] * 4)
    mask = torch.ones(4, 1)
    assert alg.compute_advantages("reinforce", r, mask, 2).zero_groups == 0
    assert alg.compute_advantages("gae", r, mask, 2, values=torch.zeros(4, 1)).zero_groups == 0
    assert alg.compute_advantages("dr_grpo", r, mask, 1).zero_groups == 4  # groups of one carry nothing


def test_near_ties_within_resolution_are_zero_and_beyond_are_not():
    one_ulp = torch.nextafter(t(0.3), t(1.0)).item()
    for est in GROUP:
        assert alg.shape_group_rewards(t([0.3, one_ulp, 0.3, 0.3]), 4, est).tolist() == [0.0] * 4
    # 4 * 2**-23 * 0.3 = 1.43e-7 is the tolerance at 0.3; a spread of 1e-6 is a (tiny) signal
    assert not alg.zero_signal_groups(t([0.3, 0.300001]), 2).item()
    # float64 rewards: the resolution is still float32's (rewards travel as float32)
    assert alg.zero_signal_groups(t([0.1 + 0.2, 0.3, 0.3 + 1e-9], torch.float64), 3).item()


def test_tiny_spread_is_damped_not_stretched():
    # seven 0.5s and one 0.5 + 1e-6: OpenRLHF stretches it to the full 2.47 / -0.35
    r = t([0.5] * 7 + [0.5 + 1e-6])
    out = alg.shape_group_rewards(r, 8, "group_norm").double()
    assert openrlhf(r, 8, "group_norm")[-1].item() == pytest.approx(7 / math.sqrt(8), rel=1e-2)
    # here: deviation / (1e-4 * max|r|): the float32 outlier sits 1.013e-6 above 0.5 -> 7/8 * 1.013e-6 / 5e-5
    dev = (r.double()[-1] - 0.5).item()
    floor = alg.GROUP_STD_FLOOR * r.double().abs().max().item()
    assert out[-1].item() == pytest.approx(7 / 8 * dev / floor, rel=1e-6)
    assert out.abs().max().item() < 0.02
    # a group of small rewards that is well resolved is a full signal (TRL's absolute 1e-4 would damp
    # it to +-0.007); OpenRLHF's 1e-9 on a std of 7.07e-7 takes 0.14% off
    small = alg.shape_group_rewards(t([0.0, 1e-6]), 2, "group_norm")
    assert small.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=2e-3)


def test_group_norm_is_scale_invariant():
    # the floor follows max|r|; only OpenRLHF's 1e-9 above it (relative 1e-9 / std) does not scale
    r = t([0.0, 0.25, 0.5, 1.0, 0.3, 0.3, 0.3, 0.7, 0.5, 0.5, 0.5, 0.5 + 2e-6])
    base = alg.shape_group_rewards(r, 4, "group_norm")
    assert 0 < base[8:].abs().max() < 0.1  # the damped group is damped at every scale
    for c in (2.0**-10, 0.5, 8.0, 2.0**40):
        assert torch.allclose(alg.shape_group_rewards(r * c, 4, "group_norm"), base, rtol=1e-5, atol=0)


def test_token_rewards_zero_on_padding_and_empty_batch():
    mask = t([[1, 1, 0], [0, 0, 0]])
    kl = t([[0.1, 0.1, 0.5], [0.2, 0.2, 0.2]])  # unmasked KL: padding must not leak into the rewards
    out = alg.compute_token_rewards(t([1.0, 2.0]), mask, kl=kl, kl_coef=1.0)
    assert out.flatten().tolist() == pytest.approx([-0.1, 0.9, 0.0, 0.0, 0.0, 0.0])
    for est in alg.ESTIMATORS:
        empty = torch.zeros(0, 3)
        res = alg.compute_advantages(est, torch.zeros(0), empty, 2, values=torch.zeros(0, 3))
        assert res.advantages.shape == (0, 3) and res.zero_groups == 0
    res = alg.compute_advantages("reinforce", t([1.0, 2.0]), torch.zeros(2, 3))
    assert res.advantages.abs().sum().item() == 0.0  # no response tokens: zeros, not NaN


# --------------------------------------------------------------------------- policy loss clamp


def test_policy_loss_clamps_log_ratio_before_exp():
    # log ratio 100 with A = -1: exp(100) overflows float32; clamped at 20 the loss is exp(20)
    logp = t([[100.0, 0.0]]).requires_grad_()
    old = torch.zeros(1, 2)
    loss, stats = alg.policy_loss(logp, old, t([[-1.0, 0.0]]), torch.ones(1, 2))
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(math.exp(20) / 2, rel=1e-6)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # beyond the clamp: no gradient, as in OpenRLHF
    assert stats.approx_kl.item() == pytest.approx(-50.0)  # the diagnostic keeps the raw ratio
    # inside the clamp nothing changes: ratio exp(19)
    loss, _ = alg.policy_loss(t([[19.0]]), torch.zeros(1, 1), t([[-1.0]]))
    assert loss.item() == pytest.approx(math.exp(19), rel=1e-6)


# --------------------------------------------------------------------------- dynamic filtering precision


def test_dynamic_filter_float32_scores_on_a_bound_are_dropped():
    # the user returned 0.3 (float32 0.30000001); range (0.3, 1): the group sits on the bound
    scores = t([0.3] * 8 + [0.3, 0.3, 1.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    res = alg.dynamic_filter(scores, 8, score_range=(0.3, 1.0))
    assert res.kept_groups == [1]
    # the same at float64 precision (Python floats): exact mean, no summation rounding
    assert alg.dynamic_filter([0.3] * 8, 8, score_range=(0.3, 1.0)).kept_groups == []
    # Python's sum of ten 0.1s / 10 is 0.09999999999999999 < 0.1: still on the bound here
    assert alg.dynamic_filter([0.1] * 10, 10, score_range=(0.0, 0.1)).kept_groups == []
    assert alg.dynamic_filter(t([0.1] * 10), 10, score_range=(0.0, 0.1)).kept_groups == []


def test_dynamic_filter_precision_follows_the_tensor_dtype():
    # float32(0.7) = 0.69999999 < 0.7: on the bound at float32, strictly below at float64
    scores32 = t([0.7, 0.7])
    assert alg.dynamic_filter(scores32, 2, score_range=(0.0, 0.7)).kept_groups == []
    scores64 = scores32.double()  # the same numbers, now claimed to be float64-precise
    assert alg.dynamic_filter(scores64, 2, score_range=(0.0, 0.7)).kept_groups == [0]
    assert alg.dynamic_filter(scores64.tolist(), 2, score_range=(0.0, 0.7)).kept_groups == [0]


def test_dynamic_filter_std_threshold_on_equal_non_dyadic_scores():
    scores = t([0.7] * 8 + [0.5, 0.7] * 4)
    res = alg.dynamic_filter(scores, 8, std_threshold=0.0)
    assert res.kept_groups == [1] and "std 0 <=" in res.reasons[0]
    assert res.group_means[0] == t(0.7).item()


# --------------------------------------------------------------------------- properties

_SETTINGS = settings(max_examples=60, deadline=None)
# any float32 of ordinary magnitude, subnormals included; huge values only where the output cannot overflow
_any = st.floats(min_value=-2.0**100, max_value=2.0**100, allow_nan=False, width=32)
_normal = st.floats(min_value=2.0**-100, max_value=2.0**100, width=32).flatmap(lambda x: st.sampled_from([x, -x]))


@st.composite
def grouped(draw, values=_any):
    n = draw(st.integers(2, 64))
    groups = draw(st.integers(1, 3))
    return t(draw(st.lists(values, min_size=n * groups, max_size=n * groups))), n


@_SETTINGS
@given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(2, 64), st.sampled_from(GROUP))
def test_prop_equal_rewards_give_exact_zero(v, n, estimator):
    r = t([v] * n)
    assert alg.shape_group_rewards(r, n, estimator).tolist() == [0.0] * n
    res = alg.compute_advantages(estimator, r, torch.ones(n, 2), n)
    assert res.advantages.abs().sum().item() == 0.0 and res.zero_groups == 1


@_SETTINGS
@given(_normal, st.integers(2, 64), st.integers(0, 63), st.sampled_from(GROUP))
def test_prop_one_ulp_apart_is_a_tie(v, n, i, estimator):
    r = t([v] * n)
    r[i % n] = torch.nextafter(r[0], torch.tensor(math.inf))
    assert alg.shape_group_rewards(r, n, estimator).tolist() == [0.0] * n


@_SETTINGS
@given(grouped(), st.sampled_from(GROUP))
def test_prop_advantages_bounded(data, estimator):
    r, n = data
    out = alg.shape_group_rewards(r, n, estimator).double()
    assert torch.isfinite(out).all()
    # one float32 rounding of the float64 result may step past the bound by half an ulp (or a subnormal)
    assert (out.abs() <= bound(r, n, estimator) * (1 + 1e-6) + 2.0**-149).all()
    if estimator == "group_norm":
        assert out.abs().max().item() <= 7.875 * (1 + 1e-6)  # (64 - 1) / sqrt(64), the largest n drawn


@_SETTINGS
@given(grouped(st.floats(min_value=-10, max_value=10, width=32, allow_subnormal=False)), st.sampled_from(GROUP))
def test_prop_matches_openrlhf_on_groups_with_a_signal(data, estimator):
    r, n = data
    out = alg.shape_group_rewards(r, n, estimator).double().reshape(-1, n)
    ref = openrlhf(r, n, estimator).reshape(-1, n)
    g = r.double().reshape(-1, n)
    informative = g.std(-1) > alg.GROUP_STD_FLOOR * g.abs().amax(-1)
    scale = 1.0 if estimator == "group_norm" else g.abs().amax(-1, keepdim=True)
    err = ((out - ref).abs() / scale)[informative]
    assert err.numel() == 0 or err.max().item() < 1e-6
    assert (out[alg.zero_signal_groups(r, n)] == 0).all()


def test_dynamic_filtering_judges_scores_at_the_precision_the_reward_returned():
    """Python floats stay float64 from reward_func to the filter: a group mean just above a
    bound in the user's arithmetic is kept, where float32 scores would land below it."""
    from rlhf_workers.reward import validate_reward_output

    as_written = validate_reward_output({"rewards": [0.1, 0.2]}, 2)
    assert as_written.scores.dtype == torch.float64 and as_written.rewards.dtype == torch.float32
    assert 0.15 < (0.1 + 0.2) / 2  # what the user's own arithmetic says
    assert list(alg.dynamic_filter(as_written.scores, 2, (0.15, 1.0)).kept_groups) == [0]
    as_float32 = validate_reward_output({"rewards": torch.tensor([0.1, 0.2])}, 2)
    assert as_float32.scores.dtype == torch.float32
    assert list(alg.dynamic_filter(as_float32.scores, 2, (0.15, 1.0)).kept_groups) == []
