"""Served runs: an archive and a TorchServe per configuration (ours or the stock handler), Locust, the log breakdown."""

from __future__ import annotations

import re
import resource
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Dict

import requests

from anysize.stage_metrics import STAGES, batch_records

from .. import archive
from ..loadtest import run_load_test
from ..torchserve import TorchServe
from ..workloads import load_images
from .plan import WARMUP_SIZES, Served, weights_for

JOB_LINE = re.compile(r"Waiting time ns: (\d+), Backend time ns: (\d+)")
ACCESS_LINE = re.compile(r'ACCESS_LOG - \S+ "POST /predictions/[^"]*" \d{3} (\d+)')

# The stock handler loads a model class from a file in the archive; this one is torchvision's VGG, unchanged.
STOCK_MODEL_FILE = '''"""torchvision's {arch} for TorchServe's stock image_classifier handler (benchmark comparison only)."""
import torchvision


class StockVGG(torchvision.models.VGG):
    def __init__(self):
        super().__init__(torchvision.models.get_model("{arch}", weights=None).features)
'''


def archive_spec(config: Served, store: Path, scratch: Path) -> archive.ArchiveSpec:
    """Our archive for a served configuration (the bare measurement builds its HandlerOptions the same way, so it
    feeds the views the served archive feeds: the weights' serving defaults, e.g. the demo's scales and mirrors)."""
    source = weights_for(config.model, scratch)
    return archive.ArchiveSpec(
        arch=source["arch"], head=config.head, weights=source["weights"], name=config.name, export_path=store,
        labels=source["labels"] or "", batch_size=config.batch, max_batch_delay=config.delay,
        min_workers=config.workers, max_workers=config.workers, handler={
            "precision": config.precision, "warmup_sizes": WARMUP_SIZES.get(config.workload, ""),
            "buckets": config.buckets, "channels_last": config.channels_last, "compile": config.compile})


def build_served_archive(config: Served, store: Path, scratch: Path) -> str:
    if config.handler == "stock":
        source = weights_for(config.model, scratch)
        serving = {"batch_size": config.batch, "max_batch_delay": config.delay, "min_workers": config.workers,
                   "max_workers": config.workers}
        return build_stock_archive(config, source, serving, store, scratch)
    archive.build(archive_spec(config, store, scratch))
    return config.name


def build_stock_archive(config: Served, source: Dict[str, str], serving: Dict[str, int], store: Path,
                        scratch: Path) -> str:
    """TorchServe's stock image_classifier handler on torchvision's model class, packaged like ours."""
    model_file = scratch / "stock_vgg.py"
    model_file.write_text(STOCK_MODEL_FILE.format(arch=source["arch"]))
    model_config = {"batchSize": serving["batch_size"], "maxBatchDelay": serving["max_batch_delay"],
                    "minWorkers": serving["min_workers"], "maxWorkers": serving["max_workers"],
                    "responseTimeout": archive.ArchiveSpec.response_timeout}
    archive.package(config.name, Path(source["weights"]), "image_classifier", model_config, store,
                    model_file=model_file)
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
    batches = batch_records(model_log)
    result = {"requests_logged": len(jobs), "batches_logged": len(batches)}
    if jobs:
        result["queue_wait_ms"] = statistics.mean(w for w, _ in jobs)
        result["worker_ms"] = statistics.mean(b for _, b in jobs)
    if totals:
        result["server_ms"] = statistics.mean(totals)
    if batches:
        images = sum(b.requests for b in batches)
        result["images_per_batch"] = images / len(batches)
        for stage in STAGES:
            result[f"{stage}_ms_per_request"] = sum(b.requests * b.ms[stage] for b in batches) / images
        # The model's share, comparable with the bare figures: preprocessing (normalisation) and forward pass.
        result["model_ms_per_image"] = sum(b.ms["preprocess"] + b.ms["forward"] for b in batches) / images
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
        # Locust runs as child processes: their CPU time shows how much of the machine the load generator took.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        status, table = run_load_test(
            server.url("inference"), name, config.workload, config.users, spawn_rate=config.users,
            duration=f"{duration}s", run_dir=out_dir / config.name, key_file=server.workdir / "key_file.json",
            processes=config.processes, extra={"configuration": asdict(config)})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        locust_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        logs = [path.read_text(errors="replace")[offset:] if path.exists() else ""
                for path, offset in zip((model_log, frontend_log), offsets)]
    finally:
        server.stop()
    total = table.get("Aggregated", {})
    result = {"config": asdict(config), "name": config.name, "status": status, **total,
              "per_name": {k: v for k, v in table.items() if k != "Aggregated"}, **log_breakdown(*logs),
              "locust_cpu_s": locust_cpu_s, "locust_cores": locust_cpu_s / duration}
    print(f"[served] {config.name}: {total.get('rps', 0):.2f} req/s, p50 {total.get('p50_ms', 0):.0f} ms, "
          f"p99 {total.get('p99_ms', 0):.0f} ms, failures {total.get('failures')}", flush=True)
    return result
