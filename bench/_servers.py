"""Real redis-server and PostgreSQL servers on free loopback ports, for the store tests
(tests/fixtures/servers.py) and the store benchmark. No pytest here.

Each is a context manager that yields a store URL once the server answers and stops the
server (and removes its files) on the way out, also when the body raised.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class ServerMissing(RuntimeError):
    """The server's binaries are not installed on this machine (.ci/run installs them)."""


class ServerFailed(RuntimeError):
    """The server was found but did not start; the message carries its output."""


def free_port() -> int:
    """A loopback port that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


def _wait_until_up(proc: subprocess.Popen[bytes], port: int, what: str, log: str,
                   ping: bytes | None = None, pong: bytes = b"") -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                if ping is None:
                    return
                c.sendall(ping)
                if c.recv(64).startswith(pong):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            output = open(log, errors="replace").read()[-2000:] if os.path.exists(log) else ""
            raise ServerFailed(f"{what} did not start on 127.0.0.1:{port} "
                               f"(exit {proc.poll()}): {output}")
        time.sleep(0.02)  # polling a condition with a deadline


@contextmanager
def redis_server() -> Iterator[str]:
    """A fresh redis-server without persistence; yields `redis://127.0.0.1:PORT/0`."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerMissing("redis-server is not installed (.ci/run installs it with apt-get)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="stoic-redis-") as tmp:
        log = os.path.join(tmp, "redis.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp, "--unixsocket", ""],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            _wait_until_up(proc, port, "redis-server", log, b"PING\r\n", b"+PONG")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(proc, signal.SIGTERM)


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _postgres_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as (None: ourselves). initdb refuses root, so as root
    we use `postgres`, creating that system user if it is missing."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false",
                        "postgres"], check=True, capture_output=True, timeout=30)
        return pwd.getpwnam("postgres")


@contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only (its
    Unix socket in that folder); yields `postgresql://postgres@127.0.0.1:PORT/postgres`.
    `fsync=False` (the default, for tests) trades crash safety for speed."""
    initdb, postgres = _pg_binary("initdb"), _pg_binary("postgres")
    if initdb is None or postgres is None:
        raise ServerMissing("PostgreSQL (initdb, postgres) is not installed (.ci/run installs it)")
    user = _postgres_user()
    uid = None if user is None else user.pw_uid
    gid = None if user is None else user.pw_gid
    env = dict(os.environ, LC_ALL="C", LANG="C")
    if user is not None:
        env.update(HOME=tempfile.gettempdir(), USER="postgres", LOGNAME="postgres")
    tmp = tempfile.mkdtemp(prefix="stoic-pg-")
    try:
        if user is not None:
            os.chown(tmp, user.pw_uid, user.pw_gid)
        data, log = os.path.join(tmp, "data"), os.path.join(tmp, "postgres.log")
        init = subprocess.run(
            [initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            capture_output=True, timeout=120, cwd=tmp, env=env, user=uid, group=gid,
            extra_groups=None if user is None else [])
        if init.returncode != 0:
            raise ServerFailed(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        port = free_port()
        with open(log, "wb") as out:
            if user is not None:
                os.chown(log, user.pw_uid, user.pw_gid)
            proc = subprocess.Popen(
                [postgres, "-D", data, "-p", str(port), "-k", tmp,
                 "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if fsync else 'off'}",
                 "-c", "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env, user=uid, group=gid,
                extra_groups=None if user is None else [])
        try:
            _wait_until_up(proc, port, "postgres", log)
            _wait_accepting(port, proc, log)
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _stop(proc, signal.SIGINT)  # "fast" shutdown: disconnect clients, then exit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_accepting(port: int, proc: subprocess.Popen[bytes], log: str) -> None:
    """The port opens before recovery ends; wait until the log says it accepts."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(log, errors="replace") as f:
            if "ready to accept connections" in f.read():
                return
        if proc.poll() is not None:
            break
        time.sleep(0.02)  # polling a condition with a deadline
    raise ServerFailed(f"postgres on port {port} never became ready: "
                       f"{open(log, errors='replace').read()[-2000:]}")
