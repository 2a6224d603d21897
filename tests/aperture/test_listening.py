"""How gunicorn listens (gunicorn.conf.py): a socket per worker where the kernel hands a
stopping worker's waiting connections on, so that connections are shared out among the
workers; else one shared socket, which reloads drop nothing from; an address taken already
refused at start; the control socket in the var dir."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, Server, gunicorn, gunicorn_command, wait_for

OWN_SOCKETS = {"APERTURE_REUSE_PORT": "true"}
CONNECTIONS = 64
# Shared evenly, each of two workers holds fewer than this with a chance of about 1 in 10^11.
FEWEST = 8
_LISTEN, _ESTABLISHED = "0A", "01"  # /proc/net/tcp states


def _sockets(port: int, state: str) -> set[str]:
    """The inodes of this host's TCP sockets on local `port` in `state`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _held_by(pids: list[int], inodes: set[str]) -> Counter[int]:
    """How many of the sockets `inodes` each process holds open."""
    held: Counter[int] = Counter()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:  # the process ended
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] += 1
    return held


def _listening_in_master(server: Server) -> int:
    """How many listening sockets on the server's port its master holds (none: a socket per
    worker; one: the socket its workers share)."""
    return _held_by([server.pid], _sockets(server.port, _LISTEN))[server.pid]


def _listening_in_workers(server: Server) -> list[int]:
    """How many listening sockets each worker holds, once each holds one: its own once it
    has bound it (gunicorn's helper waits for one answer only), or the master's."""
    workers = server.worker_pids()

    def held() -> Counter[int]:
        return _held_by(workers, _sockets(server.port, _LISTEN))

    wait_for(lambda: len(held()) == len(workers), what="a listening socket in every worker")
    return sorted(held().values())


def test_each_worker_listens_on_a_socket_of_its_own_and_connections_are_shared_out() -> None:
    with gunicorn(OWN_SOCKETS, workers=2) as server:
        port, workers = server.port, server.worker_pids()
        assert _listening_in_workers(server) == [1, 1], "one listening socket per worker"
        assert _listening_in_master(server) == 0
        # Keep-alive connections opened at once, as a client's pool does; each answered once,
        # so each has been accepted by one worker.
        connections = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(CONNECTIONS)]
        try:
            for connection in connections:
                connection.connect()
            for connection in connections:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                assert response.status == 200
            accepted = _held_by(workers, _sockets(port, _ESTABLISHED))
        finally:
            for connection in connections:
                connection.close()
    assert sum(accepted.values()) == CONNECTIONS
    assert min(accepted.get(pid, 0) for pid in workers) >= FEWEST, accepted


def test_with_reuse_port_off_the_workers_share_the_masters_socket() -> None:
    with gunicorn({"APERTURE_REUSE_PORT": "false"}, workers=2) as server:
        listening = _sockets(server.port, _LISTEN)
        assert len(listening) == 1
        assert _listening_in_master(server) == 1


