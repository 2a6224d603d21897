"""Deployment health: a circuit breaker per deployment, shared by every gateway process.

Failures (connect errors, timeouts, 5xx, 429, unreadable answers) are counted over a sliding
window; past the threshold the circuit opens for a cooldown that doubles with each trip, up
to a cap. Once the cooldown has passed the circuit is half-open: one request (holding a
short lease) tries the deployment, and its success closes the circuit while its failure
opens it again for longer. An upstream 429 opens it until its Retry-After. Success on a
closed circuit writes nothing, so a healthy deployment costs one read per request.

The state lives in Redis, so every process and node sees what any of them saw. Without
Redis (the embedded default), or while Redis is unreachable, each process keeps its own
(`mode()` says which; /readyz shows it). Times are the gateway's clock (`time.time()`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from aperture.redis_cache import script_client

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(frozen=True)
class State:
    deployment_id: int
    open_until: float = 0.0  # 0: closed; past: half-open; future: open
    trips: int = 0
    failures: int = 0  # in the current window
    last_error: str = ""
    last_failure_at: float = 0.0

    def status(self, now: float) -> str:
        if not self.open_until:
            return CLOSED
        return OPEN if self.open_until > now else HALF_OPEN


def _cooldown(trips: int) -> float:
    base, cap = settings.HEALTH_COOLDOWN_SECONDS, settings.HEALTH_COOLDOWN_MAX_SECONDS
    return float(min(base * 2 ** max(trips - 1, 0), cap))


# KEYS: state hash, failures zset, trial lease. ARGV: now, window, threshold, base cooldown,
# cap, retry_after (0: none), error text, nonce. Returns the new open_until.
_FAIL = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
local count = redis.call('ZCARD', KEYS[2])
local trial = redis.call('DEL', KEYS[3])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local trips = tonumber(redis.call('HGET', KEYS[1], 'trips') or '0')
local retry_after = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'last_error', ARGV[7], 'last_failure_at', ARGV[1])
if retry_after > 0 then
  if now + retry_after > open_until then
    open_until = now + retry_after
    redis.call('HSET', KEYS[1], 'open_until', string.format('%.6f', open_until))
  end
elseif open_until <= now and (trial == 1 or count >= tonumber(ARGV[3])) then
  trips = trips + 1
  local cooldown = math.min(tonumber(ARGV[4]) * 2 ^ (trips - 1), tonumber(ARGV[5]))
  open_until = now + cooldown
  redis.call('HSET', KEYS[1], 'open_until', string.format('%.6f', open_until), 'trips', trips)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], 86400)
return string.format('%.6f', open_until)
"""


