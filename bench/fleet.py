"""Fleet scale: one channel over N loopback endpoints, ours beside grpcio's own channel.

One greeter server process listens on ``0.0.0.0:P``; the N endpoints are distinct
loopback addresses ``127.1.x.y:P`` (all of 127/8 is loopback on Linux), so each is its
own connection. Every client runs in a fresh child process (RSS is its own), and the
two kinds alternate A B B A ... over the rounds. The parent measures what both kinds
share from outside (ESTABLISHED connections to P, via ``ss``; the child's RSS); each
child reports its own timestamps (CLOCK_MONOTONIC is system-wide).

Parts:

* ``connect``: time to the first successful call, to N established connections (and,
  for ours, N READY subchannels), the longest event-loop stall, RSS per endpoint;
* ``update`` (ours only: grpcio's ``ipv4:`` target cannot change): remove, then add
  10 % of the endpoints of a READY channel; the time until the policy applied the
  list and the published picker no longer holds a removed endpoint / until every
  added one is dialing (the handshakes reported separately, until all are READY);
* ``subset`` (ours only): ``random_subsetting`` / ``deterministic_aperture`` with
  subset 20 of N: time to the first call, connections opened.

``python -m bench.fleet --sizes 10000 --rounds 2`` writes bench/results/fleet.json
and fleet.png. The hard limit on open files is 20,000 here; a client needs one per
endpoint, so the bench caps N at what fits and says so in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import grpc
import grpc.aio

from bench.fleet_plot import plot
from grpc_balancer.endpoint import Endpoint

RESULTS = Path(__file__).resolve().parent / "results"
#: Files a client needs beyond its connections (loop, grpc's pollers, imports...).
SPARE_FDS = 400
SUBSET = 20


def raise_nofile() -> int:
    """The soft limit on open files raised to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def address(i: int, port: int) -> str:
    """The i-th distinct loopback address (127.1.0.1, 127.1.0.2, ...)."""
    return f"127.{1 + i // 62_500}.{i // 250 % 250}.{i % 250 + 1}:{port}"


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def established(port: int) -> int:
    """Client-side ESTABLISHED TCP connections to ``port`` on this machine."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.count("\n")


# -- the server child ------------------------------------------------------------------------
async def serve() -> None:
    from grpc_balancer.demo.server import GreeterServer

    raise_nofile()
    server = GreeterServer(0, "0.0.0.0", grace_s=0.1)
    await server.start()
    emit(event="serving", port=server.port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    await server.stop(0)


# -- the client child --------------------------------------------------------------------------
class StallProbe:
    """The longest time the event loop was late for a 5 ms timer (a stalled loop
    delays every call's callbacks by as much)."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst_s = max(self.worst_s, loop.time() - before - 0.005)

    def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
        return self.worst_s


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _first_call(channel: Any) -> float:
    from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

    stub = greeter_pb2_grpc.GreeterStub(channel)
    await stub.SayHello(greeter_pb2.HelloRequest(name="fleet"), timeout=120, wait_for_ready=True)
    return time.monotonic()


async def _until(predicate: Any, timeout_s: float, step_s: float = 0.002) -> float | None:
    """The monotonic time ``predicate()`` first held (polled), None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(step_s)
    return None


def _ready(channel: Any) -> int:
    ready = grpc.ChannelConnectivity.READY
    return sum(sc.connectivity is ready for sc in channel._subchannels)


def _picker_members(channel: Any) -> set[Any]:
    """The subchannels the current picker chooses among (round_robin's picker)."""
    picker = channel.picking.generation.picker
    return set(getattr(picker, "_subchannels", ()))


async def client(args: argparse.Namespace) -> None:
    raise_nofile()
    import grpc_balancer.aio
    from grpc_balancer.testing import manual_resolver

    addresses = [address(i, args.port) for i in range(args.n)]
    profile = cProfile.Profile() if args.profile else None
    probe = StallProbe()
    probe.start()
    await asyncio.sleep(0.05)
    emit(event="start", rss_kib=rss_kib(), t=time.monotonic())
    if profile is not None:
        profile.enable()
    t0 = time.monotonic()
    if args.kind == "grpcio":
        config = {"loadBalancingConfig": [{"round_robin": {}}]}
        channel: Any = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses),
            options=[
                ("grpc.service_config", json.dumps(config)),
                ("grpc.default_authority", "fleet"),
            ],
        )
    else:
        resolver = manual_resolver(addresses)
        channel = grpc_balancer.aio.insecure_channel(
            resolver.target, service_config=json.loads(args.config)
        )
    t_built = time.monotonic()
    t_first = await _first_call(channel)
    emit(event="first_call", t0=t0, built_s=t_built - t0, first_call_s=t_first - t0)
    result: dict[str, Any] = {}
    if args.kind == "ours":
        want = min(args.subset or args.n, args.n)
        # The channel's own set (``channel.subchannels`` sorts it: too dear to poll).
        t_ready = await _until(lambda: _ready(channel) >= want, 120, 0.1)
        result["ready_s"] = None if t_ready is None else t_ready - t0
        result["subchannels"] = len(channel._subchannels)
        result["grpc_channels"] = sum(
            1 for sc in channel._subchannels if getattr(sc, "has_transport", True)
        )
        policy = channel._policy
        stats = getattr(getattr(policy, "child", policy), "rebuilds", None)
        if stats is not None:
            result["rebuilds"] = {
                "count": stats.count,
                "total_ms": stats.total_s * 1e3,
                "max_ms": stats.max_s * 1e3,
            }
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    result["stall_connect_s"] = probe.stop()
    emit(event="connected", **result)
    sys.stdin.readline()  # the parent has read our RSS and connection count
    if args.kind == "ours" and args.update:
        plain = await _update(channel, resolver, addresses, args)
        # The same after gc.freeze() (an application's choice, process-wide): the
        # collector stops walking the long-lived objects of 10,000 endpoints.
        gc.collect()
        gc.freeze()
        frozen = await _update(channel, resolver, addresses, args)
        emit(event="update", plain=plain, gc_frozen=frozen)
    await channel.close()
    emit(event="done")


