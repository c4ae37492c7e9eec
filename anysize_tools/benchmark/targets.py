"""Issue 7's targets and their evaluation: the bare share of a served run, the best runs, the target rows; issue 16's
target on the request forms' cost."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Dict, List, Optional

from .plan import SAME_SIZE_WORKLOADS, bare_key, base_name

SHARE_RANGE = (0.9, 1.1)  # served / bare: below, the server loses time; above, the bare figure is not the ceiling
FORMS_TARGET = "the cost of base64 and JSON must stay under 5 % at 224 px on this CPU"  # issue 16's words
FORMS_COST_LIMIT = 0.05  # cost = 1 - (a form's median req/s) / (raw's median req/s)


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def bare_entry(results: dict, config: dict) -> Optional[dict]:
    """The bare measurement for a served configuration: same model, head, workload, precision, memory format and
    compilation, and the one taken for its round where each round has its own (else the first)."""
    same = [e for e in results["bare"] if bare_key(e) == bare_key(config)]
    return next((e for e in same if e.get("round", 0) == config.get("round", 0)), same[0] if same else None)


def bare_share(results: dict, run: dict, decoding: bool = True) -> Optional[float]:
    """The share of the run's wall time the bare handler would need for the images the server answered: the sum
    over request names of (answered per second) x (bare seconds per image of that name). Served / bare throughput
    is this share; it weighs a mixed workload by what was actually answered (a closed loop answers small images
    sooner), which an average over request names would not. None for bucketed runs: they answer other sizes.
    ``decoding``: the bare work per image is the handler's decoding (every view it feeds) plus its forward pass,
    the same work the served worker does, so the ratio is what the server adds; False: the forward pass alone
    (the model's ceiling, which a model whose views cost much to decode cannot reach served)."""
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
        decode_ms = entry["kinds"][name]["decode_ms"] if decoding else 0.0
        share += answered / seconds * (min(ms for b, ms in per_image.items() if b <= largest) + decode_ms) / 1000
    return share


def clean(run: dict) -> bool:
    return bool(run.get("rps")) and not run.get("failures") and run.get("status") == 0


def best_run(results: dict, keep) -> Optional[dict]:
    runs = [r for r in results["served"] if clean(r) and keep(r["config"])]
    return max(runs, key=lambda r: r["rps"], default=None)


def by_configuration(results: dict, keep) -> Dict[str, List[dict]]:
    """Served runs kept by ``keep``, grouped by configuration (the interleaved rounds of one together), in order."""
    groups: Dict[str, List[dict]] = defaultdict(list)
    for run in results["served"]:
        if keep(run["config"]):
            groups[base_name(run["name"])].append(run)
    return dict(groups)


def median_rps(runs: List[dict]) -> Optional[float]:
    """The median throughput of a configuration's rounds; None unless every round ran cleanly."""
    return statistics.median(r["rps"] for r in runs) if runs and all(map(clean, runs)) else None


SAME_AS_STOCK = ("model", "workload", "batch", "delay", "workers", "users", "processes")


def like_with_like(results: dict) -> List[dict]:
    """Our handler against the stock one at fp32 on the same 224x224 JPEGs, same batch size, workers and users, in
    interleaved rounds: per configuration of ours, its rounds, the stock handler's, and the ratio of the medians."""
    def fp32_rounds(handler, like=None):
        return by_configuration(results, lambda c: c.get("round", 0) > 0 and c["handler"] == handler
                                and c.get("precision", "fp32") == "fp32"
                                and (like is None or all(c.get(k) == like.get(k) for k in SAME_AS_STOCK)))

    stock = next(iter(fp32_rounds("stock").values()), [])
    rows = []
    # Only runs of the stock run's model, images and serving settings: other runs go in rounds for their own
    # served / bare figure (the demo model on mixed sizes), not to be compared with vgg16 at 224x224.
    for name, runs in (fp32_rounds("ours", stock[0]["config"]) if stock else {}).items():
        ours, theirs = median_rps(runs), median_rps(stock)
        rows.append({"name": name, "config": runs[0]["config"], "rps": [r.get("rps") for r in runs],
                     "stock_name": base_name(stock[0]["name"]) if stock else None,
                     "stock_rps": [r.get("rps") for r in stock], "median": ours, "stock_median": theirs,
                     "ratio": ours / theirs if ours and theirs else None,
                     "worker_ms": [r.get("worker_ms") for r in runs], "stock_worker_ms": [r.get("worker_ms") for r in stock],
                     "forward_ms": [r.get("forward_ms_per_request") for r in runs]})
    return rows


def median_of(runs: List[dict], field: str) -> Optional[float]:
    values = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(values) if values else None


def form_costs(results: dict) -> List[dict]:
    """The forms part per request form, in the order run: its rounds' req/s, their median, the ratio of that median to
    raw's, the cost (1 - ratio), the medians of p50 and p95 latency and the failures; ``clean``: every round ran
    without a failure. The median is over the rounds that measured a rate (a round that raised has none)."""
    runs_by_form: Dict[str, List[dict]] = defaultdict(list)
    for run in results.get("forms", {}).get("runs", []):
        runs_by_form[run["config"].get("request_form", "raw")].append(run)
    raw = median_of(runs_by_form.get("raw", []), "rps")
    rows = []
    for form, runs in runs_by_form.items():
        median = median_of(runs, "rps")
        ratio = median / raw if median and raw else None
        rows.append({"form": form, "rps": [r.get("rps") for r in runs], "median": median, "ratio": ratio,
                     "cost": None if ratio is None else 1 - ratio, "p50_ms": median_of(runs, "p50_ms"),
                     "p95_ms": median_of(runs, "p95_ms"), "failures": sum(r.get("failures") or 0 for r in runs),
                     "clean": all(map(clean, runs))})
    return rows


def form_targets(results: dict) -> List[dict]:
    """Issue 16's target per form other than raw: met when its cost is under FORMS_COST_LIMIT and neither it nor
    raw failed a request. A sitting on a GPU is shown, not judged: the target is this CPU's."""
    rows = form_costs(results)
    raw = next((row for row in rows if row["form"] == "raw"), {"median": None, "clean": False})
    gpu = not results.get("forms", {}).get("meta", {}).get("gpu", "none").startswith("none")
    judged = []
    for row in rows:
        if row is raw:
            continue
        ok = row["clean"] and raw["clean"]
        cost = None if row["cost"] is None else 100 * row["cost"]
        measured = (f"cost {fmt(cost)} % ({fmt(row['ratio'], 3)}x raw: {fmt(row['median'], 2)} vs "
                    f"{fmt(raw['median'], 2)} req/s)" + ("" if ok else ", failures")
                    + (", measured on a GPU" if gpu else ""))
        judged.append({"machine": "gpu" if gpu else "cpu", "target": f"{FORMS_TARGET}: {row['form']} against raw, "
                       f"medians of {len(row['rps'])} interleaved rounds", "name": row["form"], "value": row["cost"],
                       "measured": measured,
                       "met": None if gpu or row["cost"] is None else row["cost"] < FORMS_COST_LIMIT and ok})
    return judged


def targets(results: dict) -> List[dict]:
    """Issue 7's targets against this sitting's numbers; rows for the other kind of machine say 'not run'. Then
    issue 16's, where the forms part ran (its own sitting, merged in)."""
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
            for name, runs in by_configuration(results, ours(workload, model)).items():
                shares = [bare_share(results, run) for run in runs]
                share = statistics.median(shares) if None not in shares else None
                ok = all(map(clean, runs))
                rounds = f", median of {len(runs)} rounds" if len(runs) > 1 else ""
                rows.append({"machine": kind, "target": f"{SHARE_RANGE[0]} <= served / bare <= {SHARE_RANGE[1]}, "
                             f"{name}{rounds}", "name": name, "value": share,
                             "measured": fmt(share, 2) + ("" if ok else ", failures"),
                             "met": None if share is None else SHARE_RANGE[0] <= share <= SHARE_RANGE[1] and ok})
        for row in like_with_like(results):
            rows.append({"machine": kind, "target": f"fp32 at 224x224: ours >= the stock handler, {row['name']} "
                         f"against {row['stock_name']}, medians of {len(row['rps'])} interleaved rounds",
                         "name": row["name"], "value": row["ratio"],
                         "measured": f"{fmt(row['ratio'], 2)}x ({fmt(row['median'], 2)} vs "
                                     f"{fmt(row['stock_median'], 2)} req/s)",
                         "met": None if row["ratio"] is None else row["ratio"] >= 1.0})
        if best_224 and stock:
            ratio = best_224["rps"] / stock["rps"]
            needed = 25 if gpu else 2
            rows.append({"machine": kind, "target": f">= {needed}x the stock handler at 224x224 (best of each)",
                         "name": best_224["name"], "value": ratio,
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
    return rows + form_targets(results)


def summary(results: dict) -> dict:
    """What the benchmark derives from its raw runs, stored beside them in results.json so readings can quote it:
    each served run's served / bare share, the like-with-like comparison, the request forms' costs (where the forms
    part ran) and the targets. `make docs-check` recomputes it from the runs."""
    return {"served_over_bare": {run["name"]: bare_share(results, run) for run in results["served"]},
            "served_over_bare_model": {run["name"]: bare_share(results, run, decoding=False)
                                       for run in results["served"]},
            "like_with_like": [{k: v for k, v in row.items() if k != "config"} for row in like_with_like(results)],
            **({"forms": form_costs(results)} if results.get("forms") else {}),
            "targets": targets(results)}
