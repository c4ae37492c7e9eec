#!/usr/bin/env python3
"""Served throughput against the bare model and TorchServe's stock handler, a batching sweep, and where time goes.

    make benchmark                          # the whole CPU suite (about 35 minutes on 2 cores)
    python scripts/benchmark.py --parts served --match vgg16 --duration 30     # a part, without touching docs
    python scripts/benchmark.py --render docs/benchmarks.json                  # re-render docs/benchmarks.md

Every served run starts its own TorchServe on free local ports with an archive built for that configuration
(batchSize, maxBatchDelay, workers), warms it up, runs the project's Locust load test (scripts/loadtest.py) and
stops it. Its Locust report lands in loadtests/results/benchmark-<ts>/<run>/. The server's logs say where the time
went: the frontend logs each request's queue wait and the worker's time for its batch ("Waiting time ns",
"Backend time ns"), and the handler logs each batch's decode / model / encode milliseconds.

The bare model is the handler's own ImageClassifier.forward (same model, precision, normalisation) on images
decoded beforehand from the same cached files, with no server. The stock handler is TorchServe's built-in
``image_classifier`` (resize 256, centre-crop 224) serving the same VGG16 weights through a torchvision model file.
Results go to results.json; a complete suite also copies them to docs/benchmarks.json and renders
docs/benchmarks.md from them, keeping its hand-written "## Reading".
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import requests

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for path in (SCRIPTS, REPO / "handlers", REPO / "loadtests"):
    sys.path.insert(0, str(path))

import build_archive  # noqa: E402
from loadtest import machine_description, run_load_test  # noqa: E402
from torchserve_runner import TorchServe  # noqa: E402
from workloads import PROFILES, load_images  # noqa: E402

DEMO = REPO / "model_store" / "demo"
RESULTS = REPO / "loadtests" / "results"
DOC = REPO / "docs" / "benchmarks.md"
DOC_DATA = REPO / "docs" / "benchmarks.json"  # the numbers behind the doc, so it can be re-rendered from git
PARTS = ("bare", "served", "stock", "sweep")
READING_HEADING = "## Reading"
IDLE_PAUSE = 0.02  # seconds idle before each timed call of the "after idle" bare figure
SWEEP_USERS = 16  # enough closed-loop users to fill the largest batch
SWEEP_DELAYS = (5, 25, 100)  # maxBatchDelay values, milliseconds

BATCH_LINE = re.compile(r"batch of (\d+) requests: \d+ answered, \d+ refused; "
                        r"decode ([\d.]+) ms, model ([\d.]+) ms, encode ([\d.]+) ms")
JOB_LINE = re.compile(r"Waiting time ns: (\d+), Backend time ns: (\d+)")
ACCESS_LINE = re.compile(r'ACCESS_LOG - \S+ "POST /predictions/[^"]*" \d{3} (\d+)')

# The stock handler loads a model class from a file in the archive; this one is torchvision's VGG, unchanged.
STOCK_MODEL_FILE = '''"""torchvision's {arch} for TorchServe's stock image_classifier handler (benchmark comparison only)."""
import torchvision


class StockVGG(torchvision.models.VGG):
    def __init__(self):
        super().__init__(torchvision.models.get_model("{arch}", weights=None).features)
'''


@dataclass(frozen=True)
class Served:
    """One served configuration; ``handler`` is 'ours' or 'stock'."""
    model: str  # demo or vgg16
    head: str
    workload: str
    batch: int
    delay: int
    workers: int
    users: int
    handler: str = "ours"

    @property
    def name(self) -> str:
        head = "stock" if self.handler == "stock" else self.head
        return f"{self.model}-{head}-{self.workload}-b{self.batch}-d{self.delay}-w{self.workers}-u{self.users}"


# ---------------------------------------------------------------------------------------------------- weights
def weights_for(model: str, scratch: Path) -> Dict[str, str]:
    """Builder arguments for the model's weights: the shipped demo weights, or seeded random VGG16 weights saved
    once (speed does not depend on the values)."""
    if model == "demo":
        return {"arch": "demo", "weights": str(DEMO / "demo-vgg.pth"), "labels": str(DEMO / "labels.json")}
    path = scratch / f"{model}-random-seed0.pth"
    if not path.is_file():
        from weights import random_weights

        random_weights(model, 0, scratch)
    return {"arch": model, "weights": str(path), "labels": None}


# ------------------------------------------------------------------------------------------------ bare model
def seconds_per_call(function, min_seconds: float, min_calls: int = 3, pause: float = 0.0) -> float:
    """Median seconds of ``function()`` over at least ``min_calls`` calls and ``min_seconds``; ``pause`` sleeps
    before each call, as a server's forward pass follows idle time (threads asleep, caches cold)."""
    function()  # warm-up: first-call allocations and kernel selection
    times: List[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        time.sleep(pause)
        call_started = time.perf_counter()
        function()
        times.append(time.perf_counter() - call_started)
    return statistics.median(times)


def bare_model(model: str, head: str, workload: str, batches: List[int], scratch: Path, precision: str = "fp32",
               min_seconds: float = 3.0, images_per_kind: Optional[int] = None) -> dict:
    """Decode and model milliseconds per image for each request name, and images/s of the whole workload
    (uniform over request names, as the locustfile draws them) at each batch size."""
    import torch

    from classifier import ImageClassifier
    from handler_config import HandlerOptions
    from image_decoding import decode_image, normalize
    from vgg_models import load_model
    from weights import read_state_dict

    source = weights_for(model, scratch)
    options = HandlerOptions(arch=source["arch"], head=head, precision=precision)
    network = load_model(source["arch"], head, read_state_dict(Path(source["weights"])))
    classifier = ImageClassifier(network, options, [str(i) for i in range(1000)], "bare", torch.device("cpu"))
    kinds = {}
    for kind, images in load_images(workload).items():
        images = images[:images_per_kind] if images_per_kind else images
        pixels = [decode_image(body, options.max_pixels, options.min_side, options.bomb_factor) for _, body in images]
        decode_ms = 1000 * statistics.mean(
            seconds_per_call(lambda body=body: decode_image(body, options.max_pixels, options.min_side,
                                                            options.bomb_factor), 0.2, 3) for _, body in images)
        # The preprocessing inside the forward pass (uint8 HWC -> normalised float NCHW), timed on its own.
        normalize_ms = 1000 * statistics.mean(seconds_per_call(lambda p=p: normalize(p.unsqueeze(0)), 0.1, 3)
                                              for p in pixels)
        model_ms = {}
        for batch in batches:
            # A batch of one image size, as the handler forms them: each image repeated ``batch`` times.
            per_image = [seconds_per_call(lambda p=p: classifier.forward(torch.stack([p] * batch)),
                                          min_seconds / len(pixels), 2) / batch for p in pixels]
            model_ms[batch] = 1000 * statistics.mean(per_image)
        after_pause_ms = 1000 * statistics.mean(
            seconds_per_call(lambda p=p: classifier.forward(p.unsqueeze(0)), 0, 3, pause=IDLE_PAUSE)
            for p in pixels)
        kinds[kind] = {"decode_ms": decode_ms, "normalize_ms": normalize_ms, "model_ms": model_ms,
                       "model_ms_after_pause": after_pause_ms, "images": len(images)}
        print(f"[bare] {model}-{head} {kind}: decode {decode_ms:.1f} ms, normalize {normalize_ms:.2f} ms, model "
              + ", ".join(f"b{b} {ms:.1f} ms" for b, ms in model_ms.items())
              + f" per image; b1 after {IDLE_PAUSE * 1000:.0f} ms idle {after_pause_ms:.1f} ms", flush=True)
    throughput = {batch: 1000 / statistics.mean(k["model_ms"][batch] for k in kinds.values()) for batch in batches}
    return {"model": model, "head": head, "workload": workload, "precision": precision, "kinds": kinds,
            "model_images_per_s": throughput,
            "threads": torch.get_num_threads()}


def gpu_description() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"


# ---------------------------------------------------------------------------------------------------- served
def build_served_archive(config: Served, store: Path, scratch: Path) -> str:
    source = weights_for(config.model, scratch)
    serving = ["--batch-size", str(config.batch), "--max-batch-delay", str(config.delay),
               "--min-workers", str(config.workers), "--max-workers", str(config.workers)]
    if config.handler == "stock":
        return build_stock_archive(config, source, serving, store, scratch)
    args = ["--arch", source["arch"], "--head", config.head, "--weights", source["weights"], "--name", config.name,
            "--export-path", str(store), *serving]
    if source["labels"]:
        args += ["--labels", source["labels"]]
    build_archive.build(build_archive.parse_args(args))
    return config.name


def build_stock_archive(config: Served, source: Dict[str, str], serving: List[str], store: Path,
                        scratch: Path) -> str:
    import subprocess

    import yaml

    model_file = scratch / "stock_vgg.py"
    model_file.write_text(STOCK_MODEL_FILE.format(arch=source["arch"]))
    settings = dict(zip(serving[::2], serving[1::2]))
    config_file = scratch / f"{config.name}.yaml"
    config_file.write_text(yaml.safe_dump({
        "batchSize": int(settings["--batch-size"]), "maxBatchDelay": int(settings["--max-batch-delay"]),
        "minWorkers": int(settings["--min-workers"]), "maxWorkers": int(settings["--max-workers"]),
        "responseTimeout": 300}))
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", config.name,
                    "--version", "1.0", "--model-file", str(model_file), "--serialized-file", source["weights"],
                    "--handler", "image_classifier", "--config-file", str(config_file),
                    "--export-path", str(store), "--archive-format", "zip-store", "--force"], check=True)
    return config.name


