"""The canary routing rule: a stable hash of the routing key against the percent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving.live.routing import bucket, goes_to_challenger


def test_the_same_key_always_goes_the_same_way() -> None:
    assert {goes_to_challenger("user-42", 30.0) for _ in range(100)} in ({True}, {False})


@pytest.mark.process
def test_a_key_goes_the_same_way_in_another_process() -> None:
    code = "from serving.live.routing import bucket; print(bucket('user-42'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert int(other.stdout) == bucket("user-42")


@pytest.mark.parametrize("percent", [1.0, 10.0, 50.0, 90.0])
def test_the_share_of_keys_sent_to_the_challenger_is_the_percent(percent: float) -> None:
    keys = [f"request-{i:05d}" for i in range(20_000)]
    share = 100 * sum(goes_to_challenger(key, percent) for key in keys) / len(keys)
    assert abs(share - percent) < 1.0


def test_zero_percent_sends_nothing_and_a_hundred_sends_everything() -> None:
    keys = [f"k{i}" for i in range(1000)]
    assert not any(goes_to_challenger(key, 0.0) for key in keys)
    assert all(goes_to_challenger(key, 100.0) for key in keys)


def test_raising_the_percent_only_moves_keys_to_the_challenger() -> None:
    keys = [f"k{i}" for i in range(2000)]
    at_10 = {key for key in keys if goes_to_challenger(key, 10.0)}
    at_20 = {key for key in keys if goes_to_challenger(key, 20.0)}
    assert at_10 < at_20
