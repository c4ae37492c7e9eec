#!/usr/bin/env python3
"""`make image-test`: the serving image answers exactly like the local service, and refuses requests without the key.

Needs a running Docker daemon and the image (`make image`). Starts a container with a fresh random key on a free
loopback port, waits for /ping, POSTs generated images of several sizes and formats with the key and compares every
answer with a local TorchServe serving the same demo archives (built here by the same builder with the same flags),
checks that requests without the key or with a wrong one are refused, stops the container (SIGTERM, as Kubernetes
does) and reports the image size, the time to the first answer and the time to stop, into docs/image-test.json.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from anysize_tools.archive import build, demo_spec
from anysize_tools.auth import bearer
from anysize_tools.loadtest import machine_description
from anysize_tools.paths import DOCS
from anysize_tools.shapes import render_example
from anysize_tools.torchserve import TorchServe, free_port

# The same settings as the image's own demo archives (deploy/Dockerfile's build_archive.py flags).
IMAGE_ARCHIVE = {"batch_size": 8, "max_batch_delay": 5, "handler": {"warmup_sizes": "112x112"}}
SIZES = [(112, 112), (64, 48), (224, 224), (300, 200), (200, 300), (1024, 768)]
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


def say(message: str) -> None:
    print(f"[image-test] {message}", flush=True)


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True).stdout.strip()


def images() -> list:
    out = []
    for index, (width, height) in enumerate(SIZES):
        picture, _ = render_example(7, "test", index, width, height)
        for image_format, content_type in FORMATS.items():
            buffer = io.BytesIO()
            picture.save(buffer, image_format, **({"quality": 90} if image_format == "JPEG" else {}))
            out.append((f"{width}x{height} {image_format}", buffer.getvalue(), content_type))
    return out


def local_answers(bodies: list, scratch: Path) -> dict:
    store = scratch / "store"
    for head in ("fcn", "adaptive"):
        build(demo_spec(head, store, description="shipped demo model (model_store/demo)", **IMAGE_ARCHIVE))
    server = TorchServe(scratch / "ts", store, ["demo-fcn=demo-fcn.mar", "demo-adaptive=demo-adaptive.mar"],
                        free_ports=True).start()
    try:
        server.wait_ready(["demo-fcn", "demo-adaptive"], timeout=300)
        return {(model, name): post(server.url("inference"), model, body, kind, server.headers("inference"))
                for model in ("demo-fcn", "demo-adaptive") for name, body, kind in bodies}
    finally:
        server.stop()


def post(url: str, model: str, body: bytes, content_type: str, headers: dict) -> requests.Response:
    return requests.post(f"{url}/predictions/{model}", data=body, timeout=120,
                         headers={**headers, "Content-Type": content_type})


def same(a: dict, b: dict, tolerance: float = 1e-4) -> bool:
    pa, pb = a["predictions"], b["predictions"]
    return ([p["index"] for p in pa] == [p["index"] for p in pb]
            and all(abs(x["probability"] - y["probability"]) <= tolerance for x, y in zip(pa, pb))
            and {k: v for k, v in a.items() if k != "predictions"} == {k: v for k, v in b.items() if k != "predictions"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="vgg-serve:1.0")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the container's /ping")
    parser.add_argument("--out", type=Path, default=DOCS / "image-test.json",
                        help="where the report goes (docs/deploy.md quotes it)")
    args = parser.parse_args()
    try:
        docker("info")
    except (OSError, subprocess.CalledProcessError):
        say("no Docker daemon answers (`docker info` failed); start one, then `make image && make image-test`")
        return 2
    size_bytes = int(docker("image", "inspect", "--format", "{{.Size}}", args.image))
    bodies = images()
    failures = []
    with tempfile.TemporaryDirectory(prefix="image-test-") as scratch:
        say("answers of the local service (TorchServe on this machine, the same archives)")
        expected = local_answers(bodies, Path(scratch))
    key = secrets.token_hex(32)
    port = free_port()
    name = f"vgg-serve-image-test-{port}"
    started = time.monotonic()
    # No --rm: if the container dies, its logs must still be there to say why.
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-e", f"TS_INFERENCE_KEY={key}", args.image)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            running = docker("inspect", "--format", "{{.State.Running}}", name, check=False)
            if running != "true" or time.monotonic() - started > args.timeout:
                logs = subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True)
                raise RuntimeError(f"the container never answered /ping (running: {running}):\n"
                                   + logs.stdout + logs.stderr)
            time.sleep(0.5)
        headers = bearer(key)
        first = post(url, "demo-fcn", bodies[0][1], bodies[0][2], headers)
        first_answer_s = time.monotonic() - started
        say(f"first answer {first_answer_s:.1f} s after `docker run` (status {first.status_code})")
        for model in ("demo-fcn", "demo-adaptive"):
            for image_name, body, content_type in bodies:
                answer = post(url, model, body, content_type, headers)
                local = expected[(model, image_name)]
                if answer.status_code != 200 or local.status_code != 200 or not same(answer.json(), local.json()):
                    failures.append(f"{model} {image_name}: container {answer.status_code} {answer.text[:200]} / "
                                    f"local {local.status_code} {local.text[:200]}")
        for refused_headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": key}):
            answer = post(url, "demo-fcn", bodies[0][1], bodies[0][2], refused_headers)
            if answer.status_code != 400 or "Token Authorization failed" not in answer.text:
                failures.append(f"not refused with headers {list(refused_headers)}: {answer.status_code}")
        health = docker("inspect", "--format", "{{.State.Health.Status}}", name, check=False)
    finally:
        stop_started = time.monotonic()
        docker("stop", "--time", "60", name, check=False)
        stop_s = time.monotonic() - stop_started
        exit_code = docker("inspect", "--format", "{{.State.ExitCode}}", name, check=False)
        docker("rm", "-f", name, check=False)
    if exit_code != "0":
        failures.append(f"the container exited with {exit_code} after SIGTERM (expected 0: a clean, drained stop)")
    report = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
              "docker": docker("version", "--format", "{{.Server.Version}}", check=False),
              "command": " ".join(["python deploy/check_image.py", *sys.argv[1:]]),
              "image": args.image, "image_size_gb": round(size_bytes / 1e9, 2),
              "first_answer_s": round(first_answer_s, 1), "stop_s": round(stop_s, 1),
              "exit_code_after_sigterm": exit_code, "health_status": health, "answers_compared": 2 * len(bodies),
              "failures": failures}
    print(json.dumps(report, indent=1))
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    say("PASSED" if not failures else f"FAILED: {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
