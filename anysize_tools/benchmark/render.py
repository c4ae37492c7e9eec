"""The Markdown rendering: docs/benchmarks.md and docs/batching-sweep.md from a results.json, and their rows."""

from __future__ import annotations

import re
import statistics
from typing import List

from anysize.stage_metrics import STAGES

from ..paths import DOCS, REPO
from ..workloads import PROFILES
from .plan import IDLE_PAUSE, MIXED_BUCKETS, MIXED_USERS, SWEEP_USERS, variant
from .targets import bare_share, best_run, fmt, form_costs, form_targets, like_with_like, targets

DOC = DOCS / "benchmarks.md"
SWEEP_DOC = DOCS / "batching-sweep.md"
READING_HEADING = "## Reading"
# What each request form of the forms part sends (the locustfile's --request-form; handlers/anysize/request_formats.py)
FORM_TEXT = {"raw": "the JPEG as the body of `POST /predictions/{model}`",
             "oip-json": "Open Inference Protocol v2 on `/v2/models/{model}/infer`, the JPEG base64 in the JSON input's "
                         "`data`",
             "oip-binary": "the same protocol with its binary data extension: a JSON header "
                           "(`Inference-Header-Content-Length`), then the JPEG's length and bytes",
             "instances": '`{"instances": [{"b64": ...}]}` on `/predictions/{model}`'}


# ---------------------------------------------------------------------------------------------------- rows
def served_rows(results: dict, keep) -> List[str]:
    rows = []
    for run in results["served"]:
        config = run["config"]
        if not keep(config):
            continue
        handler = "stock image_classifier" if config["handler"] == "stock" else f"ours ({config['head']})"
        if config.get("round"):
            handler += f", round {config['round']}"
        share, model_share = bare_share(results, run), bare_share(results, run, decoding=False)
        bare = run["rps"] / share if share else None  # the bare handler's rate on the same mix of images
        rows.append(f"| {config['model']} | {handler} | {variant(config)} | {config['workload']} | {config['batch']} | "
                    f"{config['delay']} | {config['workers']} | {config['users']} | {fmt(run.get('rps'), 2)} | "
                    f"{fmt(run.get('p50_ms'), 0)} | {fmt(run.get('p95_ms'), 0)} | {fmt(run.get('p99_ms'), 0)} | "
                    f"{run.get('failures')} | {fmt(bare, 2)} | {fmt(share, 2)} | {fmt(model_share, 2)} |")
    return rows


