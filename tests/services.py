"""Real services for tests: a throwaway PostgreSQL cluster on loopback.

``start_postgres(directory)`` finds the server binaries of the distribution's PostgreSQL package
(``initdb`` / ``pg_ctl`` on PATH or under ``/usr/lib/postgresql/<version>/bin``), creates a cluster in
``directory`` with trust authentication on 127.0.0.1 only, starts it on a free port and returns its
SQLAlchemy URL and a stop function. The server refuses to run as root, so when the tests run as root
(CI does) the cluster belongs to an unprivileged system user (``postgres`` if the package created it,
else ``nobody``) and the commands run through ``runuser``.

Where no server can be started the caller skips with the printed reason, unless
``FITPLAN_REQUIRE_POSTGRES=1`` (set by ``.ci/run``): then it is a failure, because CI must run the
distributed tests for real.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

REQUIRE_ENV = "FITPLAN_REQUIRE_POSTGRES"


class ServiceUnavailable(RuntimeError):
    """The service cannot be started on this machine (the message says why)."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise ServiceUnavailable(f"PostgreSQL server binary {name!r} not found (install the distribution's "
                             "'postgresql' package)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> tuple[list[str], str | None]:
    """Command prefix and user name to run the server as (the server refuses root)."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServiceUnavailable("running as root and 'runuser' is missing: cannot start PostgreSQL as an "
                                     "unprivileged user")
        return [runuser, "-u", user, "--"], user
    raise ServiceUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists")


def start_postgres(directory: Path) -> tuple[str, Callable[[], None]]:
    """Start a throwaway cluster in ``directory``; return (SQLAlchemy URL, stop)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    prefix, user = _run_as()
    directory = Path(directory)
    data, sockets = directory / "data", directory / "sock"
    directory.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (directory, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # every parent must be traversable by that user (pytest's tmp dirs are 0700)
        for parent in list(directory.parents)[:-1]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    role = user or pwd.getpwuid(os.geteuid()).pw_name
    for attempt in range(2):  # initdb was once seen to abort on a heavily loaded machine: one retry
        init = subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", role, "--no-sync"],
                              capture_output=True, text=True)
        if init.returncode == 0:
            break
        data = directory / f"data{attempt + 1}"
    else:
        raise ServiceUnavailable(f"initdb failed: {(init.stderr + init.stdout).strip()[-600:]}")
    port = _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=50"
    start = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "server.log"),
                            "-w", "-t", "60", "start"], capture_output=True, text=True)
    if start.returncode != 0:
        log = (directory / "server.log").read_text() if (directory / "server.log").exists() else ""
        raise ServiceUnavailable(f"pg_ctl start failed: {(start.stderr + log).strip()[-300:]}")

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)

    createdb = subprocess.run([*prefix, _binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", role,
                               "fitplan"], capture_output=True, text=True)
    if createdb.returncode != 0:
        stop()
        raise ServiceUnavailable(f"createdb failed: {createdb.stderr.strip()[-300:]}")
    return f"postgresql://{role}@127.0.0.1:{port}/fitplan", stop


def postgres_or_skip():
    """``start_postgres`` for a pytest fixture: skip with the reason where no server can start, fail instead
    under ``FITPLAN_REQUIRE_POSTGRES=1``. Yields the URL; stops the server and removes its files after.

    The cluster lives in its own ``tempfile.mkdtemp`` directory, not under pytest's ``tmp_path`` root:
    pytest prunes older ``pytest-N`` roots, so another pytest session on the same machine could delete a
    running cluster's files."""
    import tempfile

    import pytest

    directory = Path(tempfile.mkdtemp(prefix="fitplan-postgres-"))
    try:
        url, stop = start_postgres(directory)
    except ServiceUnavailable as error:
        shutil.rmtree(directory, ignore_errors=True)
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required here ({REQUIRE_ENV}=1) but could not start: {error}")
        pytest.skip(f"no PostgreSQL server can be started on this machine: {error}")
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(directory, ignore_errors=True)
