"""The load-test tooling for real: workload images, a ~10 s Locust smoke run against a real TorchServe (single
process and distributed), the report it writes, failures turning into a non-zero exit, and the benchmark's parts
(log parsing against the handler's real log lines, the bare-model baseline, the stock handler's model file).
No timing is asserted anywhere; only that requests were made, answered and reported.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from anysize_tools import benchmark
from anysize_tools.auth import read_keys
from anysize_tools.paths import REPO
from anysize_tools.workloads import CONTENT_TYPES, PROFILES, ensure_images, profile_kinds

LOADTEST = REPO / "loadtests" / "loadtest.py"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_workload_images_are_what_the_manifest_says(profile, tmp_path):
    directory, entries = ensure_images(profile, tmp_path)
    kinds = {kind.name: kind for kind in profile_kinds(profile)}
    assert {entry.kind for entry in entries} == set(kinds)
    for entry in entries:
        image = Image.open(io.BytesIO((directory / entry.path).read_bytes()))
        assert image.size == (entry.width, entry.height)
        assert Image.MIME[image.format] == CONTENT_TYPES[entry.format] == entry.content_type
        assert max(image.size) == kinds[entry.kind].long_side
    if profile == "mixed":  # realistic shapes: landscape, portrait and square in every resolution class
        for name in kinds:
            shapes = {(e.width > e.height) - (e.width < e.height) for e in entries if e.kind == name}
            assert shapes == {-1, 0, 1}
    stamp = (directory / "manifest.json").stat().st_mtime_ns
    assert ensure_images(profile, tmp_path)[1] == entries  # generated once, then only read
    assert (directory / "manifest.json").stat().st_mtime_ns == stamp


def run_loadtest(server, tmp_path, *extra, model="demo-fcn", duration="10s"):
    output = tmp_path / "report"
    command = [sys.executable, str(LOADTEST), "--host", server.url("inference"), "--key-file",
               str(server.workdir / "key_file.json"), "--model", model, "--users", "3", "--spawn-rate", "3",
               "--duration", duration, "--output", str(output), *extra]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    return finished, output


def stats_rows(output: Path):
    with open(output / "locust_stats.csv", newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def assert_complete_report(output: Path, workload: str):
    rows = stats_rows(output)
    total = rows.pop("Aggregated")
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0
    assert set(rows) <= {kind.name for kind in profile_kinds(workload)}  # one request name per resolution class
    for name in ("report.html", "locust_stats_history.csv", "over_time.png", "per_resolution.png", "run.json"):
        assert (output / name).stat().st_size > 0, name
    summary = (output / "summary.md").read_text()
    assert f"| **all** | {total['Request Count']} | 0 |" in summary
    assert all(f"| {name} |" in summary for name in rows)
    return rows


@pytest.mark.integration
def test_smoke_load_test_records_no_failures_and_writes_the_report(demo_server, tmp_path):
    model_log = demo_server.workdir / "logs" / "model_log.log"
    offset = model_log.stat().st_size
    finished, output = run_loadtest(demo_server, tmp_path, "--workload", "mixed")
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = assert_complete_report(output, "mixed")
    assert len(rows) >= 3  # several resolution classes were exercised in 10 s
    assert json.loads((output / "run.json").read_text())["model"] == "demo-fcn"

    # The benchmark's parser reads the handler's and the frontend's real log lines: every answered request is in
    # a logged batch (the frontend copies worker output to the log asynchronously, so give it a moment).
    answered = int(stats_rows(output)["Aggregated"]["Request Count"])
    for _ in range(20):
        logged = benchmark.log_breakdown(model_log.read_text(errors="replace")[offset:],
                                         (demo_server.workdir / "torchserve.out").read_text(errors="replace"))
        if logged["batches_logged"] and logged["images_per_batch"] * logged["batches_logged"] >= answered:
            break
        time.sleep(0.5)
    assert logged["images_per_batch"] * logged["batches_logged"] >= answered > 0
    assert logged["forward_ms_per_request"] > 0 and logged["decode_ms_per_request"] > 0
    assert logged["requests_logged"] >= answered and logged["server_ms"] > 0 and logged["worker_ms"] > 0


@pytest.mark.integration
def test_distributed_load_test_runs_from_one_command(demo_server, tmp_path):
    finished, output = run_loadtest(demo_server, tmp_path, "--workload", "formats", "--processes", "2",
                                    duration="6s")
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert_complete_report(output, "formats")
    assert "2 workers connected" in (output / "locust.log").read_text()  # Locust really ran master + 2 workers


@pytest.mark.integration
@pytest.mark.parametrize("form, per_request", [("oip-json", 1), ("oip-binary", 2), ("instances", 2)])
def test_load_test_profiles_for_oip_and_several_images_per_request(demo_server, tmp_path, form, per_request):
    finished, output = run_loadtest(demo_server, tmp_path, "--workload", "fixed", "--request-form", form,
                                    "--images-per-request", str(per_request), duration="8s")
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert_complete_report(output, "fixed")
    run = json.loads((output / "run.json").read_text())
    assert (run["request_form"], run["images_per_request"]) == (form, per_request)


@pytest.mark.integration
def test_failed_requests_make_the_run_fail_and_are_reported(demo_server, tmp_path):
    finished, output = run_loadtest(demo_server, tmp_path, "--workload", "fixed", model="no-such-model",
                                    duration="3s")
    assert finished.returncode != 0
    rows = stats_rows(output)
    assert int(rows["Aggregated"]["Failure Count"]) == int(rows["Aggregated"]["Request Count"]) > 0
    assert "HTTP 404" in (output / "summary.md").read_text()


@pytest.mark.integration
def test_a_wrong_key_is_refused_and_fails_the_run(demo_server, tmp_path):
    key_file = tmp_path / "key_file.json"
    keys = json.loads((demo_server.workdir / "key_file.json").read_text())
    keys["inference"]["key"] = "wrong-key"
    key_file.write_text(json.dumps(keys))
    assert read_keys(key_file)["inference"] == "wrong-key"
    finished, _ = run_loadtest(demo_server, tmp_path, "--key-file", str(key_file), duration="3s")
    assert finished.returncode == 2 and "no TorchServe answers" in finished.stderr  # refused before any load


def test_no_server_means_a_clear_error_and_no_run(tmp_path):
    finished = subprocess.run([sys.executable, str(LOADTEST), "--host", "http://127.0.0.1:9", "--duration", "2s",
                               "--output", str(tmp_path / "never")], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2 and "make serve" in finished.stderr
    assert not (tmp_path / "never").exists()


def test_bare_baseline_runs_the_handlers_forward_pass(tmp_path):
    result = benchmark.bare_model("demo", "fcn", "fixed", [1, 2], tmp_path, min_seconds=0.1, images_per_kind=2)
    figures = result["kinds"]["jpeg 224x224"]
    assert figures["images"] == 2 and figures["decode_ms"] > 0
    assert set(figures["model_ms"]) == {1, 2} and all(ms > 0 for ms in figures["model_ms"].values())
    assert set(result["model_images_per_s"]) == {1, 2}


def test_log_breakdown_weights_batch_stages_per_request():
    frontend = ("2026-11-29T04:35:35,251 [DEBUG] W-9001-demo-fcn_1.0 org.pytorch.serve.job.RestJob - "
                "Waiting time ns: 3000000, Backend time ns: 20000000\n"
                '2026-11-29T04:35:35,251 [INFO ] W-9001-demo-fcn_1.0 ACCESS_LOG - /127.0.0.1:60914 '
                '"POST /predictions/demo-fcn HTTP/1.1" 200 25\n') * 2
    handler = ("MODEL_LOG - batch of 3 requests: 3 answered, 0 refused; decode 3.0 ms, preprocess 2.0 ms, forward "
               "28.0 ms, postprocess 0.3 ms\n"
               "MODEL_LOG - batch of 1 requests: 1 answered, 0 refused; decode 1.0 ms, preprocess 1.0 ms, forward 9.0 ms, "
               "postprocess 0.1 ms\n")
    logged = benchmark.log_breakdown(handler, frontend)
    assert (logged["requests_logged"], logged["queue_wait_ms"], logged["worker_ms"], logged["server_ms"]) == \
        (2, 3.0, 20.0, 25.0)
    assert logged["images_per_batch"] == 2.0
    assert logged["forward_ms_per_request"] == pytest.approx((3 * 28 + 9) / 4)  # three requests saw the 28 ms batch
    assert logged["preprocess_ms_per_request"] == pytest.approx((3 * 2 + 1) / 4)
    assert logged["model_ms_per_image"] == pytest.approx(40 / 4)  # preprocess + forward over the 4 images


def test_stock_model_file_is_torchvisions_vgg(tmp_path):
    """The stock-handler comparison serves the same weights: torchvision's state dict loads into its model file."""
    from torchvision.models import vgg11

    namespace = {}
    exec(benchmark.STOCK_MODEL_FILE.format(arch="vgg11"), namespace)
    reference = vgg11(weights=None).eval()
    stock = namespace["StockVGG"]().eval()
    stock.load_state_dict(reference.state_dict())
    pixels = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(stock(pixels), reference(pixels))