SERVED_HEADER = ["| model | handler | precision | workload | batchSize | maxBatchDelay ms | workers | users | req/s | "
                 "p50 ms | p95 ms | p99 ms | failures | bare img/s | served / bare | served / bare model |",
                 "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def stage_names(run: dict) -> List[str]:
    """The handler stages a run logged: four since the fast path, three (decode/model/encode) before it."""
    return [stage for stage in (*STAGES, "model", "encode") if f"{stage}_ms_per_request" in run]


def breakdown_rows(results: dict) -> List[str]:
    rows = []
    for run in results["served"]:
        if "worker_ms" not in run or "server_ms" not in run:
            continue
        config = run["config"]
        handler = "stock" if config["handler"] == "stock" else config["head"]
        if config.get("round"):
            handler += f" r{config['round']}"
        stages = [run[f"{stage}_ms_per_request"] for stage in stage_names(run)]
        outside = run["worker_ms"] - sum(stages) if stages else None
        frontend = run["server_ms"] - run["queue_wait_ms"] - run["worker_ms"]
        rows.append(f"| {config['model']}-{handler} {variant(config)} | {config['workload']} | {config['batch']}/"
                    f"{config['delay']}/{config['workers']}/{config['users']} | {fmt(run.get('images_per_batch'))} | "
                    f"{fmt(run.get('avg_ms'), 0)} | {fmt(run['server_ms'], 0)} | {fmt(run['queue_wait_ms'], 0)} | "
                    f"{fmt(run['worker_ms'], 0)} | "
                    + (" / ".join(fmt(v) for v in stages) if stages else "not logged (stock)")
                    + f" | {fmt(outside)} | {fmt(frontend)} | {fmt(run.get('model_ms_per_image'))} | "
                    f"{fmt(run.get('locust_cores'), 2)} |")
    return rows


def bare_rows(results: dict) -> List[str]:
    rows = []
    for entry in results["bare"]:
        for kind, figures in sorted(entry["kinds"].items(),
                                    key=lambda item: [int(n) for n in re.findall(r"\d+", item[0])][-1]):
            model_ms = ", ".join(f"b{b}: {fmt(ms)}" for b, ms in figures["model_ms"].items())
            if "model_ms_repeated" in figures:
                model_ms += f" (b1 in turn; repeated: {fmt(figures['model_ms_repeated'])})"
            label = variant(entry) + (f", round {entry['round']}" if entry.get("round") else "")
            rows.append(f"| {entry['model']}-{entry['head']} | {label} | {kind} | {fmt(figures['decode_ms'])} | "
                        f"{fmt(figures.get('normalize_ms'), 2)} | {model_ms} | "
                        f"{fmt(figures.get('model_ms_after_pause'))} |")
    return rows


def like_rows(results: dict) -> List[str]:
    def figures(values, digits):
        return " / ".join(fmt(v, digits) for v in values)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    return [f"| ours ({row['config']['head']}) {variant(row['config'])} | {figures(row['rps'], 2)} | "
            f"{fmt(row['median'], 2)} | {figures(row['stock_rps'], 2)} | {fmt(row['stock_median'], 2)} | "
            f"{fmt(row['ratio'], 2)} | {fmt(median(row['worker_ms']), 1)} | {fmt(median(row['stock_worker_ms']), 1)} | "
            f"{fmt(median(row['forward_ms']), 1)} |" for row in like_with_like(results)]


MARKS = {True: "met", False: "**not met**", None: "–"}


def target_rows(results: dict) -> List[str]:
    return [f"| {row['machine']} | {row['target']} | {row['measured']} | {MARKS[row['met']]} |"
            for row in targets(results)]


def form_rows(results: dict) -> List[str]:
    met = {row["name"]: MARKS[row["met"]] for row in form_targets(results)}
    return [f"| {row['form']} | {' / '.join(fmt(v, 2) for v in row['rps'])} | {fmt(row['median'], 2)} | "
            f"{fmt(row['ratio'], 3)} | {fmt(row['p50_ms'], 0)} | {fmt(row['p95_ms'], 0)} | {row['failures']} | "
            f"{met.get(row['form'], 'the baseline')} |" for row in form_costs(results)]


def forms_section(results: dict) -> List[str]:
    """The forms part, measured in its own sitting (`--parts forms`, usually merged into the published results)."""
    forms = results.get("forms")
    if not forms or not forms["runs"]:
        return []
    meta, config = forms["meta"], forms["runs"][0]["config"]
    return [
        "## Request forms: raw body, Open Inference Protocol v2, instances",
        "",
        f"Measured by `{meta['command']}` on {meta['machine']} ({meta['date']}; GPU: {meta['gpu']}; torch "
        f"{meta['torch']} with {meta['threads']} threads; TorchServe {meta['torchserve']}; Locust {meta['locust']}): "
        f"{config['model']}-{config['head']} {variant(config)} on the `{config['workload']}` 224x224 JPEGs with the "
        f"settings of the comparison with the stock handler (batchSize {config['batch']}, maxBatchDelay "
        f"{config['delay']} ms, minWorkers = maxWorkers = {config['workers']}, {config['users']} closed-loop users), "
        f"images per request: {meta['images_per_request']}, sent as:",
        "",
        *(f"- `{form}`: {text}" for form, text in FORM_TEXT.items()),
        "",
        "One TorchServe, started once, warmed up in every form; then the forms in turn, round after round "
        f"({meta['duration']} s of load per run), so a drift of the machine's speed reaches every form alike. "
        "*ratio to raw* is the form's median req/s over raw's, the target's cost 1 - ratio; p50 and p95 are medians "
        "over the rounds. Locust runs on the same machine and builds every request's body itself, so a form's "
        "encoding on the client (base64, JSON) takes CPU from the server too.",
        "",
        "| form | req/s per round | median req/s | ratio to raw | p50 ms | p95 ms | failures | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *form_rows(results),
        "",
    ]


def decode_rows(results: dict) -> List[str]:
    used = {"jpeg": "torchvision (plain JPEGs)", "png": "Pillow", "webp": "Pillow"}
    return [f"| {row['image']} | {fmt(row['pillow_ms'], 2)} | {fmt(row['torchvision_ms'], 2)} | "
            f"{fmt(row['pillow_ms'] / row['torchvision_ms'], 2)} | {used[row['image'].split()[0]]} |"
            for row in results.get("decode", [])]


def answers_device(results: dict) -> str:
    """Where the answer tables were measured; sittings before the device was recorded ran them on the CPU."""
    rows = results.get("answers", {}).get("precision", [])
    return "GPU" if rows and rows[0].get("device") == "cuda" else "CPU"


def precision_rows(results: dict) -> List[str]:
    return [f"| demo-{row['head']} | {row['precision']}{' + channels_last' if row['channels_last'] else ''} | "
            f"{row['images']} | {100 * row['top1_agreement']:.2f} % | {row['max_probability_difference']:.1e} | "
            f"{100 * row['accuracy']:.1f} % (fp32 {100 * row['fp32_accuracy']:.1f} %) |"
            for row in results.get("answers", {}).get("precision", [])]


def decoder_rows(results: dict) -> List[str]:
    return [f"| demo-{row['head']} | {row['device']} | {row['decoder']} | {row['images']} | "
            f"{row['images_with_other_pixels']} (at most {row['max_pixel_difference']} levels) | "
            f"{100 * row['top1_agreement']:.2f} % | {row['max_probability_difference']:.1e} | "
            f"{100 * row['accuracy']:.1f} % (Pillow {100 * row['pillow_accuracy']:.1f} %) |"
            for row in results.get("answers", {}).get("decoder", [])]


def bucket_rows(results: dict) -> List[str]:
    return [f"| demo-{row['head']} | {row['images']} | {row['distinct_sizes']} -> {row['bucketed_sizes']} | "
            f"{100 * row['exact_accuracy']:.1f} % | {100 * row['bucketed_accuracy']:.1f} % | "
            f"{100 * row['top1_agreement']:.1f} % |" for row in results.get("answers", {}).get("buckets", [])]


def bucket_speed(results: dict) -> str:
    exact = best_run(results, lambda c: (c["model"], c["head"], c["workload"], variant(c)) == ("demo", "fcn", "mixed", "fp32+cl"))
    bucketed = best_run(results, lambda c: c["workload"] == "mixed" and bool(c.get("buckets")))
    if not (exact and bucketed):
        return ""
    return (f"Served on the `mixed` workload (demo-fcn, fp32+cl, batchSize 4, {MIXED_USERS} users), buckets answered "
            f"{bucketed['rps']:.2f} req/s against {exact['rps']:.2f} with exact sizes "
            f"({bucketed['rps'] / exact['rps']:.2f}x), with {fmt(bucketed.get('images_per_batch'))} images per "
            f"batch against {fmt(exact.get('images_per_batch'))}. The buckets were {len(MIXED_BUCKETS.split(','))} "
            f"sizes: {MIXED_BUCKETS.replace(',', ', ')}. Buckets change both how many images share a forward pass "
            "and how many pixels each image has (a 16:9 image goes to the 3:2 bucket of its long side, 19 % more "
            "pixels; a 4:3 one to the same bucket, 11 % fewer), so the ratio is not batching alone.")


# ---------------------------------------------------------------------------------------------------- render
def render(results: dict) -> str:
    meta = results["meta"]
    gpu = not meta.get("gpu", "none").startswith("none")
    lines = [
        "# Benchmarks: the fast path against the bare model and TorchServe's stock handler",
        "",
        "Generated by `loadtests/benchmark.py` (`make bench`) from one sitting; do not edit the tables by hand (the "
        f"\"{READING_HEADING[3:]}\" section at the end is hand-written and kept when the tables are regenerated).",
        "",
        f"- Machine: {meta['machine']}; GPU: {meta.get('gpu', 'none')}; torch {meta['torch']} with "
        f"{meta['threads']} threads; TorchServe {meta['torchserve']}; Locust {meta['locust']}.",
        f"- Command: `{meta['command']}` ({fmt(meta.get('minutes'), 0)} minutes, {meta['date']}); numbers in "
        "`docs/benchmarks.json`.",
        *(f"- Re-measured since: {', '.join(again['parts'])} by `{again['command']}` ({again['date']}, "
          f"{again['machine']})." for again in meta.get("remeasured", [])),
        f"- Each served run: its own TorchServe, warm-up, then {meta['duration']} s ({meta['mixed_duration']} s for "
        "the `mixed` workload, whose large images take seconds each on a CPU) of closed-loop Locust users (no "
        "think time) on the same machine; the *Locust cores* column in the breakdown says how much CPU the load "
        "generator took (its CPU seconds over the run's seconds). Per-run Locust reports with plots went to "
        f"`{meta['results_dir']}/<run>/` (not committed; `docs/loadtest-example/` keeps one).",
        "- Models: `demo` is the shipped demo network (model_store/demo); `vgg16` has seeded random weights (speed "
        "does not depend on the values). Precision `fp32` is exact; `fp32+cl` is fp32 with the trunk in "
        "channels_last memory format (`--channels-last`; the same answers to 1e-6, the demo archives' shipped "
        "setting); `bf16+cl` is bfloat16 autocast with channels_last (opt-in per archive: `--precision bf16 "
        "--channels-last`). The demo archives feed each image as their defaults say (four scales and their "
        "mirrors: eight views); vgg16 with random weights declares no working scale, so it runs each image once at "
        "its own size. Workloads: "
        + "; ".join(f"`{name}`: {text}" for name, text in PROFILES.items()) + ".",
        "- *bare img/s*: the handler's own work per image in one process, no server: its decoding (Pillow or "
        "torchvision as the handler chooses, every view the archive feeds) plus its forward pass (normalise, model) "
        "with the served archive's own options (precision, memory format, compilation, same-size views in one pass, "
        "passes split as the handler splits them), back to back, on the same mix of images the run answered (per "
        "request name), at the best batch size the server could form (same-size images only: `fixed` and `1080p` "
        "up to batchSize, the others at 1), measured just before the first served run it divides"
        + (" (for runs in rounds, just before each round's: the bare table marks the round)"
           if any(entry.get("round") for entry in results["bare"]) else "")
        + ("; on workloads of mixed sizes the batch-1 figure is timed with the images in turn, as a worker meets "
           "them, not each repeated back to back (the bare table shows both)"
           if any(entry.get("in_turn") for entry in results["bare"]) else "") + ". *served / bare* "
        "is the share of the run's time the bare handler would have needed for the answered images: what the "
        "server (frontend, queue, IPC, batching) costs. *served / bare model* leaves decoding out of the bare work: "
        "the model's own ceiling, which matters where decoding a picture's views is a large share of the work (the "
        "demo model's eight views).",
        "",
        "## Targets",
        "",
        "| machine | target | measured | |",
        "|---|---|---|---|",
        *target_rows(results),
        "",
        "## VGG16 at 224x224 JPEG: our handler, the stock handler, the bare model",
        "",
        *SERVED_HEADER,
        *served_rows(results, lambda c: c["model"] == "vgg16" and c["workload"] == "fixed"),
        "",
        "The stock handler resizes every image to 256 and centre-crops 224 and runs fp32: at any other resolution "
        "it classifies a 224x224 crop, so it has no per-resolution behaviour to compare; our handler runs the "
        "network on the image at its own size.",
        "",
    ]
    like = like_rows(results)
    if like:
        lines += [
            "## Like with like: our handler and the stock handler at fp32",
            "",
            "The same 224x224 JPEGs, weights, batchSize, workers and users; the runs interleaved (ours NCHW and "
            "channels_last for both heads, then the stock handler, round after round), so a drift of the machine's "
            "speed reaches both alike. *worker ms* is the frontend's time per request for the batch's round trip to "
            "the worker (median over rounds); *forward ms* the handler's forward stage inside it (the stock handler "
            "does not log its stages).",
            "",
            "| ours | req/s per round | median | stock req/s per round | stock median | ours / stock | worker ms | "
            "stock worker ms | forward ms |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|",
            *like,
            "",
        ]
    lines += forms_section(results)
    if gpu:
        lines += ["## VGG16 at 1920x1080 JPEG", "", *SERVED_HEADER,
                  *served_rows(results, lambda c: c["workload"] == "1080p"), ""]
    lines += [
        "## Mixed sizes (demo model): exact sizes and size buckets",
        "",
        *SERVED_HEADER,
        *served_rows(results, lambda c: c["workload"] == "mixed" and not is_sweep(c)),
        "",
        bucket_speed(results),
        "",
        "## What the options do to answers",
        "",
        "Reduced precision against fp32 on the same held-out test scenes of the demo model (one in seven at its "
        "training size 112x112, the rest at long side 160 in six aspect ratios), through the handler's own forward "
        f"pass (`anysize_tools/answer_effects.py`), on the {answers_device(results)}. tf32 changes nothing on a CPU (it is a GPU mode for convolutions and matmuls; fp32 turns it off); on an NVIDIA GPU it does.",
        "",
        "| model | option | images | top-1 agreement with fp32 | largest probability difference | top-1 accuracy |",
        "|---|---|---:|---:|---:|---|",
        *precision_rows(results),
        "",
        "The JPEG decoder the handler uses for plain JPEGs on the benchmark's device against Pillow's pixels, the "
        "same held-out scenes saved as JPEG (quality 90) and fed at their own size, classified by the fp32 model on "
        "that device (`answer_effects.py --parts decoder`). On a CPU it is libjpeg-turbo through torchvision, "
        "expected identical; on a GPU nvJPEG, which is not bit-identical to Pillow.",
        "",
        "| model | device | decoder | images | images with other pixels | top-1 agreement with Pillow | largest probability difference | top-1 accuracy |",
        "|---|---|---|---:|---|---:|---:|---|",
        *(decoder_rows(results) or ["| – | – | not measured in this sitting | – | – | – | – | – |"]),
        "",
        "Size buckets against exact sizes on held-out scenes at long sides 84-168 px in seven aspect ratios (around "
        "the training size, where the demo model is accurate, so a cost can show), buckets a square, a 3:2 and a "
        "2:3 size per long side:",
        "",
        "| model | images | distinct sizes -> after bucketing | accuracy, exact | accuracy, buckets | top-1 agreement |",
        "|---|---:|---|---:|---:|---:|",
        *bucket_rows(results),
        "",
        "## Decoding: Pillow against torchvision.io",
        "",
        "Milliseconds per image on one thread, first image of each request name, to RGB pixels. The handler "
        "decodes plain JPEGs (8-bit RGB or grey, upright, no resize needed) with torchvision, everything else with "
        "Pillow (docs/design.md says why PNG and WebP stay with Pillow).",
        "",
        "| image | Pillow ms | torchvision ms | speed-up | handler uses |",
        "|---|---:|---:|---:|---|",
        *decode_rows(results),
        "",
        "## Demo model: one user, and mixed formats",
        "",
        *SERVED_HEADER,
        *served_rows(results, lambda c: c["model"] == "demo" and c["workload"] in ("fixed", "formats")
                     and not is_sweep(c)),
        "",
        "## Where the time goes",
        "",
        "Per-request means from the server's own logs over the measured run (all over the same requests): the "
        "frontend's total from arrival to response (its access log), split into the queue wait (until a worker "
        "takes the request's batch, maxBatchDelay included), the worker time (the batch's round trip to the Python "
        "worker) and the rest (the frontend's own work: HTTP parsing, batching, response). The worker time is split "
        "into the handler's stages, decode / preprocess (stacking, transfer, normalisation) / forward / postprocess "
        "(the request's whole batch, as the request waits for all of it; the same numbers go to Prometheus as "
        "`Stage*Ms` counters), and what lies outside the handler (IPC with the frontend, TorchServe's Python "
        "service). The client latency is Locust's. *model ms per image* is preprocess + forward divided by the "
        "images in the batches: compare it with the bare figures below.",
        "",
        "| served model | workload | batch/delay/workers/users | images per batch | client latency ms | "
        "server total ms | queue wait ms | worker ms | handler stages ms | worker outside handler ms | "
        "frontend own ms | model ms per image | Locust cores |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        *breakdown_rows(results),
        "",
        "## Bare model and decoding per request name",
        "",
        f"Milliseconds per image, {meta['threads']} threads, no server: decoding into RGB pixels (the handler's "
        "`decode_image`, including the resize of images over max_pixels), the conversion to a normalised float "
        "tensor, and the whole forward pass (normalisation, network, softmax) at each batch size.",
        "",
        "| model | precision | request name | decode ms | normalize ms (part of model) | model ms per image at batch "
        f"size (back to back) | model ms, batch 1, after {IDLE_PAUSE * 1000:.0f} ms idle |",
        "|---|---|---|---:|---:|---|---:|",
        *bare_rows(results),
        "",
    ]
    if not any(is_sweep(run["config"]) for run in results["served"]):
        lines += [f"`make bench-sweep` writes the batching sweep to `{SWEEP_DOC.relative_to(REPO)}` and its data to "
                  f"`{SWEEP_DOC.with_suffix('.json').relative_to(REPO)}`.", ""]
    return "\n".join(lines)


def is_sweep(config: dict) -> bool:
    return config["model"] == "demo" and config["users"] == SWEEP_USERS


def render_sweep(results: dict) -> str:
    meta = results["meta"]
    return "\n".join([
        f"# Batching sweep (demo-fcn, {SWEEP_USERS} users)",
        "",
        f"Generated by `{meta['command']}` (`make bench-sweep`) on {meta['machine']} ({meta['date']}, torch "
        f"{meta['torch']}, TorchServe {meta['torchserve']}, Locust {meta['locust']}; {meta['duration']} s of load per "
        f"fixed-size run, {meta['mixed_duration']} s per mixed run) and rendered from `docs/batching-sweep.json` "
        "(`python loadtests/benchmark.py --render docs/batching-sweep.json`); batchSize x maxBatchDelay x workers on "
        "the `fixed` and `mixed` workloads, fp32. docs/benchmarks.md explains the columns.",
        "",
        *SERVED_HEADER,
        *served_rows(results, is_sweep),
        "",
    ])


def write_doc(results: dict) -> None:
    if any(is_sweep(run["config"]) for run in results["served"]):
        SWEEP_DOC.write_text(render_sweep(results))
        print(f"[benchmark] wrote {SWEEP_DOC}", flush=True)
    if not results.get("answers") and all(is_sweep(run["config"]) for run in results["served"]):
        return  # a sweep on its own leaves the main tables alone
    DOC.write_text(benchmarks_page(results, DOC.read_text() if DOC.is_file() else ""))
    print(f"[benchmark] wrote {DOC}", flush=True)


def benchmarks_page(results: dict, old_page: str) -> str:
    """docs/benchmarks.md: the tables rendered from ``results``, then the hand-written reading kept from
    ``old_page`` (what `make docs-check` compares with the committed page)."""
    reading = old_page[old_page.index(READING_HEADING):] if READING_HEADING in old_page else ""
    return render(results) + "\n" + (reading or f"{READING_HEADING}\n\n(to be written)\n")