def warm_up(server: TorchServe, name: str, workload: str, rounds: int) -> None:
    """Every request name once per round, so first-call costs (allocations, kernel choice) stay out of the run."""
    headers = server.headers("inference")
    for _ in range(rounds):
        for kind, images in load_images(workload).items():
            entry, body = images[0]
            answer = requests.post(f"{server.url('inference')}/predictions/{name}", data=body, timeout=600,
                                   headers={**headers, "Content-Type": entry.content_type})
            answer.raise_for_status()


def log_breakdown(model_log: str, frontend_log: str) -> dict:
    """Per-request means from the server's own logs, all over the same requests.

    The frontend logs, per request, its queue wait and the worker's time for the request's batch (RestJob), and
    its own total from arrival to response (ACCESS_LOG). The handler logs each batch's stages; a request sees its
    whole batch's stage times, so they are averaged per request (weighted by batch size), like the worker time.
    """
    jobs = [(int(w) / 1e6, int(b) / 1e6) for w, b in JOB_LINE.findall(frontend_log)]
    totals = [float(ms) for ms in ACCESS_LINE.findall(frontend_log)]
    batches = [tuple(float(v) for v in match) for match in BATCH_LINE.findall(model_log)]
    result = {"requests_logged": len(jobs), "batches_logged": len(batches)}
    if jobs:
        result["queue_wait_ms"] = statistics.mean(w for w, _ in jobs)
        result["worker_ms"] = statistics.mean(b for _, b in jobs)
    if totals:
        result["server_ms"] = statistics.mean(totals)
    if batches:
        images = sum(b[0] for b in batches)
        result["images_per_batch"] = images / len(batches)
        for index, stage in ((1, "decode"), (2, "model"), (3, "encode")):
            result[f"{stage}_ms_per_request"] = sum(b[0] * b[index] for b in batches) / images
            result[f"{stage}_ms_per_image"] = sum(b[index] for b in batches) / images
    return result


