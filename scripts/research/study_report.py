"""The resolution study's report: its plot and its Markdown tables, drawn from the study's JSON
(scripts/research/resolution_study.py writes both; `--replot` redraws them from a committed JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from anysize.vgg_models import AGGREGATIONS

def plot(results: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fcn = results["defaults"]["fcn"]["method"]
    figure, axes = plt.subplots(3, 1, figsize=(9, 12))
    for axis, mode in zip(axes[:2], ("zoom", "canvas")):
        rows = [r for r in results["rows"] if r["mode"] == mode]
        x = range(len(rows))
        for method, policy, style in (("adaptive", "native", "C0:"), ("adaptive", "working", "C0-"),
                                      (fcn, "native", "C1:"), (fcn, "working", "C1-"), (fcn, "multi", "C1--"),
                                      (fcn, "multi-max", "C4-"), ("adaptive", "multi-max", "C0--"),
                                      (fcn, "multi-top2", "C5-"), ("adaptive", "multi-top2", "C5--"),
                                      ("fcn-mean", "native", "C2:")):
            axis.plot(x, [100 * r["scenes"][policy]["accuracy"][method] for r in rows], style, marker="o",
                      markersize=3, label=f"{method}, {policy}")
        axis.plot(x, [100 * r["scenes"]["resize+crop"]["accuracy"] for r in rows], "k-.", label="resize+crop")
        axis.plot(x, [100 * r["probe"]["working"]["accuracy"][fcn] for r in rows], "C3-", marker="s", markersize=3,
                  label=f"{fcn}, working (probe)")
        axis.set_xticks(list(x))
        axis.set_xticklabels([r["condition"] for r in rows], rotation=35, ha="right", fontsize=7)
        axis.set_ylabel("top-1 (%)")
        axis.set_ylim(0, 101)
        axis.axhline(95 if mode == "zoom" else 90, color="grey", linewidth=0.8)
        axis.set_title(f"{mode}: held-out scenes (and the independent probe)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    rows = [r for r in results["rows"] if r["mode"] == "zoom"]
    x = range(len(rows))
    for policy, style in (("native", "C1:"), ("working", "C1-"), ("multi", "C1--")):
        axes[2].plot(x, [r["scenes"][policy]["decode_ms"] + r["scenes"][policy]["forward_ms"] for r in rows], style,
                     marker="o", markersize=3, label=f"fcn, {policy}")
    axes[2].plot(x, [r["scenes"]["resize+crop"]["decode_ms"] + r["scenes"]["resize+crop"]["forward_ms"] for r in rows],
                 "k-.", label="resize+crop")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("ms per image (JPEG decode + resize + forward)")
    axes[2].set_xticks(list(x))
    axes[2].set_xticklabels([r["condition"] for r in rows], rotation=35, ha="right", fontsize=7)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    figure.suptitle(f"demo model: accuracy and cost by input size ({results['date']}, {results['machine']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(results: Dict, reading: str, settings: Dict) -> str:
    """The study's page; ``settings``: the study's POLICIES, JPEG_QUALITY, NATIVE_FLOOR and COST_CAP."""
    POLICIES, JPEG_QUALITY, NATIVE_FLOOR, COST_CAP = (settings[k] for k in (  # noqa: N806 (the study's names)
        "POLICIES", "JPEG_QUALITY", "NATIVE_FLOOR", "COST_CAP"))

    chosen = "; ".join(f"{head}: {choice['policy']}{' ' + choice['method'] if head == 'fcn' else ''} "
                       f"({percent(choice['mean_accuracy'])} % mean)" for head, choice in results["defaults"].items())
    ranges = ", ".join(f"{head} {low}-{high} px" for head, (low, high) in results["working_scale"].items())
    methods = [("adaptive", p) for p in POLICIES] + [
        (f"fcn-{a}", p) for a in AGGREGATIONS for p in POLICIES]
    tables = []
    for source, title in (("scenes", "Held-out scenes (the training generator's `test` split, JPEG)"),
                          ("probe", "Independent probe (`anysize_tools/shape_probe.py`: other drawing code and backgrounds, "
                                    "JPEG)")):
        lines = [f"### {title}", "", "| mode | input (W x H) | images | fed (fcn, working) | " +
                 " | ".join(f"{m} {p}" for m, p in methods) + " | resize+crop |",
                 "|---|---|---:|---|" + "---:|" * (len(methods) + 1)]
        for r in results["rows"]:
            entry = r[source]
            lines.append(f"| {r['mode']} | {r['condition']} | {r['images']} | "
                         f"{'x'.join(map(str, entry['working']['fed'][0]))} | " +
                         " | ".join(percent(entry[p]["accuracy"][m]) for m, p in methods) +
                         f" | {percent(entry['resize+crop']['accuracy'])} |")
        tables.append("\n".join(lines))
    cost = ["| input | native ms | working ms | multi (any view rule) ms | resize+crop ms |", "|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        if r["mode"] != "zoom":
            continue
        e = r["scenes"]
        cost.append(f"| {r['condition']} | " + " | ".join(
            f"{e[p]['decode_ms']:.1f} + {e[p]['forward_ms']:.1f}" for p in ("native", "working", "multi", "resize+crop"))
            + " |")
    draft = [f"- {r['condition']}: fcn-max top-1 with reduced-size JPEG decoding "
             f"{percent(r['scenes']['working']['accuracy']['fcn-max'])} %, with full decoding "
             f"{percent(r['scenes']['working-full-decode']['accuracy']['fcn-max'])} %; the two agree on "
             f"{percent(r['scenes']['draft_agreement'])} % of the images; decoding "
             f"{r['scenes']['working']['decode_ms']:.0f} ms against {r['scenes']['working-full-decode']['decode_ms']:.0f} ms"
             for r in results["rows"] if "draft_agreement" in r["scenes"]]
    return f"""# Accuracy versus input size: heads, aggregations, scale policies, resize-and-crop

