"""Turn one Locust run's CSV files into summary.md and PNG plots (throughput and latency over time, per resolution).

    python -m anysize_tools.load_report loadtests/results/<timestamp>     # re-draw a run's report

Reads ``locust_stats.csv`` (totals per request name) and ``locust_stats_history.csv`` (written every second with
--csv-full-history; its percentiles cover Locust's recent window, so they show latency as it moves). Latencies are
in milliseconds. The run's parameters come from ``run.json``, which loadtests/loadtest.py writes beside the CSVs.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List

CSV_PREFIX = "locust"
AGGREGATED = "Aggregated"


def read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # Locust writes N/A before the first response


def resolution_order(name: str):
    """Request names sort by the size they carry ("jpeg long 64" before "jpeg long 512"), then by name."""
    sizes = [int(n) for n in re.findall(r"\d+", name)]
    return (sizes[-1] if sizes else 0, name)


def totals(run_dir: Path) -> Dict[str, Dict[str, float]]:
    """Per request name (and 'Aggregated'): requests, failures, req/s and latency figures of the whole run."""
    table = {}
    for row in read_rows(run_dir / f"{CSV_PREFIX}_stats.csv"):
        table[row["Name"]] = {
            "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "rps": number(row["Requests/s"]), "avg_ms": number(row["Average Response Time"]),
            "min_ms": number(row["Min Response Time"]), "max_ms": number(row["Max Response Time"]),
            "p50_ms": number(row["50%"]), "p95_ms": number(row["95%"]), "p99_ms": number(row["99%"]),
            "avg_bytes": number(row["Average Content Size"]),
        }
    return table


def plot(run_dir: Path, table: Dict[str, Dict[str, float]]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [row for row in read_rows(run_dir / f"{CSV_PREFIX}_stats_history.csv") if row["Name"] == AGGREGATED]
    written = []
    if history:
        start = int(history[0]["Timestamp"])
        seconds = [int(row["Timestamp"]) - start for row in history]
        figure, (throughput, latency) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
        throughput.plot(seconds, [number(r["Requests/s"]) for r in history], label="requests/s")
        throughput.plot(seconds, [number(r["Failures/s"]) for r in history], label="failures/s", color="tab:red")
        users = throughput.twinx()
        users.plot(seconds, [number(r["User Count"]) for r in history], color="grey", linestyle=":", label="users")
        users.set_ylabel("users")
        throughput.set_ylabel("per second")
        throughput.legend(loc="upper left")
        throughput.set_title("Throughput over time (all request names)")
        for column, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
            latency.plot(seconds, [number(r[column]) for r in history], linestyle=style, label=f"p{column[:-1]}")
        latency.set_ylabel("latency (ms)")
        latency.set_xlabel("seconds since start")
        latency.legend(loc="upper left")
        latency.set_title("Latency over time (Locust's recent window)")
        figure.tight_layout()
        figure.savefig(run_dir / "over_time.png", dpi=110)
        plt.close(figure)
        written.append("over_time.png")
    names = sorted((name for name in table if name != AGGREGATED), key=resolution_order)
    if names:
        figure, (latency, throughput, over_time) = plt.subplots(1, 3, figsize=(16, 4.8))
        positions = range(len(names))
        width = 0.27
        for offset, key in zip((-width, 0, width), ("p50_ms", "p95_ms", "p99_ms")):
            latency.bar([p + offset for p in positions], [table[n][key] for n in names], width,
                        label=key.split("_")[0])
        latency.set_xticks(list(positions), names, rotation=30, ha="right")
        latency.set_ylabel("latency (ms)")
        latency.set_title("Latency per request name")
        latency.legend()
        throughput.bar(list(positions), [table[n]["rps"] for n in names], color="tab:green")
        throughput.set_xticks(list(positions), names, rotation=30, ha="right")
        throughput.set_ylabel("requests/s")
        throughput.set_title("Throughput per request name")
        by_name = [row for row in read_rows(run_dir / f"{CSV_PREFIX}_stats_history.csv") if row["Name"] in names]
        if by_name:
            start = min(int(row["Timestamp"]) for row in by_name)
            for name in names:
                rows = [row for row in by_name if row["Name"] == name]
                over_time.plot([int(r["Timestamp"]) - start for r in rows], [number(r["95%"]) for r in rows],
                               label=name)
            over_time.set_xlabel("seconds since start")
            over_time.set_ylabel("p95 latency (ms)")
            over_time.set_title("p95 per request name over time")
            over_time.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(run_dir / "per_resolution.png", dpi=110)
        plt.close(figure)
        written.append("per_resolution.png")
    return written


def row_text(name: str, figures: Dict[str, float]) -> str:
    return (f"| {name} | {figures['requests']} | {figures['failures']} | {figures['rps']:.2f} | "
            f"{figures['avg_ms']:.0f} | {figures['p50_ms']:.0f} | {figures['p95_ms']:.0f} | {figures['p99_ms']:.0f} | "
            f"{figures['max_ms']:.0f} |")


def summary_text(run: dict, table: Dict[str, Dict[str, float]], plots: List[str],
                 failures: List[Dict[str, str]], files: List[str]) -> str:
    lines = [f"# Load test: {run.get('model', '?')}, workload {run.get('workload', '?')}", ""]
    lines += [f"- {key}: `{value}`" for key, value in run.items()]
    lines += ["", "| request name | requests | failures | req/s | avg ms | p50 ms | p95 ms | p99 ms | max ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in sorted((n for n in table if n != AGGREGATED), key=resolution_order):
        lines.append(row_text(name, table[name]))
    if AGGREGATED in table:
        lines.append(row_text("**all**", table[AGGREGATED]))
    lines += ["", "Percentiles are Locust's (rounded to two significant digits above 100 ms)."]
    if failures:
        lines += ["", "## Failures", "", "| request name | error | count |", "|---|---|---:|"]
        lines += [f"| {f['Name']} | {f['Error'][:160]} | {f['Occurrences']} |" for f in failures]
    lines += [""] + [f"![{plot_file}]({plot_file})" for plot_file in plots]
    lines += ["", "Files: " + ", ".join(f"`{name}`" for name in files) + "."]
    return "\n".join(lines) + "\n"


MEMORY_CSV = "memory.csv"


def read_memory(path: Path) -> List[Dict]:
    """memory.csv (the soak's samples: seconds, one column of MiB per process, a note) back into rows."""
    return [{key: (value if key == "note" else float(value)) for key, value in row.items() if value != ""}
            for row in read_rows(path)]


def memory_figures(rows: List[Dict], growth_limit: float) -> Dict:
    """The soak's memory figures per process (MiB: start, max, end, the second and last quarters' means, growth
    between them) and its verdict: every worker levels off and none restarted. Written to memory.json, which
    hand-written readings quote; computed from memory.csv alone."""
    columns = sorted({key for row in rows for key in row if key.endswith("_mb")})
    workers = [c for c in columns if c.startswith("worker_")]
    processes, levels_off = [], bool(workers)  # nothing sampled: no evidence either way, so no pass
    for column in columns:
        values = [row[column] for row in rows if column in row]
        entry = {"process": column.removesuffix("_mb"), "start": values[0], "max": max(values), "end": values[-1]}
        if len(values) >= 4:  # a worker that appeared late (a restart) has too few samples to judge
            quarter = len(values) // 4
            second, last = statistics.mean(values[quarter:2 * quarter]), statistics.mean(values[-quarter:])
            entry.update(second_quarter_mean=second, last_quarter_mean=last, growth=last / second - 1)
            if column in workers and entry["growth"] > growth_limit:
                levels_off = False
        processes.append(entry)
    return {"processes": processes, "workers_seen": len(workers), "growth_limit": growth_limit,
            "levels_off": levels_off, "passed": levels_off and len(workers) == 1}


def memory_section(figures: Dict) -> List[str]:
    """The memory table and verdict of the soak's summary.md, from memory_figures."""
    lines = ["", "## Memory", "", "| process | start MiB | max MiB | end MiB | 2nd-quarter mean | last-quarter mean "
             "| growth |", "|---|---:|---:|---:|---:|---:|---:|"]
    for entry in figures["processes"]:
        name = entry["process"]
        if "growth" not in entry:
            lines.append(f"| {name} | {entry['start']:.0f} | {entry['max']:.0f} | {entry['end']:.0f} | – | – | – |")
            continue
        lines.append(f"| {name} | {entry['start']:.0f} | {entry['max']:.0f} | {entry['end']:.0f} | "
                     f"{entry['second_quarter_mean']:.0f} | {entry['last_quarter_mean']:.0f} | "
                     f"{100 * entry['growth']:+.1f} % |")
    restarted = figures["workers_seen"] > 1
    levels_off, limit = figures["levels_off"], figures["growth_limit"]
    lines += ["", f"Workers seen: {figures['workers_seen']} ({'a worker was restarted' if restarted else 'no restart'})"
              f". Worker memory {'levels off' if levels_off else 'KEEPS GROWING (or was not sampled)'}: growth from the "
              f"second quarter to the last {'within' if levels_off else 'above'} {100 * limit:.0f} %. The "
              "frontend's (Java) memory is shown, not judged: its heap grows until the JVM's own limit.", "",
              "![memory.png](memory.png)"]
    return lines


RUN_FILES = ("run.json", f"{CSV_PREFIX}_stats.csv", f"{CSV_PREFIX}_stats_history.csv", f"{CSV_PREFIX}_failures.csv",
             "report.html", MEMORY_CSV, "memory.json")
PLOTS = ("over_time.png", "per_resolution.png")


def summary_page(run_dir: Path, old_page: str = "") -> str:
    """summary.md of a run from the files in ``run_dir`` alone (the plots already drawn); comment lines at the top
    of ``old_page`` (where a copy in docs/ says why it is kept) stay. What `make docs-check` re-renders."""
    run_dir = Path(run_dir)
    run_file = run_dir / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    preamble = "".join(line for line in old_page.splitlines(keepends=True)[:3] if line.startswith("<!--"))
    text = preamble + summary_text(run, totals(run_dir), [p for p in PLOTS if (run_dir / p).is_file()],
                                   read_rows(run_dir / f"{CSV_PREFIX}_failures.csv"),
                                   [f for f in RUN_FILES if (run_dir / f).is_file()])
    if (run_dir / MEMORY_CSV).is_file():
        figures = memory_figures(read_memory(run_dir / MEMORY_CSV), run["growth_limit"])
        text += "\n".join(memory_section(figures)) + "\n"
    return text


def write_report(run_dir: Path) -> Dict[str, Dict[str, float]]:
    """Write summary.md and the plots into ``run_dir``; return the totals table."""
    run_dir = Path(run_dir)
    table = totals(run_dir)
    plot(run_dir, table)
    (run_dir / "summary.md").write_text(summary_page(run_dir))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    table = write_report(parser.parse_args().run_dir)
    return 0 if table else 1


if __name__ == "__main__":
    sys.exit(main())