async def _update(channel: Any, resolver: Any, addresses: list[str], args: Any) -> dict[str, Any]:
    """Remove, then add back, 10 % of the endpoints of a READY channel."""
    tenth = len(addresses) // 10
    # The resolver's own work (parsing its answer into Endpoints) is done before the
    # clock starts: what is measured is the channel taking the list in.
    every = [Endpoint(a) for a in addresses]
    keep, moved = every[:-tenth], set(addresses[-tenth:])
    probe = StallProbe()
    probe.start()
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    resolver.update(keep)
    t_applied = time.monotonic()
    t_in_use = await _until(
        lambda: not any(sc.address in moved for sc in _picker_members(channel)), 10
    )
    remove = {
        "applied_ms": (t_applied - t0) * 1e3,
        "in_use_ms": None if t_in_use is None else (t_in_use - t0) * 1e3,
        "stall_ms": probe.stop() * 1e3,
    }
    await asyncio.sleep(0.5)
    probe = StallProbe()
    probe.start()
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    resolver.update(every)
    t_applied = time.monotonic()

    def added() -> list[Any]:
        return [sc for sc in channel._subchannels if sc.address in moved]

    t_dialing = await _until(lambda: all(sc.wants_connection for sc in added()), 10)
    t_ready = await _until(lambda: len(_picker_members(channel)) == len(addresses), 60, 0.005)
    add = {
        "applied_ms": (t_applied - t0) * 1e3,
        "dialing_ms": None if t_dialing is None else (t_dialing - t0) * 1e3,
        "all_ready_in_picker_ms": None if t_ready is None else (t_ready - t0) * 1e3,
        "stall_ms": probe.stop() * 1e3,
    }
    return {"remove": remove, "add": add}