def served_run(config: Served, scratch: Path, out_dir: Path, duration: int) -> dict:
    store = scratch / "store"
    store.mkdir(exist_ok=True)
    name = build_served_archive(config, store, scratch)
    server = TorchServe(scratch / "server" / config.name, store, [f"{name}={name}.mar"], free_ports=True).start()
    try:
        server.wait_ready([name])
        warm_up(server, name, config.workload, rounds=max(2, config.workers * 2))
        model_log, frontend_log = server.workdir / "logs" / "model_log.log", server.workdir / "torchserve.out"
        offsets = [model_log.stat().st_size if model_log.exists() else 0, frontend_log.stat().st_size]
        status, table = run_load_test(
            server.url("inference"), name, config.workload, config.users, spawn_rate=config.users,
            duration=f"{duration}s", run_dir=out_dir / config.name, key_file=server.workdir / "key_file.json",
            extra={"configuration": asdict(config)})
        logs = [path.read_text(errors="replace")[offset:] if path.exists() else ""
                for path, offset in zip((model_log, frontend_log), offsets)]
    finally:
        server.stop()
    total = table.get("Aggregated", {})
    result = {"config": asdict(config), "name": config.name, "status": status, **total,
              "per_name": {k: v for k, v in table.items() if k != "Aggregated"}, **log_breakdown(*logs)}
    print(f"[served] {config.name}: {total.get('rps', 0):.2f} req/s, p50 {total.get('p50_ms', 0):.0f} ms, "
          f"p99 {total.get('p99_ms', 0):.0f} ms, failures {total.get('failures')}", flush=True)
    return result


