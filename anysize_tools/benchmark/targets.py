"""Issue 7's targets and their evaluation: the bare share of a served run, the best runs, the target rows."""

from __future__ import annotations

from typing import List, Optional

from .plan import SAME_SIZE_WORKLOADS


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def bare_entry(results: dict, config: dict) -> Optional[dict]:
    """The bare measurement for a served configuration: same model, head, workload, precision, memory format."""
    key = (config["model"], config["head"], config["workload"], config.get("precision", "fp32"),
           bool(config.get("channels_last")))
    return next((e for e in results["bare"] if (e["model"], e["head"], e["workload"], e.get("precision", "fp32"),
                                                bool(e.get("channels_last"))) == key), None)


def bare_share(results: dict, run: dict) -> Optional[float]:
    """The share of the run's wall time the bare model would need for the images the server answered: the sum
    over request names of (answered per second) x (bare seconds per image of that name). Served / bare throughput
    is this share; it weighs a mixed workload by what was actually answered (a closed loop answers small images
    sooner), which an average over request names would not. None for bucketed runs: they answer other sizes."""
    config = run["config"]
    entry = bare_entry(results, config)
    if entry is None or not run.get("per_name") or config.get("buckets") or config["handler"] == "stock":
        return None
    # Locust's per-name req/s divides by the time up to that name's last request, which flatters rare, slow
    # names; the run's own duration (all requests over the aggregate rate) is the common time base.
    seconds = run["requests"] / run["rps"]
    share = 0.0  # failed requests are left out: an error page is no classification
    for name, figures in run["per_name"].items():
        if name not in entry["kinds"]:
            return None
        # Same-size images stack only in same-size workloads, where the server may run any batch up to batchSize:
        # take the best bare rate among those; elsewhere the bare model runs batch 1.
        per_image = {int(b): ms for b, ms in entry["kinds"][name]["model_ms"].items()}
        largest = config["batch"] if config["workload"] in SAME_SIZE_WORKLOADS else 1
        answered = figures["requests"] - figures.get("failures", 0)
        share += answered / seconds * min(ms for b, ms in per_image.items() if b <= largest) / 1000
    return share


def best_run(results: dict, keep) -> Optional[dict]:
    runs = [r for r in results["served"] if r.get("rps") and not r.get("failures") and keep(r["config"])]
    return max(runs, key=lambda r: r["rps"], default=None)


def targets(results: dict) -> List[dict]:
    """Issue 7's targets against this sitting's numbers; rows for the other kind of machine say 'not run'."""
    gpu = results["meta"].get("gpu", "none").startswith("none") is False
    rows = []

    def ours(workload, model="vgg16"):
        return lambda c: (c["handler"] == "ours" and c["model"] == model and c["workload"] == workload
                          and c["users"] > 1 and not c.get("buckets"))

    stock = best_run(results, lambda c: c["handler"] == "stock")
    best_224 = best_run(results, ours("fixed"))
    for kind, target_gpu in (("cpu", False), ("gpu", True)):
        if target_gpu != gpu:
            rows.append({"machine": kind, "target": f"the {kind.upper()} targets", "measured": "not run: this "
                         f"machine has {'a GPU' if gpu else 'no GPU'}", "met": None})
            continue
        for workload, model in (("fixed", "vgg16"), ("mixed", "demo")) + ((("1080p", "vgg16"),) if gpu else ()):
            for run in results["served"]:
                if ours(workload, model)(run["config"]) and not run["config"].get("compile"):
                    share = bare_share(results, run)
                    clean = not run.get("failures") and run.get("status") == 0
                    rows.append({"machine": kind, "target": f"served / bare >= 0.9, {run['name']}",
                                 "measured": fmt(share, 2) + ("" if clean else f", {run.get('failures')} failures"),
                                 "met": None if share is None else share >= 0.9 and clean})
        if best_224 and stock:
            ratio = best_224["rps"] / stock["rps"]
            needed = 25 if gpu else 2
            rows.append({"machine": kind, "target": f">= {needed}x the stock handler at 224x224 (best of each)",
                         "measured": f"{ratio:.2f}x ({best_224['name']} {best_224['rps']:.1f} vs {stock['name']} "
                                     f"{stock['rps']:.1f} req/s)", "met": ratio >= needed})
        if gpu and best_224:
            # Any run meeting both halves meets the target; otherwise the fastest is shown.
            within = [r for r in results["served"] if r.get("rps") and not r.get("failures")
                      and ours("fixed")(r["config"]) and r.get("p99_ms", 1e9) <= 100]
            fastest_within = max(within, key=lambda r: r["rps"], default=None)
            shown = fastest_within if fastest_within and fastest_within["rps"] >= 5000 else best_224
            rows.append({"machine": kind, "target": ">= 5,000 req/s with p99 <= 100 ms at 224x224",
                         "measured": f"{shown['rps']:.0f} req/s, p99 {shown['p99_ms']:.0f} ms ({shown['name']})",
                         "met": shown["rps"] >= 5000 and shown["p99_ms"] <= 100})
            best_1080 = best_run(results, ours("1080p"))
            if best_1080:
                rows.append({"machine": kind, "target": ">= 170 req/s at 1920x1080",
                             "measured": f"{best_1080['rps']:.0f} req/s ({best_1080['name']})",
                             "met": best_1080["rps"] >= 170})
    return rows