Generated by `{results['command']}` on {results['date']} ({results['machine']}, {results['threads']} threads, torch
{results['torch']}) from `docs/resolution-study.json`; `--replot` re-renders this page from it. The model is the
shipped demo model (`model_store/demo/`, weights `{results['weights']}`; see its MODEL_CARD.md).

**Sources** (both sent as JPEG, decoded by the service's own `decode_views`): held-out scenes of the training
data's generator (`test` split, seed {results['seed']}, quality {JPEG_QUALITY}) and the independent probe
(`anysize_tools/shape_probe.py`, seed {results['seed'] + 1}). {results['images']} pictures per condition and source
({results['large_images']} above 2.5 MP), so one picture is {100 / results['images']:.1f} points
({100 / results['large_images']:.1f} for the large ones).

**Modes**: zoom (the shape's radius a fraction of the shorter side) and canvas (the shape at a {results['unit']}-px
scale on a larger background).

**Policies**: `native` feeds the image at its own size (only the 4 MP cap and the 32-px floor apply); `working`
rescales it into the head's working range of the shorter side ({ranges}, derived below); `multi` feeds views at
shorter sides {', '.join(map(str, results['multi_scales']))} plus their mirrors and averages the probabilities;
`multi-max` feeds the same views and takes each class's best view instead (renormalised); `multi-top2` the mean of
each class's two best views (renormalised).
**Methods**: `adaptive` (AdaptiveAvgPool2d(7) + FC head), `fcn-mean` / `fcn-max` / `fcn-lse` (the class-score map
averaged, maxed, log-mean-exp'ed over positions), and `resize+crop` (shorter side to 8/7 x {results['training_size']},
centre crop {results['training_size']}, the classic baseline).

**Derived**: working ranges {ranges} (shorter sides where the head keeps >= {NATIVE_FLOOR:.0%} natively on
held-out zoom scenes, capped at {COST_CAP} px so a 12 MP photo costs at most twice a 448x448 one). Defaults, the
best mean accuracy over every zoom and canvas condition of both sources: {chosen}. Written to
`model_store/demo/demo-vgg.serving.json`, which the archive builder reads.

![accuracy and time per image versus input size](resolution-study.png)

## Top-1 accuracy (%)

{chr(10).join(t + chr(10) for t in tables)}
## Time per image (ms: JPEG decoding and resizing + forward pass, fcn head; held-out scenes)

One forward pass computes the class-score map; `mean`, `max` and `lse` aggregate that same map afterwards, so
these times hold for every fcn aggregation, and `multi`, `multi-max` and `multi-top2` (the same views combined by
their mean, maximum or two best) share theirs. A pass holds at most the served worker's per-pass pixels
(`ImageClassifier.pass_pixels`), under its allocator setting; it stacks the small views of a whole condition, more
than a worker's batch holds.

{chr(10).join(cost)}

## Reduced-size JPEG decoding

{chr(10).join(draft) or "(no condition above 2.5 MP)"}

## Reading
{reading}"""