# ------------------------------------------------------------------------------------------------------ plan
def plan(parts: List[str]) -> Dict[str, list]:
    """The CPU suite. VGG16 runs at 224x224 only: one 2048 px image takes about 16 s on this CPU."""
    runs: Dict[str, list] = {"bare": [], "served": []}
    if "bare" in parts:
        runs["bare"] += [("vgg16", "fcn", "fixed", [1, 4, 8]), ("vgg16", "adaptive", "fixed", [1, 8]),
                         ("demo", "fcn", "fixed", [1, 4, 8, 16]), ("demo", "adaptive", "fixed", [1, 8]),
                         ("demo", "fcn", "mixed", [1]), ("demo", "fcn", "formats", [1])]
    if "served" in parts:
        runs["served"] += [Served("vgg16", "fcn", "fixed", b, 5, 1, 8) for b in (1, 4, 8)]
        runs["served"] += [Served("vgg16", "adaptive", "fixed", 8, 5, 1, 8)]
        runs["served"] += [Served("demo", "fcn", "formats", 4, 5, 1, 8)]
        # One user, nothing queued: client latency minus the logged queue and worker time is the frontend's own cost.
        runs["served"] += [Served("demo", "fcn", "fixed", 1, 5, 1, 1), Served("vgg16", "fcn", "fixed", 1, 5, 1, 1)]
    if "stock" in parts:
        runs["served"] += [Served("vgg16", "adaptive", "fixed", b, 5, 1, 8, handler="stock") for b in (1, 4)]
    if "sweep" in parts:
        # maxBatchDelay means nothing at batchSize 1 (a batch of one never waits), so it is swept above that.
        runs["served"] += [Served("demo", "fcn", workload, batch, delay, workers, SWEEP_USERS)
                           for workload in ("fixed", "mixed") for workers in (1, 2) for batch in (1, 4, 8, 16)
                           for delay in ((5,) if batch == 1 else SWEEP_DELAYS)]
    return runs


