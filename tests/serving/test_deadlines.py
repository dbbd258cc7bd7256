"""Deadlines: every key expires at its own deadline, under one timer."""

from __future__ import annotations

import asyncio

from serving.deadlines import Deadlines


def _expiries(plan: list[tuple[float, str, str]], seconds: float = 0.1) -> dict[str, float]:
    """Run ``plan`` (at, action, key) on a fresh loop; when each key expired, from the start."""

    async def scenario() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        expired: dict[str, float] = {}
        deadlines: Deadlines[str] = Deadlines(
            seconds, lambda key: expired.setdefault(key, loop.time() - start)
        )
        for at, action, key in plan:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            getattr(deadlines, action)(key)
        await asyncio.sleep(max(0.0, start + plan[-1][0] + 2 * seconds - loop.time()))
        assert len(deadlines) == 0
        return expired

    return asyncio.run(scenario())


def test_each_key_expires_at_its_own_deadline_not_at_the_first_one() -> None:
    expired = _expiries([(0, "arm", "first"), (0.05, "arm", "second")])
    assert set(expired) == {"first", "second"}
    assert 0.099 <= expired["first"] < expired["second"]
    assert expired["second"] >= 0.149  # not swept with the first at 0.1


def test_a_disarmed_key_never_expires_and_the_next_one_still_does() -> None:
    expired = _expiries(
        [(0, "arm", "answered"), (0.02, "arm", "slow"), (0.05, "disarm", "answered")]
    )
    assert list(expired) == ["slow"]
    assert expired["slow"] >= 0.119


def test_arming_a_key_again_moves_its_deadline() -> None:
    expired = _expiries([(0, "arm", "kept alive"), (0.08, "arm", "kept alive")])
    assert expired["kept alive"] >= 0.179
