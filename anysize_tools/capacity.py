"""The capacity plan on paper: replicas and load generators per target rate, rendered into docs/capacity-plan.md
from its inputs (docs/capacity-plan.json: the rule, the per-replica rates that were not measured here, each with
its source) and the rates this machine measured (docs/benchmarks.json).

    python -m anysize_tools.capacity          # rewrite docs/capacity-plan.md; `make docs-check` re-renders it
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

from .paths import DOCS

PAGE = DOCS / "capacity-plan.md"
LOCUST_FIT_REQUESTS = 500  # the longest run must have this many requests to fit Locust's per-request cost


def replicas(rate: float, per_replica: float, plan: dict) -> int:
    """Replicas for ``rate``: rate / (per-replica rate x headroom), rounded up, plus the spare (N+1 up to
    ``spare.up_to``, a share above it)."""
    needed = math.ceil(rate / (per_replica * plan["headroom"]))
    spare = plan["spare"]
    return needed + (spare["replicas"] if rate <= spare["up_to"] else math.ceil(needed * spare["share_above"]))


def measured_rates(benchmarks: dict) -> dict:
    """The rates of this machine's benchmark the plan uses: the best clean run of ours at 224x224 per precision
    family, and Locust's CPU seconds per request over every run."""
    from .benchmark.targets import by_configuration, median_rps

    def best(precision):
        """The fastest configuration of ours at 224x224 in this precision, by its median over rounds."""
        groups = by_configuration(benchmarks, lambda c: c["handler"] == "ours" and c["model"] == "vgg16"
                                  and c["workload"] == "fixed" and c["users"] > 1
                                  and c.get("precision", "fp32") == precision)
        rates = {name: median_rps(runs) for name, runs in groups.items() if median_rps(runs)}
        name = max(rates, key=rates.get, default=None)
        return {"name": name, "rps": rates[name]} if name else None

    return {"cpu_fp32": best("fp32"), "cpu_bf16": best("bf16"), "locust": locust_cost(benchmarks)}


def locust_cost(benchmarks: dict) -> dict | None:
    """Locust's CPU seconds per run as start-up + per request x requests: the least-squares line over the
    benchmark's served runs (a short run's CPU is mostly start-up, so a plain ratio would overstate the cost)."""
    points = [(r["requests"], r["locust_cpu_s"]) for r in benchmarks["served"]
              if r.get("requests") and r.get("locust_cpu_s") is not None]
    if len(points) < 3 or max(n for n, _ in points) < LOCUST_FIT_REQUESTS:
        return None  # short runs only: start-up and per-request cost cannot be told apart
    mean_n = sum(n for n, _ in points) / len(points)
    mean_cpu = sum(c for _, c in points) / len(points)
    slope = (sum((n - mean_n) * (c - mean_cpu) for n, c in points) / sum((n - mean_n) ** 2 for n, _ in points))
    if slope <= 0:
        return None
    return {"per_request_s": slope, "start_s": mean_cpu - slope * mean_n, "runs": len(points),
            "requests": [min(n for n, _ in points), max(n for n, _ in points)]}


def page(plan: dict, benchmarks: dict) -> str:
    rates = measured_rates(benchmarks)
    columns = [dict(column) for column in plan["columns"]]
    for column in columns:
        if column.get("measured"):  # a rate of this machine's benchmark
            run = rates[column["measured"]]
            column["per_replica"] = run["rps"]
            column["source"] = f"measured here: `{run['name']}` (docs/benchmarks.md; the median of its rounds where it ran in several)"
    header = "| images per second | " + " | ".join(c["name"] for c in columns) + " |"
    lines: List[str] = [
        "# Capacity plan (on paper)",
        "",
        "Rendered by `python -m anysize_tools.capacity` from `docs/capacity-plan.json` (the rule and the rates not "
        "measured here, each with its source) and `docs/benchmarks.json` (the rates measured here); "
        "`make docs-check` re-renders it. Do not edit by hand.",
        "",
        f"Replicas = target / (per-replica rate x {plan['headroom']}), rounded up, plus {plan['spare']['replicas']} "
        f"spare replica up to {plan['spare']['up_to']:,} images/s and {plan['spare']['share_above']:.0%} spare "
        f"above; {plan['headroom']} keeps each replica out of the queueing knee, where p99 latency climbs.",
        "",
        "| per replica | images/s | source |",
        "|---|---:|---|",
        *[f"| {c['name']} | {c['per_replica']:,.1f} | {c['source']} |" for c in columns],
        "",
        header,
        "|---:|" + "---:|" * len(columns),
        *[f"| {rate:,} | " + " | ".join(f"{replicas(rate, c['per_replica'], plan):,} {c['unit']}" for c in columns)
          + " |" for rate in plan["rates"]],
        "",
    ]
    locust = rates["locust"]
    if not locust:
        lines += [
            "**The load generator.** This sitting's benchmark runs were too short (fewer than "
            f"{LOCUST_FIT_REQUESTS} requests in the longest) to tell Locust's start-up from its cost per request, so "
            "no load-generator sizing is derived from them; `make loadtest` with a long `DURATION` on a fast model "
            "measures it.",
            "",
        ]
    else:
        per_request, free = locust["per_request_s"], plan["locust_core_share"]
        lines += [
            "**The load generator.** Locust's CPU in this machine's benchmark runs, as a straight line through its "
            f"CPU seconds against the requests of each run ({locust['runs']} runs of {locust['requests'][0]:,} to "
            f"{locust['requests'][1]:,} requests of 10-30 KB JPEGs and PNGs): {locust['start_s']:.2f} s to start "
            f"plus {1000 * per_request:.2f} ms per request. With one Locust worker process per core, each kept at "
            f"most {free:.0%} busy so the generator never becomes the bottleneck:",
            "",
            "| images per second | Locust worker processes (cores) |",
            "|---:|---:|",
            *[f"| {rate:,} | {math.ceil(rate * per_request / free):,} |" for rate in plan["rates"]],
            "",
            "Larger images cost Locust more per request (more bytes to send); full-HD JPEGs were not measured here.",
            "",
        ]
    return "\n".join(lines)


def render(path: Path = PAGE) -> str:
    return page(json.loads((path.parent / "capacity-plan.json").read_text()),
                json.loads((path.parent / "benchmarks.json").read_text()))


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