# ---------------------------------------------------------------------------------------------------- report
def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def bare_share(results: dict, run: dict) -> Optional[float]:
    """The share of the run's wall time the bare model would need for the images the server answered: the sum
    over request names of (answered per second) x (bare seconds per image of that name). Served / bare throughput
    is this share; it weighs a mixed workload by what was actually answered (a closed loop answers small images
    sooner), which an average over request names would not."""
    config = run["config"]
    entry = next((e for e in results["bare"] if (e["model"], e["head"], e["workload"]) ==
                  (config["model"], config["head"], config["workload"])), None)
    if entry is None or not run.get("per_name"):
        return None
    # Locust's per-name req/s divides by the time up to that name's last request, which flatters rare, slow
    # names; the run's own duration (all requests over the aggregate rate) is the common time base.
    seconds = run["requests"] / run["rps"]
    share = 0.0
    for name, figures in run["per_name"].items():
        if name not in entry["kinds"]:
            return None
        # Same-size images stack only in "fixed", where the server may run any batch up to batchSize: take the
        # best bare rate among those; elsewhere the bare model runs batch 1.
        per_image = {int(b): ms for b, ms in entry["kinds"][name]["model_ms"].items()}
        usable = [ms for b, ms in per_image.items() if b <= (config["batch"] if config["workload"] == "fixed" else 1)]
        share += figures["requests"] / seconds * min(usable) / 1000
    return share


def served_rows(results: dict, keep) -> List[str]:
    rows = []
    for run in results["served"]:
        config = run["config"]
        if not keep(config):
            continue
        handler = "stock image_classifier" if config["handler"] == "stock" else f"ours ({config['head']})"
        share = bare_share(results, run) if config["handler"] == "ours" else None
        bare = run["rps"] / share if share else None  # the bare model's rate on the same mix of images
        rows.append(f"| {config['model']} | {handler} | {config['workload']} | {config['batch']} | {config['delay']} | "
                    f"{config['workers']} | {config['users']} | {fmt(run.get('rps'), 2)} | {fmt(run.get('p50_ms'), 0)} | "
                    f"{fmt(run.get('p95_ms'), 0)} | {fmt(run.get('p99_ms'), 0)} | {run.get('failures')} | "
                    f"{fmt(bare, 2)} | {fmt(share, 2)} |")
    return rows


