"""The figure of :mod:`bench.fleet`, drawn from bench/results/fleet.json
(``python -m bench.fleet_plot`` redraws it without running anything)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def plot(out: dict[str, Any], results: Path = RESULTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [n for n in out["sizes"] if any(r["n"] == n for r in out["connect"])]
    panels = (
        ("first_call_s", "first successful call (s)"),
        ("all_established_s", "all N connected (s)"),
        ("rss_per_endpoint_kib", "RSS per endpoint (KiB)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for j, kind in enumerate(("ours", "grpcio")):
            values = []
            lows, highs = [], []
            for n in sizes:
                runs = [r[key] for r in out["connect"] if r["n"] == n and r["kind"] == kind]
                runs = [v for v in runs if v is not None]
                mid = median(runs)
                values.append(mid)
                lows.append(mid - min(runs))
                highs.append(max(runs) - mid)
            xs = [i + (j - 0.5) * 0.38 for i in range(len(sizes))]
            label = "grpc_balancer" if kind == "ours" else "grpcio channel"
            ax.bar(xs, values, 0.38, yerr=[lows, highs], capsize=3, label=label)
        ax.set_xticks(range(len(sizes)), [f"{n:,}" for n in sizes])
        ax.set_xlabel("endpoints (round_robin)", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("one channel over N loopback endpoints (median, range over rounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(results / "fleet.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    plot(json.loads((RESULTS / "fleet.json").read_text()))
