"""What one endpoint costs, layer by layer: why a channel over N endpoints holds more
memory per endpoint than grpcio's single channel, and where its connect storm's time
goes.

Each kind holds N loopback endpoints (as ``bench.fleet``: distinct ``127.1.x.y``
addresses, one server process) in a fresh child process, all started at once:

* ``grpcio``: grpcio's own channel, one ``ipv4:`` list, round_robin (a subchannel per
  endpoint inside one C channel);
* ``core channels``: one C channel per endpoint (``cygrpc.AioChannel``, what every
  grpc channel is underneath), nothing in Python;
* ``grpc.aio channels``: one ``grpc.aio`` channel per endpoint (the Python object
  around it);
* ``+ a watcher task each``: and the least a balancer in Python must do to know when
  an endpoint is usable, the usual way: a task per endpoint awaiting
  ``wait_for_state_change`` until READY;
* ``+ a callback watch each``: the same watch without a task, grpcio's watch coroutine
  stepped from its future's done-callback (what ours does);
* ``ours``: grpc_balancer's channel, round_robin, no call waiting (so the dialer's
  window does not hold: see ``grpc_balancer._core.dialing``);
* ``ours, window held throughout``: the same as if a call waited for the whole storm
  (what holding connection starts back costs the last connection; ``bench.fleet``
  shows what it gains the first call).

The parent measures every kind the same way from outside: the time until all N
connections are ESTABLISHED (``ss``), the child's CPU time until then, and its RSS
per endpoint a second later. Kinds are interleaved within each round, in an order that
rotates from round to round.

``python -m bench.fleet_cost --n 10000 --rounds 3`` -> bench/results/fleet_cost.json
and fleet_cost.png (``python -m bench.fleet_cost --plot`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.fleet import SPARE_FDS, Child, address, established, raise_nofile, rss_kib

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = (
    "grpcio",
    "core channels",
    "grpc.aio channels",
    "+ a watcher task each",
    "+ a callback watch each",
    "ours",
    "ours, window held throughout",
)
_CHANNEL_OPTIONS = (
    # what ours gives each endpoint channel (_aio/channel.py DEFAULT_CHANNEL_OPTIONS)
    ("grpc.initial_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    ("grpc.enable_channelz", 0),
    ("grpc.use_local_subchannel_pool", 1),
)


# -- the child -------------------------------------------------------------------------------------
class _CallbackWatch:
    """Until READY, grpcio's Cython watch coroutine stepped from its future's
    done-callback, with no task (the way ``grpc_balancer._aio.subchannel`` watches)."""

    __slots__ = ("_core", "_coro")

    def __init__(self, core: Any) -> None:
        self._core = core
        self._coro: Any = None
        self._step(None)

    def _step(self, _: Any) -> None:
        import grpc

        ready = grpc.ChannelConnectivity.READY.value[0]
        while True:
            if self._coro is None:
                state = self._core.check_connectivity_state(True)
                if state == ready:
                    return
                self._coro = self._core.watch_connectivity_state(state, None)
            try:
                future = self._coro.send(None)
            except StopIteration:
                self._coro = None
                continue
            future.add_done_callback(self._step)
            return


async def hold(kind: str, n: int, port: int) -> None:
    """Open N endpoints the way ``kind`` does, then keep them until killed."""
    import grpc
    import grpc.aio
    from grpc._cython import cygrpc  # type: ignore[attr-defined]

    import grpc_balancer.aio
    from grpc_balancer.testing import manual_resolver

    raise_nofile()
    addresses = [address(i, port) for i in range(n)]
    print(json.dumps({"event": "start"}), flush=True)
    sys.stdin.readline()  # the parent has read our baseline RSS and CPU
    kept: list[Any] = []
    if kind == "grpcio":
        config = {"loadBalancingConfig": [{"round_robin": {}}]}
        channel = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses),
            options=[
                ("grpc.service_config", json.dumps(config)),
                ("grpc.default_authority", "fleet"),
            ],
        )
        channel.get_state(try_to_connect=True)
        kept.append(channel)
    elif kind == "core channels":
        loop = cygrpc.get_working_loop()
        for a in addresses:
            core = cygrpc.AioChannel(f"ipv4:{a}".encode(), _CHANNEL_OPTIONS, None, loop)
            core.check_connectivity_state(True)
            kept.append(core)
    elif kind in ("grpc.aio channels", "+ a watcher task each", "+ a callback watch each"):
        ready = grpc.ChannelConnectivity.READY

        async def watch(channel: grpc.aio.Channel) -> None:
            state = channel.get_state(try_to_connect=True)
            while state is not ready:
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        for a in addresses:
            channel = grpc.aio.insecure_channel(f"ipv4:{a}", options=_CHANNEL_OPTIONS)
            if kind == "+ a watcher task each":
                kept.append(asyncio.ensure_future(watch(channel)))
            elif kind == "+ a callback watch each":
                kept.append(_CallbackWatch(channel._channel))  # type: ignore[attr-defined]
            else:
                channel.get_state(try_to_connect=True)
            kept.append(channel)
    elif kind in ("ours", "ours, window held throughout"):
        if kind != "ours":
            from grpc_balancer._aio.channel import BalancedChannel

            BalancedChannel._calls_waiting = lambda self: True  # type: ignore[method-assign]
        resolver = manual_resolver(addresses)
        ours = grpc_balancer.aio.insecure_channel(resolver.target, policy="round_robin")
        ours.get_state(try_to_connect=True)
        kept.append(ours)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    await asyncio.sleep(3600)


# -- the parent ------------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """User + system CPU time of ``pid`` and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(kind: str, n: int, port: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet_cost", "child", kind, str(n), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if json.loads(proc.stdout.readline()).get("event") != "start":
            raise RuntimeError(f"{kind}: child did not start")
        time.sleep(0.5)
        base_rss, base_cpu = rss_kib(proc.pid), cpu_s(proc.pid)
        t0 = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        t_all = None
        while time.monotonic() - t0 < 120:
            if established(port) >= n:
                t_all = time.monotonic() - t0
                break
            time.sleep(0.02)
        cpu = cpu_s(proc.pid) - base_cpu
        time.sleep(1.0)
        return {
            "kind": kind,
            "n": n,
            "all_established_s": t_all,
            "cpu_s": cpu,
            "rss_per_endpoint_kib": (rss_kib(proc.pid) - base_rss) / n,
        }
    finally:
        proc.kill()
        proc.wait()
        # until the server has seen every connection go (the next kind starts clean)
        deadline = time.monotonic() + 60
        while established(port) and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_cost")
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child")
    child.add_argument("kind")
    child.add_argument("n", type=int)
    child.add_argument("port", type=int)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "fleet_cost.json"))
    parser.add_argument("--plot", action="store_true", help="redraw the PNG from --out")
    args = parser.parse_args()
    if args.plot:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    if args.cmd == "child":
        asyncio.run(hold(args.kind, args.n, args.port))
        return
    n = min(args.n, raise_nofile() - SPARE_FDS)
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]
        for kind in order:
            # a fresh server per run: one that served earlier storms is slower
            server = Child(["serve"])
            try:
                port = int(server.read("serving")["port"])
                row = run(kind, n, port)
            finally:
                server.close()
            row["round"] = r
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {
        "command": "python -m bench.fleet_cost " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n": n,
        "rounds": args.rounds,
        "rows": rows,
        "summary": summarize(rows),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    plot(out, Path(args.out).with_suffix(".png"))
    print(json.dumps(out["summary"], indent=2))


def plot(out: dict[str, Any], path: Path) -> None:
    """Three panels (all connected, CPU, RSS per endpoint): a bar per kind, the median,
    whiskers over the rounds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("all_established_s", "all connected (s)"),
        ("cpu_s", "CPU until then (s)"),
        ("rss_per_endpoint_kib", "RSS per endpoint (KiB)"),
    )
    kinds = list(out["summary"])
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        mids = [out["summary"][k][key]["median"] for k in kinds]
        lows = [m - out["summary"][k][key]["range"][0] for k, m in zip(kinds, mids, strict=True)]
        highs = [out["summary"][k][key]["range"][1] - m for k, m in zip(kinds, mids, strict=True)]
        colors = ["tab:orange" if k == "grpcio" else "tab:blue" for k in kinds]
        ax.bar(range(len(kinds)), mids, yerr=[lows, highs], capsize=3, color=colors)
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"What one endpoint costs, {out['n']:,} endpoints ({out['when']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: median and range of each figure, and its ratio to grpcio's per round."""
    summary: dict[str, Any] = {}
    by_round = {
        (row["round"], row["kind"]): row for row in rows if row["all_established_s"] is not None
    }
    for kind in KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        entry: dict[str, Any] = {}
        for key in ("all_established_s", "cpu_s", "rss_per_endpoint_kib"):
            values = [row[key] for row in mine if row[key] is not None]
            ratios = [
                row[key] / base[key]
                for row in mine
                if row[key] is not None
                and (base := by_round.get((row["round"], "grpcio"))) is not None
                and base[key]
            ]
            entry[key] = {
                "median": median(values) if values else None,
                "range": [min(values), max(values)] if values else None,
                "ratio_median": median(ratios) if ratios else None,
                "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            }
        summary[kind] = entry
    return summary


if __name__ == "__main__":
    main()
