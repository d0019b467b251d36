"""The shared rate limiters: per destination, and per endpoint where a vendor limits one harder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
import redis

from syncworker.bootstrap import DestinationRuntime
from syncworker.config import DestinationConfig, Settings
from syncworker.delivery.ratelimit import RateLimiter
from syncworker.destinations import Destination, Rate
from syncworker.devkit.emulators.base import Emulator, Request, Response
from syncworker.errors import Throttled


class Anything(Emulator):
    def handle(self, request: Request) -> Response:
        return Response(200, {})


class TwoSpeeds(Destination):
    name = "two_speeds"
    rate = Rate(1000, per_seconds=1)
    endpoint_rates: ClassVar = {"/slow": Rate(1, per_seconds=60)}


@pytest.fixture()
def emulator() -> Iterator[Anything]:
    with Anything() as server:
        yield server


def test_an_endpoint_limit_holds_that_endpoint_only(
    emulator: Anything, redis_conn: redis.Redis
) -> None:
    runtime = DestinationRuntime(
        name="two_speeds",
        cls=TwoSpeeds,
        config=DestinationConfig("two_speeds"),
        rate=TwoSpeeds.rate,
        batch_size=1,
        base_url=emulator.url,
    )
    destination, _ = runtime.instantiate(redis_conn, Settings(rate_wait_cap_s=2.0))
    destination.http.post("/slow/lookup")
    with pytest.raises(Throttled) as caught:  # the next slot is a minute away: pause, not fail
        destination.http.post("/slow/lookup")
    assert 55 < caught.value.retry_after <= 63
    for _ in range(20):  # the other endpoints keep the destination's own pace
        destination.http.post("/fast")
    assert [r.path for r in emulator.requests].count("/fast") == 20
    assert [r.path for r in emulator.requests].count("/slow/lookup") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rate", "interval"),
    [
        (Rate(10, per_seconds=1), 0.104),  # 40 ms of slack, the least
        (Rate(100, per_seconds=10), 0.102),  # HubSpot's: 2 % of the window
        (Rate(120, per_seconds=60), 61.2 / 120),
    ],
)
def test_the_limiter_spaces_calls_over_the_window_and_its_slack(
    redis_conn: redis.Redis, rate: Rate, interval: float
) -> None:
    """Requests + 1 calls span per_seconds + slack: no window of per_seconds holds more than the
    rate unless the first and last calls' latencies differ by more than the slack."""
    limiter = RateLimiter(redis_conn, "pace", rate, wait_cap=5.0)
    assert limiter.interval == pytest.approx(interval)
    limiter.acquire()
    limiter.acquire()
    assert 0 < limiter.waited <= limiter.interval  # the second call waited for its slot
