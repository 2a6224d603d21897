"""The hourly rollup behind the dashboard: sums, latency buckets, upstream errors per
deployment, idempotence, and the beat task's hours."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from billing import rollups
from billing.models import HourlyUsage, UsageRecord
from billing.tasks import rollup_hourly_usage
from tenants.models import ApiKey
from tenants.services import CreatedKey

HOUR = datetime(2026, 11, 20, 14, tzinfo=UTC)


def record(key: ApiKey, at: datetime, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_{UsageRecord.objects.count()}",
        "created_at": at,
        "workspace_id": key.workspace_id,
        "team_id": key.team_id,
        "key": key,
        "alias": "image",
        "provider": "openai",
        "deployment_id": 7,
        "endpoint": "images.generations",
        "status": 200,
        "images": 1,
        "cost_micro": 40_000,
        "total_ms": 900,
        "attempts": [{"attempt": 1, "deployment": 7, "provider": "openai", "outcome": "ok"}],
    }
    return UsageRecord.objects.create(**{**values, **fields})


def rows() -> dict[tuple[str, str, int], HourlyUsage]:
    return {(r.alias, r.provider, r.deployment_id): r for r in HourlyUsage.objects.all()}


def test_an_hours_records_are_summed_per_alias_provider_and_deployment(
    api_key: CreatedKey,
) -> None:
    key = api_key.key
    record(key, HOUR, total_ms=20)
    record(key, HOUR + timedelta(minutes=59, seconds=59), total_ms=50, images=2, cost_micro=80_000)
    record(key, HOUR + timedelta(minutes=30), total_ms=51)
    record(key, HOUR + timedelta(minutes=10), total_ms=400_000)
    record(key, HOUR + timedelta(minutes=5), alias="other", status=400, images=0, cost_micro=0)
    record(key, HOUR - timedelta(seconds=1))  # the hour before
    record(key, HOUR + timedelta(hours=1))  # the hour after

    assert rollups.rollup_hour(HOUR + timedelta(minutes=17)) == 2

    found = rows()
    image = found[("image", "openai", 7)]
    assert image.hour == HOUR
    assert (image.workspace_id, image.team_id, image.key_id) == (
        key.workspace_id,
        key.team_id,
        key.pk,
    )
    assert (image.requests, image.images, image.errors, image.upstream_errors) == (4, 5, 0, 0)
    assert (image.cost_micro, image.total_ms) == (200_000, 20 + 50 + 51 + 400_000)
    # Up to 50 ms: two requests; 51 ms: the 50-100 bucket; 400 s: past the last bound.
    expected = [0] * rollups.LATENCY_BUCKETS
    expected[0], expected[1], expected[-1] = 2, 1, 1
    assert image.latency_buckets == expected
    other = found[("other", "openai", 7)]
    assert (other.requests, other.images, other.errors, other.cost_micro) == (1, 0, 1, 0)
    assert other.latency_buckets[rollups.latency_bucket(900)] == 1


def test_the_rollup_is_idempotent_and_follows_late_records(api_key: CreatedKey) -> None:
    key = api_key.key
    record(key, HOUR)
    rollups.rollup_hour(HOUR)
    rollups.rollup_hour(HOUR)
    assert HourlyUsage.objects.get().requests == 1
    record(key, HOUR + timedelta(minutes=3))  # written after the first run
    rollups.rollup_hour(HOUR)
    assert HourlyUsage.objects.get().requests == 2


def test_failed_upstream_calls_count_on_the_deployment_they_were_made_to(
    api_key: CreatedKey,
) -> None:
    key = api_key.key
    # Deployment 7 timed out, 8 (another provider) served: 7 shows the failure.
    record(
        key,
        HOUR,
        provider="gemini",
        deployment_id=8,
        attempts=[
            {"attempt": 1, "deployment": 7, "provider": "openai", "outcome": "timeout"},
            {"attempt": 2, "deployment": 8, "provider": "gemini", "outcome": "ok"},
        ],
    )
    # Every deployment failed: no deployment served; each attempt counts where it was made.
    record(
        key,
        HOUR,
        deployment_id=None,
        status=502,
        error_code="upstream_error",
        images=0,
        cost_micro=0,
        attempts=[
            {"attempt": 1, "deployment": 7, "provider": "openai", "outcome": "failed"},
            {"attempt": 2, "deployment": 8, "provider": "gemini", "outcome": "unreachable"},
        ],
    )
    # The upstream refused the prompt: the request's fault, not the upstream's.
    record(
        key,
        HOUR,
        status=400,
        error_code="upstream_rejected",
        images=0,
        cost_micro=0,
        attempts=[{"attempt": 1, "deployment": 7, "provider": "openai", "outcome": "rejected"}],
    )
    # A passthrough relayed the upstream's 503: no deployment, no code of the gateway's.
    record(
        key,
        HOUR,
        alias="",
        deployment_id=None,
        status=503,
        images=0,
        cost_micro=0,
        attempts=[{"attempt": 1, "deployment": None, "provider": "openai", "outcome": "ok"}],
    )
    rollups.rollup_hour(HOUR)

    summary = {
        group: (row.requests, row.errors, row.upstream_errors) for group, row in rows().items()
    }
    assert summary == {
        ("image", "gemini", 8): (1, 0, 1),  # served one; failed one (the 502's second call)
        ("image", "openai", 7): (1, 1, 2),  # the 400; failed twice (a timeout, the 502's first)
        ("image", "openai", 0): (1, 1, 0),  # the 502, which no deployment served
        ("", "openai", 0): (1, 1, 1),  # the passthrough's 503
    }


@pytest.mark.parametrize(
    ("status", "code", "upstream"),
    [
        (502, "upstream_error", True),
        (504, "upstream_timeout", True),
        (429, "upstream_rate_limited", True),
        (200, "upstream_stream_broken", True),
        (502, "", True),  # a passthrough relaying the upstream's own 502
        (503, "guardrail_unavailable", False),
        (429, "rate_limit_exceeded", False),
        (400, "upstream_rejected", False),
        (402, "insufficient_quota", False),
    ],
)
def test_what_counts_as_a_request_failed_upstream(status: int, code: str, upstream: bool) -> None:
    assert rollups.failed_upstream(status, code) is upstream


def test_percentiles_merge_buckets_and_interpolate_inside_one() -> None:
    buckets = [0] * rollups.LATENCY_BUCKETS
    assert rollups.latency_percentile(buckets, 95) is None
    buckets[rollups.latency_bucket(700)] = 100  # all between 500 and 1,000 ms
    assert rollups.latency_percentile(buckets, 50) == 750
    assert rollups.latency_percentile(buckets, 95) == 975
    buckets[-1] = 100  # as many slower than the last bound
    assert rollups.latency_percentile(buckets, 95) == rollups.LATENCY_BOUNDS_MS[-1]
    assert rollups.latency_percentile(buckets, 25) == 750


def test_the_beat_task_rolls_up_from_the_hour_before_the_one_its_last_run_reached(
    api_key: CreatedKey,
) -> None:
    key = api_key.key
    for hours_ago in (0, 1, 2, 5):
        record(key, HOUR - timedelta(hours=hours_ago))

    def hours() -> list[datetime]:
        return sorted(HourlyUsage.objects.values_list("hour", flat=True))

    with time_machine.travel(HOUR - timedelta(hours=5, minutes=-4), tick=False):
        assert rollup_hourly_usage() == 1  # the first run: from the oldest record
    with time_machine.travel(HOUR - timedelta(hours=1, minutes=-4), tick=False):
        HourlyUsage.objects.all().delete()  # to see which hours the next run rolls up
        assert rollup_hourly_usage() == 3  # and those missed while the beat was down
        assert hours() == [HOUR - timedelta(hours=h) for h in (5, 2, 1)]
    with time_machine.travel(HOUR + timedelta(minutes=4), tick=False):
        HourlyUsage.objects.all().delete()
        assert rollup_hourly_usage() == 3  # the one before the last run's hour, to this one
        assert hours() == [HOUR - timedelta(hours=h) for h in (2, 1, 0)]
        assert rollup_hourly_usage() == 2  # run again: the previous hour and this one
        assert rollup_hourly_usage(hours=3) == 3
    assert rollup_hourly_usage(hour=(HOUR - timedelta(hours=5)).isoformat()) == 1
    assert HourlyUsage.objects.count() == 4
