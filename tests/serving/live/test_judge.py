"""The canary judge: when the challenger's errors or p99 latency are out of bounds."""

from __future__ import annotations

from serving.live.judge import RollbackBounds, RollbackJudge

BOUNDS = RollbackBounds(max_error_excess=0.05, max_p99_ratio=3.0, window=100, min_requests=20)


Outcomes = list[tuple[bool, float]]


def _judge(champion: Outcomes, challenger: Outcomes) -> RollbackJudge:
    judge = RollbackJudge(BOUNDS)
    for role, outcomes in (("champion", champion), ("challenger", challenger)):
        for error, seconds in outcomes:
            judge.record(role, error=error, seconds=seconds)
    return judge


def test_a_challenger_as_good_as_the_champion_stays() -> None:
    assert _judge([(False, 0.002)] * 50, [(False, 0.002)] * 50).verdict() is None


def test_nothing_is_decided_before_both_versions_answered_the_minimum() -> None:
    assert _judge([(False, 0.002)] * 50, [(True, 0.0)] * 19).verdict() is None
    assert _judge([(False, 0.002)] * 19, [(True, 0.0)] * 50).verdict() is None


def test_an_error_rate_above_the_champions_by_more_than_the_bound_rolls_back_with_numbers() -> None:
    challenger = [(True, 0.0)] * 10 + [(False, 0.002)] * 40  # 20% errors
    reason = _judge([(False, 0.002)] * 50, challenger).verdict()
    assert reason is not None
    assert "error rate 20.0% over its last 50 requests" in reason
    assert "the champion's 0.0%" in reason and "SERVING_CANARY_MAX_ERROR_RATE" in reason


def test_errors_the_champion_has_too_are_not_held_against_the_challenger() -> None:
    both = [(True, 0.0)] * 10 + [(False, 0.002)] * 40
    assert _judge(both, both).verdict() is None


def test_a_p99_latency_beyond_the_ratio_rolls_back_with_numbers() -> None:
    reason = _judge([(False, 0.002)] * 50, [(False, 0.010)] * 50).verdict()
    assert reason is not None
    assert "p99 latency 10.0 ms" in reason and "the champion's 2.0 ms" in reason
    assert "SERVING_CANARY_MAX_P99_RATIO" in reason


def test_only_the_window_counts_so_old_errors_are_forgotten() -> None:
    challenger = [(True, 0.0)] * 50 + [(False, 0.002)] * 100
    assert _judge([(False, 0.002)] * 100, challenger).verdict() is None


def test_reset_forgets_both_versions() -> None:
    judge = _judge([(False, 0.002)] * 50, [(True, 0.0)] * 50)
    judge.reset()
    assert judge.verdict() is None
    assert judge.stats("challenger").requests == 0
