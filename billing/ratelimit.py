"""Per-key rate limits: requests per minute and images per minute, as exact sliding windows;
and per end user of a key: requests per minute, and images per UTC day.

Each per-minute limit is a sorted set of the last minute's admissions (score: time, member:
cost and a nonce). One Lua script checks and takes every limit of a request atomically in
Redis, on Redis's own clock, so all web processes share them: the 61st request within any 60
seconds of a 60 rpm key is refused, with the time until enough admissions age out as
Retry-After. An end user's window is one more sorted set in the same script.

An end user's images per day are a counter per (key, end user, UTC day), taken like a budget
hold: a request's worst case is added only if the day's total stays within the limit (one
Lua script), and settling gives back what the call did not produce. A hold whose worker died
before settling stays counted: the day errs towards refusing, never towards serving more.

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
from aperture.redis_cache import script_client

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
    name: str  # "requests" or "images"; "user-requests" for an end user's
    per_minute: int
    cost: int
    end_user: str = ""  # an end user's id (tenants/end_users.py): a window of its own

    def bucket(self, key_id: int) -> str:
        scope = f"{key_id}:u:{self.end_user}" if self.end_user else f"{key_id}"
        return f"aperture:rl:{settings.CACHE_KEY_PREFIX}:{scope}:{self.name}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float
    headers: dict[str, str]
    over: tuple[Limit, ...] = ()  # the limits that refused


@lru_cache(maxsize=1)
def _redis() -> Any:
    client = script_client()
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
    keys = [limit.bucket(key_id) for limit in limits]
    args: list[Any] = [uuid.uuid4().hex]
    for limit in limits:
        args += [limit.per_minute, limit.cost]
    if settings.RATE_LIMIT_REDIS_URL:
        try:
            client, script = _redis()
            raw = script(keys=keys, args=args, client=client)
        except Exception as exc:  # noqa: BLE001 - fail open: Redis trouble never stops serving
            _log_unavailable(exc)
            return Decision(True, 0.0, {})
    else:
        raw = _local.take(keys, args)
    values = [float(v) for v in raw]
    allowed = bool(values[0])
    headers, over = {}, []
    for i, limit in enumerate(limits):
        used, reset_ms = values[3 + i * 2], max(0.0, values[4 + i * 2])
        headers[f"x-ratelimit-limit-{limit.name}"] = str(limit.per_minute)
        headers[f"x-ratelimit-remaining-{limit.name}"] = str(max(0, limit.per_minute - int(used)))
        headers[f"x-ratelimit-reset-{limit.name}"] = f"{reset_ms / 1000:.3f}s"
        if not allowed and used + limit.cost > limit.per_minute:  # refused: nothing was taken
            over.append(limit)
    return Decision(allowed, values[1] / 1000, headers, tuple(over))


def enforce(
    *,
    key_id: int,
    rpm: int | None,
    ipm: int | None,
    images: int,
    end_user: str = "",
    user_rpm: int | None = None,
) -> dict[str, str]:
    """Headers to send; raises RateLimited (429 with Retry-After) when over a limit: the
    key's own (`rate_limit_exceeded`), or else its end user's (`user_rate_limit_exceeded`)."""
    limits = [Limit("requests", rpm or 0, 1), Limit("images", ipm or 0, images)]
    if end_user:
        limits.append(Limit("user-requests", user_rpm or 0, 1, end_user=end_user))
    decision = check(key_id=key_id, limits=limits)
    if not decision.allowed:
        retry_after = max(1, math.ceil(decision.retry_after))
        headers = {**decision.headers, "Retry-After": str(retry_after)}
        if all(limit.end_user for limit in decision.over):
            raise RateLimited(
                f"Rate limit reached for this end user ('user'); retry in {retry_after}s.",
                code="user_rate_limit_exceeded",
                headers=headers,
            )
        raise RateLimited(
            f"Rate limit reached for this API key; retry in {retry_after}s.", headers=headers
        )
    return decision.headers


# --- An end user's images per UTC day ------------------------------------------------------

DAY_SECONDS = 86_400
# KEYS: the day's counter. ARGV: limit, images, seconds to keep it. Returns {taken, used}.
_DAILY_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local images = tonumber(ARGV[2])
if used + images > tonumber(ARGV[1]) then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], images)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, used}
"""
# KEYS: the day's counter. ARGV: images to give back (negative: produced beyond the hold).
# A counter gone with its day is not brought back.
_DAILY_GIVE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('DECRBY', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class DailyHold:
    """An end user's images held for one request: on that day's counter, given back at settle."""

    counter: str
    images: int


@lru_cache(maxsize=1)
def _daily_redis() -> tuple[Any, Any, Any]:
    client, _ = _redis()
    return client, client.register_script(_DAILY_TAKE), client.register_script(_DAILY_GIVE_BACK)


class _LocalCounters:
    """The day's counters for a single process (embedded default, no Redis)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, counter: str, limit: int, images: int) -> tuple[int, int]:
        with self._lock:
            day = counter.rsplit(":", 1)[1]
            for name in [c for c in self._counts if not c.endswith(day)]:  # past days
                del self._counts[name]
            used = self._counts.get(counter, 0)
            if used + images > limit:
                return 0, used
            self._counts[counter] = used + images
            return 1, used + images

    def give_back(self, counter: str, images: int) -> None:
        with self._lock:
            if counter in self._counts:
                self._counts[counter] -= images


_local_counters = _LocalCounters()


def _until_midnight(now: float) -> float:
    return DAY_SECONDS - now % DAY_SECONDS


def take_daily(
    *, key_id: int, end_user: str, limit: int, images: int
) -> tuple[DailyHold | None, dict[str, str]]:
    """Hold `images` of the end user's day: the hold (None if nothing was counted) and the
    headers to send; raises RateLimited (429 `user_daily_limit_exceeded`, Retry-After: until
    the UTC day ends) when they do not fit."""
    now = time.time()
    day = time.strftime("%Y%m%d", time.gmtime(now))
    counter = f"aperture:ud:{settings.CACHE_KEY_PREFIX}:{key_id}:{end_user}:{day}"
    if settings.RATE_LIMIT_REDIS_URL:
        try:
            client, take, _ = _daily_redis()
            raw = take(keys=[counter], args=[limit, images, 2 * DAY_SECONDS], client=client)
            taken, used = int(raw[0]), int(raw[1])
        except Exception as exc:  # noqa: BLE001 - fail open, as the per-minute limits do
            _log_unavailable(exc)
            return None, {}
    else:
        taken, used = _local_counters.take(counter, limit, images)
    reset = _until_midnight(now)
    headers = {
        "x-ratelimit-limit-user-images-day": str(limit),
        "x-ratelimit-remaining-user-images-day": str(max(0, limit - used)),
        "x-ratelimit-reset-user-images-day": f"{reset:.3f}s",
    }
    if not taken:
        retry_after = max(1, math.ceil(reset))
        raise RateLimited(
            f"This end user ('user') has {max(0, limit - used)} of {limit} images left today "
            f"(UTC) on this API key; this request may make {images}.",
            code="user_daily_limit_exceeded",
            headers={**headers, "Retry-After": str(retry_after)},
        )
    return DailyHold(counter=counter, images=images), headers


def settle_daily(hold: DailyHold | None, *, images: int) -> None:
    """Count what the call produced instead of what was held: gives back the difference (all of
    it for a call that failed). Never raises."""
    if hold is None or images == hold.images:
        return
    back = hold.images - images
    if not settings.RATE_LIMIT_REDIS_URL:
        _local_counters.give_back(hold.counter, back)
        return
    try:
        client, _, give_back = _daily_redis()
        give_back(keys=[hold.counter], args=[back], client=client)
    except Exception as exc:  # noqa: BLE001 - the day stays counted as held: errs to refusing
        _log_unavailable(exc)


def _log_unavailable(exc: Exception) -> None:
    now = time.monotonic()
    if now - _last_error[0] >= 10:  # one line per 10 s, not one per request
        _last_error[0] = now
        logger.error("rate limiter unavailable (%s); allowing requests", exc)


def ping() -> bool:
    if not settings.RATE_LIMIT_REDIS_URL:
        return True
    try:
        client, _ = _redis()
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False