SERVED_HEADER = ["| model | handler | workload | batchSize | maxBatchDelay ms | workers | users | req/s | p50 ms | "
                 "p95 ms | p99 ms | failures | bare img/s | served / bare |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def breakdown_rows(results: dict) -> List[str]:
    rows = []
    for run in results["served"]:
        if "worker_ms" not in run or "server_ms" not in run:
            continue
        config = run["config"]
        handler = "stock" if config["handler"] == "stock" else config["head"]
        logged = "decode_ms_per_request" in run
        stages = [run.get(f"{stage}_ms_per_request") for stage in ("decode", "model", "encode")]
        outside = run["worker_ms"] - sum(stages) if logged else None
        frontend = run["server_ms"] - run["queue_wait_ms"] - run["worker_ms"]
        rows.append(f"| {config['model']}-{handler} | {config['workload']} | {config['batch']}/{config['delay']}/"
                    f"{config['workers']}/{config['users']} | {fmt(run.get('images_per_batch'))} | "
                    f"{fmt(run.get('avg_ms'), 0)} | {fmt(run['server_ms'], 0)} | {fmt(run['queue_wait_ms'], 0)} | "
                    f"{fmt(run['worker_ms'], 0)} | "
                    + (" / ".join(fmt(v) for v in stages) if logged else "not logged (stock)")
                    + f" | {fmt(outside)} | {fmt(frontend)} | "
                    + (f"{fmt(run.get('model_ms_per_image'))}" if logged else "–") + " |")
    return rows


def bare_rows(results: dict) -> List[str]:
    rows = []
    for entry in results["bare"]:
        for kind, figures in sorted(entry["kinds"].items(), key=lambda item: [int(n) for n in re.findall(r"\d+", item[0])][-1]):
            model_ms = ", ".join(f"b{b}: {fmt(ms)}" for b, ms in figures["model_ms"].items())
            rows.append(f"| {entry['model']}-{entry['head']} | {kind} | {fmt(figures['decode_ms'])} | "
                        f"{fmt(figures.get('normalize_ms'), 2)} | {model_ms} | "
                        f"{fmt(figures.get('model_ms_after_pause'))} |")
    return rows


def render(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmarks: served throughput, the bare model, the stock handler and batching",
        "",
        "Generated by `scripts/benchmark.py` from one sitting; do not edit the tables by hand (the "
        f"\"{READING_HEADING[3:]}\" section at the end is hand-written and kept when the tables are regenerated).",
        "",
        f"- Machine: {meta['machine']}; torch {meta['torch']} with {meta['threads']} threads; TorchServe "
        f"{meta['torchserve']}; Locust {meta['locust']}. GPU: {meta.get('gpu', 'none')}.",
        f"- Command: `{meta['command']}` ({fmt(meta.get('minutes'), 0)} minutes, {meta['date']}); numbers in "
        "`docs/benchmarks.json`.",
        f"- Each served run: its own TorchServe, warm-up, then {meta['duration']} s ({meta['mixed_duration']} s for "
        "the `mixed` workload, whose large images take seconds each) of closed-loop Locust users (no "
        "think time) on the same machine (Locust shares the 2 cores with the server). Per-run Locust reports with "
        f"plots went to `{meta['results_dir']}/<run>/` (not committed; `docs/loadtest-example/` keeps one).",
        "- Models: `demo` is the shipped demo network (model_store/demo); `vgg16` has seeded random weights (speed "
        "does not depend on the values). fp32 throughout. Workloads: "
        + "; ".join(f"`{name}`: {text}" for name, text in PROFILES.items()) + ".",
        "- *bare img/s*: the handler's own forward pass (normalise, model, softmax) on pre-decoded images, no "
        "server, no decoding, back to back, on the same mix of images the run answered (per request name), at the "
        "best batch size the server could form (same-size images only: `fixed` up to batchSize, the others at 1). "
        "*served / bare* is the share of the run's time the bare model would have needed for the answered images.",
        "",
        "## VGG16 at 224x224 JPEG: our handler, the stock handler, the bare model",
        "",
        *SERVED_HEADER,
        *served_rows(results, lambda c: c["model"] == "vgg16"),
        "",
        "The stock handler resizes every image to 256 and centre-crops 224: at any other resolution it classifies a "
        "224x224 crop (discarding the borders of wide images and all detail of large ones), so it has no "
        "per-resolution behaviour to compare; our handler runs the network on the image at its own size.",
        "",
        "## Demo model: one user, and mixed formats",
        "",
        *SERVED_HEADER,
        *served_rows(results, lambda c: c["model"] == "demo" and c["users"] != SWEEP_USERS),
        "",
        f"## Batching sweep (demo-fcn, {SWEEP_USERS} users)",
        "",
        *SERVED_HEADER,
        *served_rows(results, lambda c: c["model"] == "demo" and c["users"] == SWEEP_USERS),
        "",
        "## Where the time goes",
        "",
        "Per-request means from the server's own logs over the measured run (all over the same requests): the "
        "frontend's total from arrival to response (its access log), split into the queue wait (until a worker "
        "takes the request's batch, maxBatchDelay included), the worker time (the batch's round trip to the Python "
        "worker) and the rest (the frontend's own work: HTTP parsing, batching, response). The worker time is split "
        "into the handler's decode / model / encode (the request's whole batch, as the request waits for all of it) "
        "and what lies outside the handler (IPC with the frontend, TorchServe's Python service). The client "
        "latency is Locust's; it differs from the server's total by the HTTP round trip and Locust's own work, and "
        "because Locust leaves out the requests cut off at the end of the run. *model ms per image* is the "
        "handler's model time divided by the images in its batches: compare it with the bare figures below.",
        "",
        "| served model | workload | batch/delay/workers/users | images per batch | client latency ms | "
        "server total ms | queue wait ms | worker ms | decode / model / encode ms | worker outside handler ms | "
        "frontend own ms | model ms per image |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        *breakdown_rows(results),
        "",
        "## Bare model and decoding per request name",
        "",
        "Milliseconds per image, one thread pool of "
        f"{meta['threads']} threads, no server: JPEG/PNG/WebP decoding into RGB pixels (the handler's "
        "`decode_image`, including the resize of images over max_pixels), the conversion to a normalised float "
        "tensor, and the whole forward pass (normalisation, network, softmax) at each batch size.",
        "",
        "| model | request name | decode ms | normalize ms (part of model) | model ms per image at batch size "
        f"(back to back) | model ms, batch 1, after {IDLE_PAUSE * 1000:.0f} ms idle |",
        "|---|---|---:|---:|---|---:|",
        *bare_rows(results),
        "",
    ]
    return "\n".join(lines)


def write_doc(results: dict) -> None:
    reading = ""
    if DOC.is_file():
        text = DOC.read_text()
        if READING_HEADING in text:
            reading = text[text.index(READING_HEADING):]
    DOC.write_text(render(results) + "\n" + (reading or f"{READING_HEADING}\n\n(to be written)\n"))
    print(f"[benchmark] wrote {DOC}", flush=True)


# ------------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per served run")
    parser.add_argument("--mixed-duration", type=int, default=30,
                        help="seconds of load per run of the mixed workload (a 2048 px image takes about 1 s)")
    parser.add_argument("--match", default="", help="only runs whose name contains this, e.g. demo-fcn-mixed")
    parser.add_argument("--render", type=Path, help="only render docs/benchmarks.md from this results.json")
    parser.add_argument("--doc", action="store_true",
                        help="write docs/benchmarks.{md,json} even from a partial run (a complete suite always does)")
    args = parser.parse_args()
    if args.render:
        write_doc(json.loads(args.render.read_text()))
        return 0

    from importlib.metadata import version  # importing locust here would monkey-patch this process with gevent

    import torch

    started = time.time()
    out_dir = RESULTS / time.strftime("benchmark-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    results = {"meta": {"machine": machine_description(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "torchserve": version("torchserve"),
                        "locust": version("locust"), "duration": args.duration,
                        "mixed_duration": args.mixed_duration, "gpu": gpu_description(),
                        "command": " ".join(["python scripts/benchmark.py", *sys.argv[1:]]),
                        "results_dir": str(out_dir.relative_to(REPO)), "date": time.strftime("%Y-%m-%d")},
               "bare": [], "served": []}
    runs = plan(args.parts)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch_name:
        scratch = Path(scratch_name)
        for model, head, workload, batches in runs["bare"]:
            if args.match not in f"{model}-{head}-{workload}":
                continue
            results["bare"].append(bare_model(model, head, workload, batches, scratch))
        for config in runs["served"]:
            if args.match not in config.name:
                continue
            try:
                duration = args.mixed_duration if config.workload == "mixed" else args.duration
                run = served_run(config, scratch, out_dir, duration)
            except Exception as error:  # one broken configuration must not lose the others' numbers
                print(f"[served] {config.name} FAILED: {error}", flush=True)
                run = {"config": asdict(config), "name": config.name, "status": 1, "error": str(error)}
            failed += run["status"] != 0
            results["served"].append(run)
            (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    results["meta"]["minutes"] = (time.time() - started) / 60
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"[benchmark] results: {out_dir / 'results.json'}", flush=True)
    complete = not args.match and set(args.parts) == set(PARTS)
    if complete or args.doc:  # a partial run would replace the published tables with a subset
        DOC_DATA.write_text(json.dumps(results, indent=1))
        write_doc(results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
