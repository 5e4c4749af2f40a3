"""A real DNS server for tests: dnsmasq on 127.0.0.1 at a free high port.

A records live in files under a ``--hostsdir`` (dnsmasq re-reads them by itself via
inotify, so they can change mid-test). SRV records come from a conf file, which
dnsmasq never re-reads: :meth:`DnsmasqServer.set_srv` restarts it on the same port.
Names under ``.test`` are local-only, so an unknown one is NXDOMAIN; any other name
is REFUSED (no upstream servers), which the resolver must treat as an error. With
``local=False`` even a ``.test`` name's missing record type (AAAA) is REFUSED.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
DOMAIN = "test"


class DnsmasqServer:
    """One dnsmasq process; a context manager that always kills it."""

    def __init__(self, workdir: Path, ttl: int = 1, *, local: bool = True) -> None:
        self.workdir = workdir
        self.ttl = ttl
        #: False: no ``--local=/test/`` line, so dnsmasq answers only the record types it
        #: has and REFUSES the rest (an A-only name's AAAA query), as some resolvers do.
        self.local = local
        self.hostsdir = workdir / "hosts"
        self.hostsdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "dnsmasq.conf"
        self.conf.write_text("")
        self.log = workdir / "dnsmasq.log"
        self.port = _free_udp_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def target(self, name: str, port: int) -> str:
        return f"dns://{self.server}/{name}:{port}"

    def srv_target(self, name: str) -> str:
        return f"dns+srv://{self.server}/{name}"

    # -- records ---------------------------------------------------------------------
    def set_a(self, name: str, ips: Sequence[str]) -> None:
        """Replace ``name``'s A/AAAA records (an empty list removes the name: NXDOMAIN)."""
        path = self.hostsdir / name
        if not ips:
            path.unlink(missing_ok=True)
            return
        tmp = self.workdir / f".{name}.tmp"
        tmp.write_text("".join(f"{ip} {name}\n" for ip in ips))
        os.replace(tmp, path)  # atomic: dnsmasq never reads a half-written file

    def set_srv(self, name: str, records: Sequence[tuple[str, int, int, int]]) -> None:
        """``records``: (target, port, priority, weight). Restarts dnsmasq to apply."""
        lines = [
            f"srv-host={name},{t},{port},{prio},{weight}\n" for t, port, prio, weight in records
        ]
        self.conf.write_text("".join(lines))
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
            self.start()

    # -- process -----------------------------------------------------------------------
    def start(self) -> DnsmasqServer:
        cmd = [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--hostsdir={self.hostsdir}",
            f"--local-ttl={self.ttl}",
            *([f"--local=/{DOMAIN}/"] if self.local else []),
            f"--conf-file={self.conf}",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",
            "--pid-file=",
            "--log-queries",
            f"--log-facility={self.log}",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_answering()
        return self

    def _wait_answering(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        query = dns.message.make_query(f"ready.{DOMAIN}", "A")
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}: {err}")
            try:
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (OSError, dns.exception.Timeout):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dnsmasq not answering on {self.server}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server just vanishes (queries time out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> DnsmasqServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.stop()


def _free_udp_tcp_port() -> int:
    """A high port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        if port > 1024:
            return port
    raise RuntimeError("no free port for dnsmasq")


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[DnsmasqServer]:
    """A running dnsmasq (TTL 1 s) with no records yet."""
    if not Path(DNSMASQ).exists():
        pytest.fail("dnsmasq is not installed: run `make system-deps`")
    with DnsmasqServer(tmp_path / "dnsmasq") as server:
        yield server
