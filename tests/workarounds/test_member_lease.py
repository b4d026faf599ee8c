"""The member lease: valid for a share of the session timeout after the last answered heartbeat was sent; a lane
waiting on an expired lease goes on at the next answered heartbeat, or stops at a fence."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from workarounds import member_lease
from workarounds.member_lease import VALID_SHARE, MemberLease, lease_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_is_valid_until_a_share_of_the_session_timeout_after_the_last_heartbeat() -> None:
    clock = Clock()
    lease = MemberLease(2.0, clock=clock)
    assert lease.valid() and lease.age == 0.0  # no group yet: nothing to lose
    lease.renew(100.0)
    clock.now = 100.0 + 2.0 * VALID_SHARE - 0.01
    assert lease.valid()
    clock.now = 100.0 + 2.0 * VALID_SHARE + 0.01
    assert not lease.valid()
    lease.renew(99.0)  # an older heartbeat answered late never moves the lease back
    assert lease.renewed_at == 100.0 and not lease.valid()
    lease.renew(clock.now)
    assert lease.valid()
    with pytest.raises(ValueError):
        MemberLease(0)


def test_waiting_on_an_expired_lease_ends_at_the_next_heartbeat_or_at_a_fence() -> None:
    async def scenario() -> None:
        clock = Clock()
        lease = MemberLease(2.0, clock=clock)
        lease.renew(90.0)  # the loop stalled: 10 s without a heartbeat
        fence = asyncio.Event()
        waiting = asyncio.ensure_future(lease.wait_valid(fence))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        lease.renew(clock.now)  # answered: still a member
        assert await asyncio.wait_for(waiting, 1) is True
        lease.renew(90.0)
        clock.now = 200.0
        waiting = asyncio.ensure_future(lease.wait_valid(fence))
        await asyncio.sleep(0.01)
        fence.set()  # evicted: the rebalance fences the lane instead
        assert await asyncio.wait_for(waiting, 1) is False

    asyncio.run(scenario())


def test_an_answered_heartbeat_renews_its_groups_lease_and_a_refused_one_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([True, False])

    async def heartbeat(self: Any) -> bool:  # stands for aiokafka's request to the group coordinator
        return next(answers)

    monkeypatch.setattr(GroupCoordinator, "_do_heartbeat", heartbeat)
    lease = lease_for("apro-test-lease-group", 3.0)
    assert GroupCoordinator._do_heartbeat is not heartbeat  # wrapped
    member_lease.install()  # idempotent: wrapped once
    wrapped = GroupCoordinator._do_heartbeat
    member_lease.install()
    assert GroupCoordinator._do_heartbeat is wrapped
    coordinator = SimpleNamespace(group_id="apro-test-lease-group")
    assert asyncio.run(GroupCoordinator._do_heartbeat(coordinator)) is True
    renewed = lease.renewed_at
    assert renewed is not None
    assert asyncio.run(GroupCoordinator._do_heartbeat(coordinator)) is False
    assert lease.renewed_at == renewed
    assert lease_for("apro-test-lease-group", 3.0) is lease
