"""A real etcd for tests: Debian's ``/usr/bin/etcd`` on free loopback ports.

One node (``etcd_node``) for most tests and a 3-node cluster (``etcd_cluster3``) for
the fault tests. Heartbeat 50 ms and election timeout 500 ms make leader elections
and lease expiry fast. Data lives on tmpfs when there is one (fsync is then cheap);
teardown is SIGKILL. Members can be killed and restarted on the same ports and data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from grpc_balancer.testing import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
_SHM = Path("/dev/shm")


class TlsFiles:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert, made by openssl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca, self.ca_key = directory / "ca.pem", directory / "ca.key"
        self.server, self.server_key = directory / "server.pem", directory / "server.key"
        self.client, self.client_key = directory / "client.pem", directory / "client.key"
        directory.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-keyout", self.ca_key, "-out", self.ca, "-subj", "/CN=test-ca")  # fmt: skip
        self._issue("server", self.server, self.server_key, "IP:127.0.0.1,DNS:localhost")
        self._issue("client", self.client, self.client_key, "DNS:client")

    def _issue(self, cn: str, cert: Path, key: Path, san: str) -> None:
        csr = self.dir / f"{cn}.csr"
        ext = self.dir / f"{cn}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                 "-subj", f"/CN={cn}")  # fmt: skip
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-days", "1", "-out", cert, "-extfile", ext)  # fmt: skip


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


class EtcdMember:
    """One etcd process of a cluster."""

    def __init__(self, name: str, data_dir: Path, tls: TlsFiles | None = None) -> None:
        self.name = name
        self.data_dir = data_dir
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{name}.log"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, initial_cluster: str, state: str) -> None:
        cmd = [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-state={state}",
            "--initial-cluster-token=grpc-balancer-test",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        if self.tls is not None:
            cmd += [
                f"--cert-file={self.tls.server}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def healthy(self) -> bool:
        """etcd's own /health: true only with a leader and a working raft."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client), str(self.tls.client_key))
        try:
            url = f"{self.client_url}/health"
            with urllib.request.urlopen(url, timeout=0.5, context=context) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False


class EtcdCluster:
    """``n`` members on 127.0.0.1; a context manager that always SIGKILLs them."""

    def __init__(self, n: int = 1, *, tls: bool = False) -> None:
        base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
        self._tmp = Path(tempfile.mkdtemp(prefix="grpc-balancer-etcd-", dir=base))
        self.tls = TlsFiles(self._tmp / "tls") if tls else None
        self.members = [EtcdMember(f"m{i}", self._tmp / f"m{i}.etcd", self.tls) for i in range(n)]
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self._started = False

    # -- addressing ---------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def target(self, prefix: str = "services/greeter", query: str = "") -> str:
        q = f"?{query}" if query else ""
        return f"etcd://{','.join(self.endpoints)}/{prefix}{q}"

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> EtcdCluster:
        state = "existing" if self._started else "new"
        for member in self.members:
            if not member.running:
                member.start(self._initial, state)
        self._started = True
        self.wait_healthy(timeout)
        return self

    def start_member(self, index: int) -> None:
        member = self.members[index]
        if not member.running:
            member.start(self._initial, "existing")

    def wait_healthy(self, timeout: float = 30.0, members: Sequence[int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        which = [self.members[i] for i in members] if members is not None else self.members
        while True:
            dead = [m.name for m in which if m.proc is not None and m.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd {dead} exited: {self.log_tail()}")
            if all(m.healthy() for m in which if m.running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def kill_all(self) -> None:
        for member in self.members:
            member.kill()

    def close(self) -> None:
        self.kill_all()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inspection ---------------------------------------------------------------------
    def leader_index(self) -> int:
        """The index of the current leader (asked of the running members)."""
        live = [m.endpoint for m in self.members if m.running]
        out = self.etcdctl("endpoint", "status", "-w", "json", endpoints=live)
        statuses = json.loads(out)
        leader = statuses[0]["Status"]["leader"]
        for status in statuses:
            if status["Status"]["header"]["member_id"] == leader:
                return self.endpoints.index(status["Endpoint"].split("://")[-1])
        raise RuntimeError(f"no member reports being the leader: {statuses}")

    def etcdctl(
        self, *args: str, endpoints: Sequence[str] | None = None, check: bool = True
    ) -> str:
        """Run ``etcdctl`` (API v3) against the running members; stdout."""
        eps = endpoints or [m.endpoint for m in self.members if m.running]
        env = {**os.environ, "ETCDCTL_API": "3"}
        tls = []
        if self.tls is not None:
            tls = [f"--cacert={self.tls.ca}", f"--cert={self.tls.client}"]
            tls.append(f"--key={self.tls.client_key}")
        proc = subprocess.run(
            [ETCDCTL, f"--endpoints={','.join(eps)}", "--command-timeout=5s", *tls, *args],
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {proc.stderr.decode().strip()}")
        return proc.stdout.decode()

    def revision(self) -> int:
        out = self.etcdctl("get", "--prefix", "", "--limit=1", "-w", "json")
        return int(json.loads(out)["header"]["revision"])

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for member in self.members:
            if member.log_path.exists():
                text = member.log_path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {member.name} ---\n" + "\n".join(text))
        return "\n".join(tails)


def _require_etcd() -> None:
    if not Path(ETCD).exists() or not Path(ETCDCTL).exists():
        pytest.fail("etcd is not installed: run `make system-deps`")


@pytest.fixture
def etcd_node() -> Iterator[EtcdCluster]:
    """A single running etcd node."""
    _require_etcd()
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A running 3-member etcd cluster on loopback."""
    _require_etcd()
    with EtcdCluster(3) as cluster:
        yield cluster
