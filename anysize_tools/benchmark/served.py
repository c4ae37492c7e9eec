"""Served runs: an archive and a TorchServe per configuration (ours or the stock handler), Locust, the log breakdown."""

from __future__ import annotations

import re
import resource
import statistics
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import requests

from anysize.stage_metrics import STAGES, batch_records

from .. import archive
from ..loadtest import run_load_test
from ..torchserve import TorchServe
from ..workloads import load_images
from .plan import IMAGES_PER_REQUEST, WARMUP_SIZES, Served, weights_for

JOB_LINE = re.compile(r"Waiting time ns: (\d+), Backend time ns: (\d+)")
# OIP v2 requests go through the same frontend code as /predictions (docs/torchserve-oip-notes.md), under their path.
ACCESS_LINE = re.compile(r'ACCESS_LOG - \S+ "POST /(?:predictions|v2/models)/[^"]*" \d{3} (\d+)')
FORM_WARMUP_S = 5  # seconds of load per request form before the forms part's first round

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


def form_args(form: str) -> Tuple[str, ...]:
    """The locustfile's options for a request form."""
    return ("--request-form", form, "--images-per-request", str(IMAGES_PER_REQUEST))


@contextmanager
def serving(config: Served, scratch: Path) -> Iterator[Tuple[TorchServe, str]]:
    """A TorchServe with the configuration's archive, ready and warmed up: (server, model name); stopped after."""
    store = scratch / "store"
    store.mkdir(exist_ok=True)
    name = build_served_archive(config, store, scratch)
    server = TorchServe(scratch / "server" / config.name, store, [f"{name}={name}.mar"], free_ports=True).start()
    try:
        server.wait_ready([name])
        warm_up(server, name, config.workload, rounds=max(2, config.workers * 2))
        yield server, name
    finally:
        server.stop()


def load_run(server: TorchServe, name: str, config: Served, out_dir: Path, duration: int) -> dict:
    """One measured Locust run of the configuration against a running server, with its log breakdown."""
    model_log, frontend_log = server.workdir / "logs" / "model_log.log", server.workdir / "torchserve.out"
    offsets = [model_log.stat().st_size if model_log.exists() else 0, frontend_log.stat().st_size]
    # Locust runs as child processes: their CPU time shows how much of the machine the load generator took.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    status, table = run_load_test(
        server.url("inference"), name, config.workload, config.users, spawn_rate=config.users,
        duration=f"{duration}s", run_dir=out_dir / config.name, key_file=server.workdir / "key_file.json",
        processes=config.processes, extra={"configuration": asdict(config)},
        locust_args=form_args(config.request_form))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    locust_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    logs = [path.read_text(errors="replace")[offset:] if path.exists() else ""
            for path, offset in zip((model_log, frontend_log), offsets)]
    total = table.get("Aggregated", {})
    result = {"config": asdict(config), "name": config.name, "status": status, **total,
              "per_name": {k: v for k, v in table.items() if k != "Aggregated"}, **log_breakdown(*logs),
              "locust_cpu_s": locust_cpu_s, "locust_cores": locust_cpu_s / duration}
    print(f"[served] {config.name}: {total.get('rps', 0):.2f} req/s, p50 {total.get('p50_ms', 0):.0f} ms, "
          f"p99 {total.get('p99_ms', 0):.0f} ms, failures {total.get('failures')}", flush=True)
    return result


def served_run(config: Served, scratch: Path, out_dir: Path, duration: int) -> dict:
    with serving(config, scratch) as (server, name):
        return load_run(server, name, config, out_dir, duration)


def failed_run(config: Served, error: Exception) -> dict:
    """The record of a run that raised: one broken configuration must not lose the others' numbers."""
    print(f"[served] {config.name} FAILED: {error}", flush=True)
    return {"config": asdict(config), "name": config.name, "status": 1, "error": str(error)}


def drain(server: TorchServe, name: str, workload: str) -> None:
    """Wait until the server has answered what the previous Locust run left behind: Locust stops its users in the
    middle of their requests and TorchServe still answers the abandoned ones, so the next run on the same server
    would start behind a full queue. A request sent now is answered after them (a model's job queue is first in,
    first out)."""
    warm_up(server, name, workload, rounds=1)


def warm_up_form(server: TorchServe, name: str, config: Served, out_dir: Path) -> None:
    """FORM_WARMUP_S seconds of load in the configuration's request form, not recorded: the first-call costs of its
    path (the frontend's v2 route, the handler's JSON and base64 code, the JVM compiling them) stay out of round 1."""
    run_load_test(server.url("inference"), name, config.workload, config.users, spawn_rate=config.users,
                  duration=f"{FORM_WARMUP_S}s", run_dir=out_dir / f"{config.name}-warmup",
                  key_file=server.workdir / "key_file.json", processes=config.processes,
                  locust_args=form_args(config.request_form))


def forms_runs(configs: List[Served], scratch: Path, out_dir: Path, duration: int) -> List[dict]:
    """The forms part: its runs in order against one TorchServe started once, so the forms compared share its
    start, warm-up and worker (a server per run would put a start's variation between them); each form is warmed
    up first, so that no form's first run bears the server's or its own path's first calls."""
    (shared,) = {replace(config, request_form="raw", round=0) for config in configs}  # only form and round differ
    runs: List[dict] = []
    try:
        with serving(shared, scratch) as (server, name):
            for form in dict.fromkeys(config.request_form for config in configs):
                drain(server, name, shared.workload)
                warm_up_form(server, name, replace(shared, request_form=form), out_dir)
            for config in configs:
                try:
                    drain(server, name, config.workload)
                    runs.append(load_run(server, name, config, out_dir, duration))
                except Exception as error:
                    runs.append(failed_run(config, error))
    except Exception as error:  # the server itself: every run it did not make fails with its error
        runs += [failed_run(config, error) for config in configs[len(runs):]]
    return runs