def _start_on(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gunicorn_command(),
        cwd=ROOT,
        env={**os.environ, **OWN_SOCKETS, "PORT": str(port), "WEB_CONCURRENCY": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_address_another_process_listens_on_is_refused_at_start() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        refused = _start_on(other.getsockname()[1])  # with workers respawned, it never ends
    assert refused.returncode == 1
    assert "Address already in use" in refused.stderr
    assert "Booting worker" not in refused.stderr  # refused by the master, not worker by worker


def test_a_second_gateway_on_the_same_port_is_refused_rather_than_sharing_it() -> None:
    with gunicorn(OWN_SOCKETS, workers=2) as server:
        refused = _start_on(server.port)
    assert refused.returncode == 1
    assert "another process is listening there" in refused.stderr


def test_the_control_socket_is_in_the_var_dir_not_under_home(tmp_path: Path) -> None:
    var, home = tmp_path / "var", tmp_path / "home"
    home.mkdir(mode=0o500)  # read-only, as the systemd units' ProtectHome makes it
    env = {"APERTURE_VAR_DIR": str(var), "HOME": str(home), "XDG_RUNTIME_DIR": ""}
    with gunicorn(env) as server:
        control = var / f"gunicorn-{server.port}.ctl"  # one per port: per running master
        wait_for(control.is_socket, what="the control socket")  # after the workers start
        assert control.stat().st_mode & 0o777 == 0o600
        assert not list(home.iterdir())


def _decided(cases: list[tuple[list[object], str, int, str | None]], tmp_path: Path) -> list[bool]:
    """gunicorn.conf.py's `_reuse_port(addresses, APERTURE_REUSE_PORT, workers, the sysctl's
    file)` for each case, the sysctl's file holding the text given (None: no such file). In a
    process of its own: the file sets the metrics directory in the environment as it loads."""
    runs = []
    for number, (addresses, wanted, workers, sysctl) in enumerate(cases):
        path = tmp_path / f"tcp_migrate_req-{number}"
        if sysctl is not None:
            path.write_text(sysctl)
        runs.append([addresses, wanted, workers, str(path)])
    script = (
        "import json, runpy, sys\n"
        "from pathlib import Path\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "runs = [([tuple(a) if isinstance(a, list) else a for a in addresses], w, n, Path(f))\n"
        "        for addresses, w, n, f in json.loads(sys.argv[1])]\n"
        "print(json.dumps([conf['_reuse_port'](*run) for run in runs]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(runs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(done.stdout))


def test_auto_gives_each_worker_a_socket_only_where_the_kernel_hands_waiting_connections_on(
    tmp_path: Path,
) -> None:
    tcp: list[object] = [["127.0.0.1", 8000]]
    expected: list[tuple[tuple[list[object], str, int, str | None], bool]] = [
        ((tcp, "auto", 2, "1\n"), True),
        ((tcp, "auto", 2, "0\n"), False),
        ((tcp, "auto", 2, None), False),  # a kernel before 5.14
        ((tcp, "true", 2, "0\n"), True),
        ((tcp, "false", 2, "1\n"), False),
        ((tcp, "true", 1, "1\n"), False),  # one worker: its own socket would lose its queue
        ((["/run/aperture.sock"], "true", 2, "1\n"), False),  # unix:, from any bind
        (([3], "true", 2, "1\n"), False),  # fd://3
        (([["127.0.0.1", 0]], "true", 2, "1\n"), False),  # port 0: a port each
        (([*tcp, "/run/aperture.sock"], "auto", 2, "1\n"), False),
    ]
    cases = [case for case, _ in expected]
    assert _decided(cases, tmp_path) == [decided for _, decided in expected]


def _config_reading(sysctl: Path, directory: Path) -> Path:
    """gunicorn.conf.py, reading `sysctl` for net.ipv4.tcp_migrate_req."""
    text = (ROOT / "gunicorn.conf.py").read_text()
    real = 'Path("/proc/sys/net/ipv4/tcp_migrate_req")'
    assert real in text
    config = directory / "gunicorn.conf.py"
    config.write_text(text.replace(real, f"Path({str(sysctl)!r})"))
    return config


@pytest.mark.parametrize("before", ["0", "1"])
def test_a_reload_keeps_the_way_the_workers_listen_whatever_the_kernel_says_since(
    tmp_path: Path, before: str
) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text(before)
    config = _config_reading(sysctl, tmp_path)
    env = {"APERTURE_VAR_DIR": str(tmp_path / "var")}
    with gunicorn(env, workers=2, config=config) as server:
        _listening_in_workers(server)
        in_master = _listening_in_master(server)
        assert in_master == (0 if before == "1" else 1)
        sysctl.write_text("1" if before == "0" else "0")
        old = set(server.worker_pids())
        os.kill(server.pid, signal.SIGHUP)
        wait_for(
            lambda: not old & set(server.worker_pids()) and len(server.worker_pids()) == 2,
            what="the new workers in place of the old ones",
        )
        assert _listening_in_workers(server) == [1, 1]
        assert _listening_in_master(server) == in_master
        for _ in range(20):  # each on a new connection
            assert requests.get(f"{server}/healthz", timeout=10).status_code == 200


def _reload(server: Server, ended: Counter[str]) -> None:
    """Once 200 more requests are served, reload the workers (HUP) and wait for the new ones
    to replace the old ones."""
    before, served = set(server.worker_pids()), ended["200"]
    wait_for(lambda: ended["200"] > served + 200, what="requests under way")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(
        lambda: len(set(server.worker_pids()) - before) == 2 == len(server.worker_pids()),
        what="the new workers serving and the old ones gone",
    )


def _requests_across(server: Server, reloads: int) -> Counter[str]:
    """New connections (one request each) from 8 threads while the master reloads its workers
    `reloads` times, each time once the new workers are up: how each request ended."""
    ended: Counter[str] = Counter()
    counting = threading.Lock()
    done = threading.Event()

    def count(how: str) -> None:
        with counting:
            ended[how] += 1

    def call() -> None:
        while not done.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                connection.request("GET", "/healthz", headers={"Connection": "close"})
                response = connection.getresponse()
                response.read()
                count(str(response.status))
            except OSError as exc:
                count(type(exc).__name__)
            finally:
                connection.close()

    callers = [threading.Thread(target=call) for _ in range(8)]
    for caller in callers:
        caller.start()
    try:
        for _ in range(reloads):
            _reload(server, ended)
            count("reloads")
    finally:
        done.set()
        for caller in callers:
            caller.join()
    return ended


def test_reloading_the_workers_under_load_drops_no_connection() -> None:
    with gunicorn({}, workers=2) as server:  # auto, as deployed on this host
        own_sockets = _listening_in_master(server) == 0
        migrates = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
        assert own_sockets == migrates  # a socket each only where the kernel hands on
        ended = _requests_across(server, reloads=3)
    assert ended["reloads"] == 3
    assert set(ended) == {"200", "reloads"}, ended


def test_a_binary_upgrade_is_refused_with_a_socket_per_worker_and_the_old_master_serves_on() -> (
    None
):
    with gunicorn(OWN_SOCKETS, workers=2) as server:
        _listening_in_workers(server)
        os.kill(server.pid, signal.SIGUSR2)
        wait_for(
            lambda: "A binary upgrade (USR2) is not supported" in server.log_tail(),
            what="the new master's refusal",
        )
        wait_for(lambda: len(server.worker_pids()) == 2, what="the new master gone")
        assert requests.get(f"{server}/healthz", timeout=10).status_code == 200
        assert _listening_in_workers(server) == [1, 1]