class _Local:
    """The same breaker for one process (no Redis, or Redis unreachable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[int, State] = {}
        self._failures: dict[int, deque[float]] = defaultdict(deque)
        self._trials: dict[int, float] = {}

    def states(self, ids: list[int], now: float) -> dict[int, State]:
        with self._lock:
            return {i: self._with_count(i, now) for i in ids}

    def _with_count(self, deployment_id: int, now: float) -> State:
        window = self._failures[deployment_id]
        while window and window[0] <= now - settings.HEALTH_WINDOW_SECONDS:
            window.popleft()
        state = self._states.get(deployment_id, State(deployment_id))
        return State(**{**state.__dict__, "failures": len(window)})

    def take_trial(self, deployment_id: int, now: float, lease: float) -> bool:
        with self._lock:
            if self._trials.get(deployment_id, 0.0) > now:
                return False
            self._trials[deployment_id] = now + lease
            return True

    def fail(self, deployment_id: int, now: float, retry_after: float, error: str) -> float:
        with self._lock:
            window = self._failures[deployment_id]
            window.append(now)
            state = self._with_count(deployment_id, now)
            trial = self._trials.pop(deployment_id, None) is not None
            open_until, trips = state.open_until, state.trips
            if retry_after > 0:
                open_until = max(open_until, now + retry_after)
            elif open_until <= now and (
                trial or state.failures >= settings.HEALTH_FAILURE_THRESHOLD
            ):
                trips += 1
                open_until = now + _cooldown(trips)
                window.clear()
            self._states[deployment_id] = State(deployment_id, open_until, trips, 0, error, now)
            return open_until

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._failures.clear()
            self._trials.clear()

    def close(self, deployment_id: int) -> None:
        with self._lock:
            self._states.pop(deployment_id, None)
            self._failures.pop(deployment_id, None)
            self._trials.pop(deployment_id, None)

    def force_open(self, deployment_id: int, until: float) -> None:
        with self._lock:
            state = self._states.get(deployment_id, State(deployment_id))
            self._states[deployment_id] = State(**{**state.__dict__, "open_until": until})


_local = _Local()
_redis_down_since = [0.0]
_RETRY_REDIS_SECONDS = 10.0


@lru_cache(maxsize=1)
def _redis() -> tuple[Any, Any]:
    client = script_client(decode_responses=True)
    return client, client.register_script(_FAIL)


def _shared() -> bool:
    """Whether Redis holds the state now (not while it was failing a moment ago)."""
    if not settings.RATE_LIMIT_REDIS_URL:
        return False
    since = _redis_down_since[0]
    return not since or time.monotonic() - since >= _RETRY_REDIS_SECONDS


def _redis_failed(exc: Exception) -> None:
    if not _redis_down_since[0]:
        logger.error("deployment health: Redis unavailable (%s); per-process health", exc)
    _redis_down_since[0] = time.monotonic()


def mode() -> str:
    """ "shared" (Redis), "per-process" (no Redis configured) or "degraded (per-process)"."""
    if not settings.RATE_LIMIT_REDIS_URL:
        return "per-process"
    return "shared" if _shared() else "degraded (per-process)"


def _key(deployment_id: int) -> str:
    return f"aperture:health:{settings.CACHE_KEY_PREFIX}:{deployment_id}"


# What this process last read of each deployment, for at most HEALTH_CACHE_SECONDS: routing
# reads health on every request, and a healthy gateway should not pay a Redis round trip for
# it each time. This process's own failures and successes update it at once; another
# process's reach it within that second.
_seen: dict[int, tuple[float, State]] = {}


def _remember(state: State) -> None:
    _seen[state.deployment_id] = (time.monotonic(), state)


def forget_cached() -> None:
    """Forget what this process knows: read every state afresh (tests between cases)."""
    _seen.clear()
    _local.clear()


def states(deployment_ids: list[int]) -> dict[int, State]:
    """The state of each deployment (cached for a second; else one round trip to Redis)."""
    fresh_after = time.monotonic() - settings.HEALTH_CACHE_SECONDS
    found: dict[int, State] = {}
    for deployment_id in deployment_ids:
        seen = _seen.get(deployment_id)
        if seen is not None and seen[0] >= fresh_after:
            found[deployment_id] = seen[1]
    missing = [i for i in deployment_ids if i not in found]
    if missing:
        for state in _read(missing).values():
            _remember(state)
            found[state.deployment_id] = state
    return found


def _read(deployment_ids: list[int]) -> dict[int, State]:
    now = time.time()
    if _shared():
        try:
            client, _ = _redis()
            pipe = client.pipeline(transaction=False)
            for deployment_id in deployment_ids:
                key = _key(deployment_id)
                pipe.hmget(key, "open_until", "trips", "last_error", "last_failure_at")
                pipe.zcount(f"{key}:f", now - settings.HEALTH_WINDOW_SECONDS, "+inf")
            rows = pipe.execute()
            _redis_down_since[0] = 0.0
            found = {}
            for index, deployment_id in enumerate(deployment_ids):
                open_until, trips, error, failed_at = rows[index * 2]
                found[deployment_id] = State(
                    deployment_id,
                    float(open_until or 0),
                    int(trips or 0),
                    int(rows[index * 2 + 1] or 0),
                    error or "",
                    float(failed_at or 0),
                )
            return found
        except Exception as exc:  # noqa: BLE001 - Redis trouble never stops routing
            _redis_failed(exc)
    return _local.states(deployment_ids, now)


def take_trial(deployment_id: int, lease_seconds: float) -> bool:
    """Whether this request is the one half-open trial of the deployment (a lease, so that
    a trial whose request died is retried after `lease_seconds`)."""
    now = time.time()
    if _shared():
        try:
            client, _ = _redis()
            lease_ms = max(1, math.ceil(lease_seconds * 1000))
            return bool(client.set(f"{_key(deployment_id)}:t", "1", nx=True, px=lease_ms))
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)
    return _local.take_trial(deployment_id, now, lease_seconds)


def failed(deployment_id: int, error: str, retry_after: float = 0.0) -> float:
    """Count a failure; returns when the circuit will be closed again (0: it is closed)."""
    now = time.time()
    error = error[:300]
    if _shared():
        try:
            _, script = _redis()
            key = _key(deployment_id)
            result = script(
                keys=[key, f"{key}:f", f"{key}:t"],
                args=[
                    repr(now),
                    settings.HEALTH_WINDOW_SECONDS,
                    settings.HEALTH_FAILURE_THRESHOLD,
                    settings.HEALTH_COOLDOWN_SECONDS,
                    settings.HEALTH_COOLDOWN_MAX_SECONDS,
                    retry_after,
                    error,
                    uuid.uuid4().hex,
                ],
            )
            _seen.pop(deployment_id, None)  # read afresh on this process's next request
            return float(result)
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)
    _seen.pop(deployment_id, None)
    return _local.fail(deployment_id, now, retry_after, error)


def closed(deployment_id: int) -> None:
    """The deployment answered: close its circuit and forget its failures."""
    if _shared():
        try:
            client, _ = _redis()
            key = _key(deployment_id)
            client.delete(key, f"{key}:f", f"{key}:t")
            _remember(State(deployment_id))
            return
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)
    _seen.pop(deployment_id, None)
    _local.close(deployment_id)


def force_open(deployment_id: int, seconds: float) -> None:
    """An operator takes a deployment out of rotation for `seconds`."""
    until = time.time() + seconds
    _seen.pop(deployment_id, None)
    if _shared():
        try:
            client, _ = _redis()
            client.hset(_key(deployment_id), mapping={"open_until": repr(until)})
            client.expire(_key(deployment_id), max(86400, math.ceil(seconds) + 60))
            return
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)
    _local.force_open(deployment_id, until)