# -- the parent ------------------------------------------------------------------------------------
class Child:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"child exited before {event!r} (rc={self.proc.wait()})")
            message = json.loads(line)
            if message.get("event") == event:
                return dict(message)

    def send(self, text: str = "go\n") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_client(
    kind: str,
    n: int,
    port: int,
    *,
    config: dict[str, Any] | None = None,
    subset: int = 0,
    update: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    argv = ["client", kind, str(n), str(port)]
    if config is not None:
        argv += ["--config", json.dumps(config)]
    if subset:
        argv += ["--subset", str(subset)]
    if update:
        argv.append("--update")
    if profile:
        argv += ["--profile", profile]
    child = Child(argv)
    try:
        start = child.read("start")
        first = child.read("first_call")
        want = min(subset or n, n)
        # Outside the child: when all its connections are up (same test for both kinds).
        t_all: float | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if established(port) >= want:
                t_all = time.monotonic()
                break
            time.sleep(0.02)
        connected = child.read("connected")
        time.sleep(1.0)
        rss = rss_kib(child.proc.pid)
        conns = established(port)
        child.send()
        row: dict[str, Any] = {
            "kind": kind,
            "n": n,
            "built_s": first["built_s"],
            "first_call_s": first["first_call_s"],
            "all_established_s": None if t_all is None else t_all - first["t0"],
            "connections": conns,
            "rss_per_endpoint_kib": (rss - start["rss_kib"]) / n,
            "rss_kib": rss,
            **{k: v for k, v in connected.items() if k != "event"},
        }
        if update:
            row["update"] = {k: v for k, v in child.read("update").items() if k != "event"}
        child.read("done")
        return row
    finally:
        child.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("serve")
    c = sub.add_parser("client")
    c.add_argument("kind", choices=["ours", "grpcio"])
    c.add_argument("n", type=int)
    c.add_argument("port", type=int)
    c.add_argument("--config", default=json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))
    c.add_argument("--subset", type=int, default=0)
    c.add_argument("--update", action="store_true")
    c.add_argument("--profile")
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parts", default="connect,update,subset")
    parser.add_argument("--profile", help="profile our client's connect storm to this file")
    parser.add_argument("--out", default=str(RESULTS / "fleet.json"))
    args = parser.parse_args()
    if args.cmd == "serve":
        asyncio.run(serve())
    elif args.cmd == "client":
        asyncio.run(client(args))
    else:
        bench(args)


def bench(args: argparse.Namespace) -> None:
    hard = raise_nofile()
    limit = hard - SPARE_FDS
    sizes = [min(int(s), limit) for s in args.sizes.split(",")]
    parts = set(args.parts.split(","))
    server = Child(["serve"])
    port = int(server.read("serving")["port"])
    out: dict[str, Any] = {
        "command": "python -m bench.fleet " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nofile_hard_limit": hard,
        "rounds": args.rounds,
        "subset_size": SUBSET,
        "sizes": sizes,
        "connect": [],
        "update": [],
        "subset": [],
    }
    try:
        for n in sizes:
            if "connect" in parts:
                for r in range(args.rounds):
                    order = ["ours", "grpcio"] if r % 2 == 0 else ["grpcio", "ours"]
                    for kind in order:
                        row = run_client(
                            kind,
                            n,
                            port,
                            update=kind == "ours" and "update" in parts,
                            profile=args.profile if kind == "ours" else None,
                        )
                        row["round"] = r
                        print(json.dumps(row), flush=True)
                        out["connect"].append(row)
            if "subset" in parts:
                for r in range(args.rounds):
                    for policy, extra in (
                        ("random_subsetting", {}),
                        # N / 20 clients: 20 servers each (fewer clients would each
                        # need more, so that every server is covered).
                        (
                            "deterministic_aperture",
                            {"clientIndex": r, "clientCount": n // SUBSET},
                        ),
                    ):
                        config = {
                            "loadBalancingConfig": [
                                {
                                    policy: {
                                        "subsetSize": SUBSET,
                                        "childPolicy": [{"least_request": {}}],
                                        **extra,
                                    }
                                }
                            ]
                        }
                        row = run_client("ours", n, port, config=config, subset=SUBSET)
                        row["policy"] = policy
                        row["round"] = r
                        print(json.dumps(row), flush=True)
                        out["subset"].append(row)
    finally:
        server.close()
    out["summary"] = summarize(out)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if Path(args.out).resolve() == (RESULTS / "fleet.json").resolve():
        plot(out)
    print(json.dumps(out["summary"], indent=2))


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for n in out["sizes"]:
        rows = [r for r in out["connect"] if r["n"] == n]
        if not rows:
            continue
        per: dict[str, Any] = {}
        for key in ("first_call_s", "all_established_s", "rss_per_endpoint_kib"):
            ours = [r[key] for r in rows if r["kind"] == "ours" and r[key] is not None]
            theirs = [r[key] for r in rows if r["kind"] == "grpcio" and r[key] is not None]
            if ours and theirs:
                ratios = [a / b for a, b in zip(ours, theirs, strict=False)]
                per[key] = {
                    "ours_median": median(ours),
                    "grpcio_median": median(theirs),
                    "ratio_median": median(ratios),
                    "ratio_range": [min(ratios), max(ratios)],
                }
        summary[str(n)] = per
    return summary


if __name__ == "__main__":
    main()
