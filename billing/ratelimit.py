"""Per-key rate limits: requests per minute and images per minute, as exact sliding windows.

Each limit is a sorted set of the last minute's admissions (score: time, member: cost and a
nonce). One Lua script checks and takes every limit of a request atomically in Redis, on
Redis's own clock, so all web processes share them: the 61st request within any 60 seconds
of a 60 rpm key is refused, with the time until enough admissions age out as Retry-After.
Without Redis (the embedded default) the same runs in-process. If Redis fails, requests
flow (fail open) and the failure is logged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from aperture.errors import RateLimited

logger = logging.getLogger(__name__)
WINDOW_MS = 60_000

# KEYS: one sorted set per limit. ARGV: nonce, then per limit: limit, cost.
# Returns {allowed, retry_after_ms, now_ms, then per limit: used_after, reset_ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = 60000
local nonce = ARGV[1]
local retry = 0
local used = {}
local oldest = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i * 2])
  local cost = tonumber(ARGV[i * 2 + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local total = 0
  for j = 1, #entries, 2 do
    total = total + tonumber(string.match(entries[j], '^(%d+):'))
  end
  used[i] = total
  oldest[i] = entries[2] and tonumber(entries[2]) or now
  if total + cost > limit then
    local excess = total + cost - limit
    local freed = 0
    for j = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[j], '^(%d+):'))
      if freed >= excess then
        local wait = tonumber(entries[j + 1]) + window - now
        if wait > retry then retry = wait end
        break
      end
    end
    if cost > limit then retry = window end
  end
end
local result = {0, retry, now}
if retry == 0 then result[1] = 1 end
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[i * 2 + 1])
  if retry == 0 then
    redis.call('ZADD', key, now, cost .. ':' .. nonce)
    redis.call('PEXPIRE', key, window)
    used[i] = used[i] + cost
  end
  result[#result + 1] = used[i]
  result[#result + 1] = oldest[i] + window - now
end
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


@lru_cache(maxsize=1)
def _redis() -> Any:
    import redis

    pool = redis.BlockingConnectionPool.from_url(
        settings.RATE_LIMIT_REDIS_URL,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=2,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
    )
    client = redis.Redis(connection_pool=pool)
    return client, client.register_script(_SCRIPT)


class _LocalWindows:
    """The same algorithm for a single process (embedded default, no Redis)."""

    def __init__(self) -> None:
        self._entries: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def take(self, keys: list[str], args: list[Any]) -> list[float]:
        now = time.time() * 1000
        with self._lock:
            retry, used, oldest = 0.0, [], []
            for i, key in enumerate(keys):
                limit, cost = int(args[1 + i * 2]), int(args[2 + i * 2])
                entries = self._entries.setdefault(key, deque())
                while entries and entries[0][0] <= now - WINDOW_MS:
                    entries.popleft()
                total = sum(c for _, c in entries)
                used.append(total)
                oldest.append(entries[0][0] if entries else now)
                if total + cost > limit:
                    freed, excess = 0, total + cost - limit
                    for stamp, c in entries:
                        freed += c
                        if freed >= excess:
                            retry = max(retry, stamp + WINDOW_MS - now)
                            break
                    if cost > limit:
                        retry = WINDOW_MS
            result: list[float] = [0.0 if retry else 1.0, retry, now]
            for i, key in enumerate(keys):
                cost = int(args[2 + i * 2])
                if not retry:
                    self._entries[key].append((now, cost))
                    used[i] += cost
                result += [used[i], oldest[i] + WINDOW_MS - now]
            return result


_local = _LocalWindows()
_last_error = [float("-inf")]


def check(*, key_id: int, limits: list[Limit]) -> Decision:
    """Take `limits` for this key, or refuse with the time until they fit."""
    limits = [limit for limit in limits if limit.per_minute]
    if not limits:
        return Decision(True, 0.0, {})
    keys = [f"aperture:rl:{settings.CACHE_KEY_PREFIX}:{key_id}:{limit.name}" for limit in limits]
    args: list[Any] = [uuid.uuid4().hex]
    for limit in limits:
        args += [limit.per_minute, limit.cost]
    if settings.RATE_LIMIT_REDIS_URL:
        try:
            client, script = _redis()
            raw = script(keys=keys, args=args, client=client)
        except Exception as exc:  # noqa: BLE001 - fail open: Redis trouble never stops serving
            now = time.monotonic()
            if now - _last_error[0] >= 10:  # one line per 10 s, not one per request
                _last_error[0] = now
                logger.error("rate limiter unavailable (%s); allowing requests", exc)
            return Decision(True, 0.0, {})
    else:
        raw = _local.take(keys, args)
    values = [float(v) for v in raw]
    headers = {}
    for i, limit in enumerate(limits):
        used, reset_ms = values[3 + i * 2], max(0.0, values[4 + i * 2])
        headers[f"x-ratelimit-limit-{limit.name}"] = str(limit.per_minute)
        headers[f"x-ratelimit-remaining-{limit.name}"] = str(max(0, limit.per_minute - int(used)))
        headers[f"x-ratelimit-reset-{limit.name}"] = f"{reset_ms / 1000:.3f}s"
    return Decision(bool(values[0]), values[1] / 1000, headers)


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
