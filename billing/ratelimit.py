"""Per-key rate limits: requests per minute and images per minute, as a token bucket (GCRA).

One Lua script checks and takes both limits atomically in Redis, on Redis's own clock, so
every web process shares them. Without Redis (the embedded default) the same algorithm runs
in-process. If Redis fails, requests flow (fail open) and the failure is logged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from aperture.errors import RateLimited

logger = logging.getLogger(__name__)
WINDOW_SECONDS = 60.0

# KEYS: one per limit. ARGV: for each limit, interval (s per unit), burst (units), cost.
# Returns {allowed, retry_after_ms, tat_ms of each limit...} computed at Redis's time.
_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tats = {}
local retry = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i * 3 - 2])
  local burst = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local wait = new_tat - burst * interval - now
  if wait > retry then retry = wait end
  tats[i] = new_tat
end
if retry > 0 then
  local current = {0, retry}
  for i, key in ipairs(KEYS) do
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    current[i + 2] = tat
  end
  current[#KEYS + 3] = now
  return current
end
local result = {1, 0}
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', math.ceil(tats[i] - now) + 1000)
  result[i + 2] = tats[i]
end
result[#KEYS + 3] = now
return result
"""


@dataclass(frozen=True)
class Limit:
    name: str  # "requests" or "images"
    per_minute: int
    cost: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float
    headers: dict[str, str]


def _headers(limits: list[Limit], tats_ms: list[float], now_ms: float) -> dict[str, str]:
    headers = {}
    for limit, tat in zip(limits, tats_ms, strict=True):
        interval = WINDOW_SECONDS * 1000 / limit.per_minute
        used = max(0.0, tat - now_ms)
        remaining = max(0, math.floor((limit.per_minute * interval - used) / interval))
        headers[f"x-ratelimit-limit-{limit.name}"] = str(limit.per_minute)
        headers[f"x-ratelimit-remaining-{limit.name}"] = str(remaining)
        headers[f"x-ratelimit-reset-{limit.name}"] = f"{used / 1000:.3f}s"
    return headers


@lru_cache(maxsize=1)
def _redis() -> Any:
    import redis

    client = redis.Redis.from_url(
        settings.RATE_LIMIT_REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    return client, client.register_script(_SCRIPT)


class _LocalBuckets:
    """The same algorithm for a single process (embedded default, no Redis)."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, keys: list[str], args: list[float]) -> list[float]:
        now = time.time() * 1000
        with self._lock:
            tats, retry = [], 0.0
            for i, key in enumerate(keys):
                interval, burst, cost = args[i * 3 : i * 3 + 3]
                tat = max(self._tats.get(key, now), now)
                new_tat = tat + cost * interval
                retry = max(retry, new_tat - burst * interval - now)
                tats.append(new_tat)
            if retry > 0:
                return [0, retry, *[max(self._tats.get(k, now), now) for k in keys], now]
            for key, tat in zip(keys, tats, strict=True):
                self._tats[key] = tat
            return [1, 0, *tats, now]


_local = _LocalBuckets()


def check(*, key_id: int, limits: list[Limit]) -> Decision:
    """Take `limits` for this key, or refuse with the time until they fit."""
    limits = [limit for limit in limits if limit.per_minute]
    if not limits:
        return Decision(True, 0.0, {})
    keys = [f"aperture:rl:{settings.CACHE_KEY_PREFIX}:{key_id}:{limit.name}" for limit in limits]
    args: list[float] = []
    for limit in limits:
        interval = WINDOW_SECONDS * 1000 / limit.per_minute
        args += [interval, limit.per_minute, limit.cost]
    if settings.RATE_LIMIT_REDIS_URL:
        try:
            client, script = _redis()
            raw = script(keys=keys, args=args, client=client)
        except Exception:
            logger.error("rate limiter unavailable; allowing the request", exc_info=True)
            return Decision(True, 0.0, {})
    else:
        raw = _local.take(keys, args)
    values = [float(v) for v in raw]
    allowed, retry_ms, now_ms = bool(values[0]), values[1], values[-1]
    headers = _headers(limits, values[2:-1], now_ms)
    return Decision(allowed, retry_ms / 1000, headers)


def enforce(*, key_id: int, rpm: int | None, ipm: int | None, images: int) -> dict[str, str]:
    """Headers to send; raises RateLimited (429 with Retry-After) when over a limit."""
    limits = [Limit("requests", rpm or 0, 1), Limit("images", ipm or 0, images)]
    decision = check(key_id=key_id, limits=limits)
    if not decision.allowed:
        retry_after = max(1, math.ceil(decision.retry_after))
        raise RateLimited(
            f"Rate limit reached for this API key; retry in {retry_after}s.",
            headers={**decision.headers, "Retry-After": str(retry_after)},
        )
    return decision.headers


def ping() -> bool:
    if not settings.RATE_LIMIT_REDIS_URL:
        return True
    try:
        client, _ = _redis()
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False
