"""Fleet balance of subsetting: 100 clients x 100 servers, subset 10.

Connections per server come from the real subsetting code (each client's subset, as
its channel computes it); load per server from :mod:`bench.sim`, the deterministic
fleet simulator running the real policies (random_subsetting / deterministic_aperture
over least_request, and plain least_request over every server as the reference).
Spread is max/mean over the servers. A second fleet of 97 servers shows the
non-aligned case (clients and servers not multiples of each other).

``python -m bench.fleet_balance`` writes bench/results/fleet_balance.json and .png.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from bench.sim.run import Scenario, ServerSpec, Step, simulate
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.policies.deterministic_aperture import aperture_subset
from grpc_balancer.policies.random_subsetting import rendezvous_subset

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = 100
SUBSET = 10
SEEDS = (1, 2, 3)
CHILD = [{"least_request": {}}]


def _config(policy: str, index: int) -> dict[str, Any]:
    if policy == "least_request":
        return {}
    if policy == "random_subsetting":
        return {"subsetSize": SUBSET, "childPolicy": CHILD}
    return {
        "subsetSize": SUBSET,
        "clientIndex": index,
        "clientCount": CLIENTS,
        "childPolicy": CHILD,
    }


def scenario(servers: int) -> Scenario:
    # 20 ms calls, no queueing limit; 60 calls/s per server in all (light load, so the
    # spread is the subsets' and not queueing's).
    return Scenario(
        name=f"fleet_balance_{servers}",
        title=f"{CLIENTS} clients x {servers} servers, subset {SUBSET}",
        servers=[ServerSpec(slots=0, median_s=0.02, sigma=0.3, probes=False)] * servers,
        steps=[
            Step("warm-up", 0.0, 1.0, 60.0 * servers, measured=False),
            Step("steady", 1.0, 31.0, 60.0 * servers),
        ],
        clients=CLIENTS,
        timeout_s=1.0,
    )


def connections(policy: str, servers: int, seed: int) -> list[int]:
    """Clients connected to each server (the subsets the channels compute)."""
    fleet = [Endpoint(f"10.0.{i // 250}.{i % 250 + 1}:443") for i in range(servers)]
    per: Counter[str] = Counter()
    rng = random.Random(seed)
    for index in range(CLIENTS):
        if policy == "random_subsetting":
            chosen = rendezvous_subset(fleet, SUBSET, rng.getrandbits(64))
        elif policy == "deterministic_aperture":
            chosen = aperture_subset(fleet, SUBSET, index, CLIENTS)
        else:
            chosen = fleet
        per.update(e.address for e in chosen)
    return [per[e.address] for e in fleet]


def spread(values: list[int]) -> float:
    return max(values) / mean(values)


def run() -> dict[str, Any]:
    rows = []
    for servers in (100, 97):
        for policy in ("least_request", "random_subsetting", "deterministic_aperture"):
            for seed in SEEDS:
                conns = connections(policy, servers, seed)
                started = time.perf_counter()
                result = simulate(
                    scenario(servers), policy, lambda i, p=policy: _config(p, i), seed
                )
                calls = result.calls_to
                row = {
                    "servers": servers,
                    "policy": policy,
                    "seed": seed,
                    "connections_per_client": sum(conns) / CLIENTS,
                    "connections_per_server": {
                        "min": min(conns),
                        "mean": mean(conns),
                        "max": max(conns),
                    },
                    "connection_spread": spread(conns),
                    "calls": sum(calls),
                    "load_spread": spread(calls),
                    "load_min_over_mean": min(calls) / mean(calls),
                    "sim_s": round(time.perf_counter() - started, 2),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for servers in (100, 97):
        for policy in ("least_request", "random_subsetting", "deterministic_aperture"):
            mine = [r for r in rows if r["servers"] == servers and r["policy"] == policy]
            summary[f"{policy}/{servers}"] = {
                "connections_per_client": mine[0]["connections_per_client"],
                "connection_spread": [
                    min(r["connection_spread"] for r in mine),
                    max(r["connection_spread"] for r in mine),
                ],
                "load_spread": [
                    min(r["load_spread"] for r in mine),
                    max(r["load_spread"] for r in mine),
                ],
            }
    payload = {
        "command": "python -m bench.fleet_balance",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "clients": CLIENTS,
        "subset": SUBSET,
        "seeds": list(SEEDS),
        "rows": rows,
        "summary": summary,
        "target_load_spread": 1.2,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_balance.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(payload)
    return payload


def plot(payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    policies = ["least_request", "random_subsetting", "deterministic_aperture"]
    for ax, servers in zip(axes, (100, 97), strict=True):
        for j, key in enumerate(("connection_spread", "load_spread")):
            values = []
            for policy in policies:
                mine = [
                    r[key]
                    for r in payload["rows"]
                    if r["servers"] == servers and r["policy"] == policy
                ]
                values.append(sum(mine) / len(mine))
            ax.bar(
                [i + (j - 0.5) * 0.38 for i in range(3)], values, 0.38, label=key.replace("_", " ")
            )
        ax.axhline(1.2, color="red", linestyle="--", linewidth=1, label="target 1.2")
        ax.set_xticks(
            range(3), ["all (least_request)", "random_subsetting", "aperture"], fontsize=8
        )
        ax.set_title(
            f"{payload['clients']} clients x {servers} servers, subset {payload['subset']}",
            fontsize=9,
        )
    axes[0].set_ylabel("max / mean over servers")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "fleet_balance.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(run()["summary"], indent=2))
