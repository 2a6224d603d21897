"""Async jobs: 1,000 `Prefer: respond-async` submits in one burst against a 10-s upstream, run
by a Celery worker on the gevent pool (as `make serve` runs it): submit latency, the time until
every job has ended, and the peak memory of the web and of the worker.

The section starts its own gateway and worker on a queue of their own, so that no message left
on the shared broker by an earlier run is taken for one of these jobs; it waits on the jobs'
rows (one query each POLL seconds), not on 1,000 HTTP polls.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests

from bench.serve import stop_group

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOBS = 1000
DELAY = 10.0  # seconds the fake upstream takes per image
WORKER_CONCURRENCY = 200  # gevent greenlets of the worker
SUBMIT_TIMEOUT = 60.0  # per submit
GIVE_UP = 300.0  # after the first submit
POLL = 0.5  # seconds between the queries on the jobs' rows
IMAGE_BYTES = 5_000  # about the size of the fake's own 1024x1024 solid-colour PNG
WARM = 4  # jobs run (upstream at 0 s) before the burst: the worker is up and warm
FINAL = ("succeeded", "failed", "cancelled")
# What the processes' logs are searched for: pool timeouts first, then any other failure.
POOL_TIMEOUT = re.compile(r"PoolTimeout|couldn't get a connection|pool timeout", re.IGNORECASE)
FAILURE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Exception", re.IGNORECASE)


@dataclass
class _Submits:
    started: list[float] = field(default_factory=list)  # perf_counter at each send
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # non-202: status and reason
    location: str = ""  # one accepted job's, polled once over HTTP at the end


def _at(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank), as bench/loadgen.py takes it."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _tree(pid: int) -> list[int]:
    """A process and all its descendants (gunicorn's master and workers)."""
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            pending += [int(child) for child in children]
    return pids


def _tree_rss_mb(pid: int) -> float:
    """RSS of a process tree, in MB (0 once it is gone)."""
    total = 0
    for current in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process tree has used so far (its live processes')."""
    ticks = 0
    for current in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[int]:
    """A process in its own session, its output to `log`; its whole group is ended on exit
    (SIGTERM, then SIGKILL after 30 s). Yields its pid."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process.pid
        finally:
            stop_group(process)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_http(url: str, pid: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline or not _alive(pid):
                raise SystemExit(f"{url} did not come up:\n{_tail(log)}") from None
            time.sleep(0.1)


def _counts(conn: psycopg.Connection[Any], after_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM routing_imagejob WHERE id > %s GROUP BY status",
        (after_id,),
    ).fetchall()
    return {status: count for status, count in rows}


def _warm(
    conn: psycopg.Connection[Any],
    gateway: str,
    auth: dict[str, str],
    body: bytes,
    worker: tuple[int, Path],
) -> None:
    """A few jobs end to end: the worker is consuming and has connected, the gateway's
    workers have imported everything."""
    before = _last_id(conn)
    for _ in range(WARM):
        answer = requests.post(
            f"{gateway}/v1/images/generations",
            data=body,
            headers={**auth, "Content-Type": "application/json", "Prefer": "respond-async"},
            timeout=30,
        )
        if answer.status_code != 202:
            raise SystemExit(f"warm-up submit answered {answer.status_code}: {answer.text}")
    deadline = time.monotonic() + 90
    while sum(_counts(conn, before).get(status, 0) for status in FINAL) < WARM:
        pid, log = worker
        if time.monotonic() > deadline or not _alive(pid):
            raise SystemExit(f"the worker did not run the warm-up jobs:\n{_tail(log)}")
        time.sleep(POLL)


def _last_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM routing_imagejob").fetchone()
    assert row is not None
    return int(row[0])


def _submit_burst(gateway: str, auth: dict[str, str], body: bytes) -> tuple[_Submits, float]:
    """JOBS threads released together by a barrier, one submit each, each bounded by
    SUBMIT_TIMEOUT. Returns the figures so far (they fill in as the threads end) and the
    moment the barrier released them; the threads are daemons."""
    host, port = gateway.removeprefix("http://").split(":")
    headers = {
        **auth,
        "Content-Type": "application/json",
        "Prefer": "respond-async",
        "Connection": "close",
    }
    submits = _Submits()
    lock = threading.Lock()
    barrier = threading.Barrier(JOBS + 1)

    def submit() -> None:
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            return
        started = time.perf_counter()
        connection = http.client.HTTPConnection(host, int(port), timeout=SUBMIT_TIMEOUT)
        try:
            connection.request("POST", "/v1/images/generations", body, headers)
            response = connection.getresponse()
            status, answer = response.status, response.read()
            location = response.getheader("Location") or ""
        except (OSError, http.client.HTTPException) as error:
            status, answer, location = 599, type(error).__name__.encode(), ""
        finally:
            connection.close()
        elapsed = time.perf_counter() - started
        with lock:
            submits.started.append(started)
            submits.latencies.append(elapsed)
            submits.statuses[status] += 1
            if status != 202:
                submits.refusals[f"{status} {answer[:160].decode(errors='replace')}"] += 1
            elif not submits.location:
                submits.location = location

    # 1,000 threads at the default 8 MB of stack each is 8 GB of address space for nothing.
    previous = threading.stack_size(512 * 1024)
    try:
        threads = [threading.Thread(target=submit, daemon=True) for _ in range(JOBS)]
        for thread in threads:
            thread.start()
    finally:
        threading.stack_size(previous)
    barrier.wait(timeout=60)
    return submits, time.perf_counter()


@dataclass
class _Watched:
    """A process tree's memory, before the burst and at its peak during it (sampled every
    0.2 s), and the CPU time it used from the burst until the jobs ended."""

    pid: int
    rss_before: float = 0.0
    rss_peak: float = 0.0
    cpu_before: float = 0.0
    cpu_used: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.rss_before:.0f} MB before, peak {self.rss_peak:.0f} MB; "
            f"{self.cpu_used:.1f} CPU-s ({self.cpu_used / JOBS * 1000:.1f} ms a job)"
        )


@contextlib.contextmanager
def _watching(*watched: _Watched) -> Iterator[None]:
    stop = threading.Event()
    for one in watched:
        one.rss_before = one.rss_peak = _tree_rss_mb(one.pid)
        one.cpu_before = _tree_cpu_seconds(one.pid)

    def sample() -> None:
        while not stop.wait(0.2):
            for one in watched:
                one.rss_peak = max(one.rss_peak, _tree_rss_mb(one.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        for one in watched:
            one.cpu_used = _tree_cpu_seconds(one.pid) - one.cpu_before


def _log_findings(name: str, log: Path) -> str:
    """How many pool timeouts and other failures a process logged, and the first few."""
    lines = log.read_text(errors="replace").splitlines()
    timeouts = [line for line in lines if POOL_TIMEOUT.search(line)]
    failures = [line for line in lines if FAILURE.search(line) and not POOL_TIMEOUT.search(line)]
    summary = (
        f"{name} log: {len(timeouts)} pool-timeout line(s), {len(failures)} other error line(s)"
    )
    distinct = list(dict.fromkeys(line.strip()[:200] for line in timeouts + failures))[:5]
    return "\n".join([summary, *(f"  | {line}" for line in distinct)])


def _spans(conn: psycopg.Connection[Any], after_id: int) -> tuple[list[float], list[float]]:
    """Each ended job's queue wait (created -> started) and run time (started -> finished)."""
    rows = conn.execute(
        "SELECT extract(epoch FROM started_at - created_at), "
        "extract(epoch FROM finished_at - started_at) FROM routing_imagejob "
        "WHERE id > %s AND started_at IS NOT NULL AND finished_at IS NOT NULL",
        (after_id,),
    ).fetchall()
    return [float(wait) for wait, _ in rows], [float(ran) for _, ran in rows]


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {_at(values, 50):.2f} s, p99 {_at(values, 99):.2f} s, max {max(values):.2f} s"


def run_jobs(env: dict[str, str], upstream_url: str, key: str, body: bytes) -> None:
    """The section: its own gateway and worker, a warm-up, the burst, the figures."""
    queue = f"bench-jobs-{os.getpid()}"
    port = _free_port()
    gateway = f"http://127.0.0.1:{port}"
    pool_size = env.get("APERTURE_DB_POOL_MAX_SIZE", "8")
    pool_timeout = env.get("APERTURE_DB_POOL_TIMEOUT", "10")
    served = {
        **env,
        "PORT": str(port),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "APERTURE_METRICS_CELERY_QUEUES": queue,
    }
    logs = Path(env.get("APERTURE_VAR_DIR", str(ROOT / "var" / "bench")))
    logs.mkdir(parents=True, exist_ok=True)
    web_log, worker_log = logs / "jobs-web.log", logs / "jobs-worker.log"
    worker_command = [
        str(BIN / "celery"),
        "-A",
        "aperture",
        "worker",
        "--pool",
        "gevent",
        "--concurrency",
        str(WORKER_CONCURRENCY),
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--loglevel",
        "WARNING",
    ]
    auth = {"Authorization": f"Bearer {key}"}
    print(
        f"\n## Async jobs: {JOBS} submitted in one burst, upstream {DELAY:.0f} s per image "
        f"(one ~{IMAGE_BYTES // 1000} KB PNG)"
    )
    print(
        f"(web: gunicorn, {env.get('WEB_CONCURRENCY', '1')} gevent worker(s); worker: celery "
        f"--pool gevent --concurrency {WORKER_CONCURRENCY} -Q {queue}; DB pool max {pool_size} "
        f"connections per process, wait {pool_timeout} s; submits: {JOBS} threads, one "
        f"connection each, {SUBMIT_TIMEOUT:.0f} s timeout; give up {GIVE_UP:.0f} s after the "
        "first submit)"
    )
    database = env["DATABASE_URL"]
    try:
        with contextlib.ExitStack() as stack:
            web_pid = stack.enter_context(
                _process(
                    [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "aperture.wsgi"],
                    served,
                    web_log,
                )
            )
            worker_pid = stack.enter_context(_process(worker_command, served, worker_log))
            conn = stack.enter_context(psycopg.connect(database, autocommit=True))
            _wait_http(f"{gateway}/healthz", web_pid, web_log)
            requests.post(f"{upstream_url}/_control/delay", json={"delay": 0}, timeout=5)
            # One image rendered once and answered to every call: the fake's PNG encoding
            # (~15 ms of CPU a call, under its GIL) would land 200 at a time, as each wave of
            # jobs ends, on the cores the gateway's processes run on.
            requests.post(
                f"{upstream_url}/_control/image_bytes", json={"bytes": IMAGE_BYTES}, timeout=60
            )
            _warm(conn, gateway, auth, body, (worker_pid, worker_log))
            after_id = _last_id(conn)
            web, worker = _Watched(web_pid), _Watched(worker_pid)
            requests.post(f"{upstream_url}/_control/delay", json={"delay": DELAY}, timeout=5)
            with _watching(web, worker):
                submits, released = _submit_burst(gateway, auth, body)
                ended_at, counts, peak_running = _await_all(conn, after_id, submits, released)
            _report(
                conn,
                after_id,
                submits,
                released,
                ended_at,
                counts,
                peak_running,
                (web, worker),
                _job_over_http(gateway, submits.location, auth),
            )
    finally:
        for control, value in (("delay", {"delay": 0}), ("image_bytes", {"bytes": 0})):
            with contextlib.suppress(requests.RequestException):
                requests.post(f"{upstream_url}/_control/{control}", json=value, timeout=60)
        with contextlib.suppress(redis.RedisError, KeyError):
            # The queue and its exchange's bindings, all named after it (kombu's Redis keys).
            redis.Redis.from_url(env["REDIS_URL"]).delete(
                queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
            )
    print(_log_findings("web", web_log))
    print(_log_findings("worker", worker_log))
    print(f"(logs: {web_log}, {worker_log})")


def _await_all(
    conn: psycopg.Connection[Any], after_id: int, submits: _Submits, released: float
) -> tuple[float | None, dict[str, int], int]:
    """Poll the rows until every accepted job has ended (and every submit has answered), or
    GIVE_UP. Returns when that was (None if given up), the last counts and the most jobs seen
    running at once."""
    peak_running = 0
    counts: dict[str, int] = {}
    while True:
        counts = _counts(conn, after_id)
        peak_running = max(peak_running, counts.get("running", 0))
        answered = len(submits.latencies) == JOBS
        final = sum(counts.get(status, 0) for status in FINAL)
        now = time.perf_counter()
        if answered and final >= submits.statuses.get(202, 0):
            return now, counts, peak_running
        if now - released > GIVE_UP:
            return None, counts, peak_running
        time.sleep(POLL)


def _job_over_http(gateway: str, location: str, auth: dict[str, str]) -> str:
    """One accepted job, polled as a client would: its status and whether its result loads."""
    if not location:
        return "no job accepted"
    url = location if location.startswith("http") else f"{gateway}{location}"
    try:
        answer = requests.get(url, headers=auth, timeout=10)
    except requests.RequestException as error:
        return f"GET {location}: {type(error).__name__}"
    job = answer.json() if answer.ok else {}
    result = job.get("result") or {}
    return (
        f"GET {location}: {answer.status_code}, status {job.get('status')}, "
        f"{len(result.get('data') or [])} image(s) in its result"
    )


def _report(
    conn: psycopg.Connection[Any],
    after_id: int,
    submits: _Submits,
    released: float,
    ended_at: float | None,
    counts: dict[str, int],
    peak_running: int,
    watched: tuple[_Watched, _Watched],
    polled: str,
) -> None:
    first = min(submits.started, default=released)
    last_answer = max(
        (
            start + latency
            for start, latency in zip(submits.started, submits.latencies, strict=True)
        ),
        default=released,
    )
    p50, p99 = _at(submits.latencies, 50) * 1000, _at(submits.latencies, 99) * 1000
    other = {status: n for status, n in submits.statuses.items() if status != 202}
    print(
        f"submits: {submits.statuses.get(202, 0)} x 202, other {other or 'none'}; "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms; all answered {last_answer - first:.2f} s "
        "after the first"
    )
    for refusal, n in submits.refusals.most_common(5):
        print(f"  {n} x {refusal}")
    ideal = JOBS * DELAY / WORKER_CONCURRENCY
    if ended_at is None:
        print(f"NOT DONE: gave up {GIVE_UP:.0f} s after the first submit; jobs by status {counts}")
    else:
        print(
            f"all {sum(counts.values())} jobs ended {ended_at - first:.1f} s after the first "
            f"submit (ideal {ideal:.0f} s: {JOBS} x {DELAY:.0f} s at concurrency "
            f"{WORKER_CONCURRENCY}; polled every {POLL} s)"
        )
    failed = conn.execute(
        "SELECT coalesce(error->'error'->>'code', error->'error'->>'type', '?'), count(*) "
        "FROM routing_imagejob WHERE id > %s AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC",
        (after_id,),
    ).fetchall()
    print(
        f"succeeded {counts.get('succeeded', 0)}, failed {counts.get('failed', 0)}"
        + (f" ({', '.join(f'{code}: {n}' for code, n in failed)})" if failed else "")
        + f", still queued {counts.get('queued', 0)}, running {counts.get('running', 0)}; "
        f"at most {peak_running} seen running at once"
    )
    waits, runs = _spans(conn, after_id)
    print(f"queue wait (created -> started): {_spread(waits)}")
    print(f"run time (started -> finished, upstream {DELAY:.0f} s): {_spread(runs)}")
    if ended_at is not None and runs:
        # How much of the time the worker's slots held a job: the rest is the gaps between
        # one job's end and the next one's start, and slots idle at the start and the end.
        busy = sum(runs) / (WORKER_CONCURRENCY * (ended_at - first))
        print(
            f"mean run {sum(runs) / len(runs):.2f} s; the {WORKER_CONCURRENCY} slots held a "
            f"job {busy:.0%} of the time"
        )
    web, worker = watched
    print(f"web (gunicorn master + workers): {web.summary()}")
    print(f"worker (celery process tree)   : {worker.summary()}")
    print(polled)
