"""Deployment files without a cluster or a Docker daemon: both Kubernetes overlays render and validate against the
Kubernetes schemas (offline), with the probes, limits, GPU request and secret use the service relies on; the
Dockerfiles pass hadolint; the container entrypoint refuses to start without a usable key and writes its configs."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anysize_tools import archive as build_archive
from anysize_tools.paths import REPO

DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.31.0"
KUBECTL = shutil.which("kubectl")
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def render(overlay: str) -> list:
    out = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list, kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (it renders the kustomize overlays)")
    return request.param, render(request.param)


def test_every_object_validates_against_the_kubernetes_schemas(overlay):
    import kubernetes_validate

    name, objects = overlay
    assert {o["kind"] for o in objects} == {"Namespace", "NetworkPolicy", "Deployment", "Service",
                                           "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"vgg-serve"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any schema violation


def test_serving_pods_have_probes_limits_the_secret_and_no_root(overlay):
    name, objects = overlay
    pod = find(objects, "Deployment", "vgg-serve")["spec"]["template"]["spec"]
    serve = next(c for c in pod["containers"] if c["name"] == "serve")
    ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert serve[probe]["httpGet"] == {"path": "/ping", "port": "http"}
    assert ports == {"http": 8080, "metrics": 8082}
    for container in pod["containers"] + pod["initContainers"]:
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"} and {"cpu", "memory"} <= set(resources["limits"])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    key_volume = next(v for v in pod["volumes"] if v["name"] == "inference-key")
    assert key_volume["secret"]["secretName"] == "vgg-serve-key"
    mount = next(m for m in serve["volumeMounts"] if m["name"] == "inference-key")
    env = {e["name"]: e.get("value") for e in serve["env"]}
    assert env["TS_INFERENCE_KEY_FILE"] == f"{mount['mountPath']}/inference-key"
    assert "TS_INFERENCE_KEY" not in env  # no key in the manifests themselves
    assert pod["terminationGracePeriodSeconds"] > int(env["DRAIN_SECONDS"]) + 5  # preStop + drain fit
    assert "preStop" in serve["lifecycle"]


def test_overlays_choose_the_hardware_precision_and_autoscaling_signal(overlay):
    name, objects = overlay
    pod = find(objects, "Deployment", "vgg-serve")["spec"]["template"]["spec"]
    serve = next(c for c in pod["containers"] if c["name"] == "serve")
    flags = pod["initContainers"][0]["env"][0]["value"]
    # The flags are the builder's own: parse them exactly as the init container's command line does.
    spec = build_archive.parse_args(["--arch", "demo", "--head", "fcn", "--weights", "x", *shlex.split(flags)])
    handler = {name: spec.handler.get(name, field.default) for name, field in build_archive.HANDLER_FIELDS.items()}
    metrics = find(objects, "HorizontalPodAutoscaler", "vgg-serve")["spec"]["metrics"]
    gpus = serve["resources"]["limits"].get("nvidia.com/gpu")
    if name == "gpu":
        assert gpus == 1 and serve["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert (handler["precision"], handler["channels_last"], spec.max_workers) == ("bf16", True, 2)
        assert metrics[0]["type"] == "Pods" and "queue" in metrics[0]["pods"]["metric"]["name"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert gpus is None and handler["precision"] == "fp32" and handler["channels_last"] is True  # as demo_spec
        assert metrics[0]["resource"]["name"] == "cpu"


def test_services_and_budgets_select_the_pods_they_mean(overlay):
    _, objects = overlay
    for name in ("vgg-serve", "locust-master"):
        labels = find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        selector = find(objects, "Service", name)["spec"]["selector"]
        assert selector.items() <= labels.items()
    pdb = find(objects, "PodDisruptionBudget", "vgg-serve")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= find(objects, "Deployment", "vgg-serve")["spec"]["template"]["metadata"]["labels"].items()
    annotations = find(objects, "Deployment", "vgg-serve")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8082"


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (requirements-dev.txt brings it)")
def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted(DEPLOY.rglob("Dockerfile"))
    assert len(dockerfiles) == 2
    result = subprocess.run([HADOLINT, "--config", str(REPO / ".hadolint.yaml"), *map(str, dockerfiles)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def load_entrypoint(monkeypatch, tmp_path):
    monkeypatch.setenv("APP_DIR", str(REPO))
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MODEL_STORE", str(tmp_path / "store"))
    spec = importlib.util.spec_from_file_location("entrypoint", DEPLOY / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_container_refuses_to_start_without_a_usable_key(monkeypatch, tmp_path):
    entrypoint = load_entrypoint(monkeypatch, tmp_path)
    for env in ({}, {"TS_INFERENCE_KEY": "short"}, {"TS_INFERENCE_KEY": 'a" 1; } server { listen 9'}):
        monkeypatch.delenv("TS_INFERENCE_KEY", raising=False)
        monkeypatch.delenv("TS_INFERENCE_KEY_FILE", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as stopped:
            entrypoint.inference_key()
        assert "TS_INFERENCE_KEY" in str(stopped.value.code)
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.delenv("TS_INFERENCE_KEY")
    monkeypatch.setenv("TS_INFERENCE_KEY_FILE", str(key_file))
    assert entrypoint.inference_key() == "0123456789abcdef0123456789abcdef"


def test_the_container_configs_put_torchserve_behind_the_key_check(monkeypatch, tmp_path):
    entrypoint = load_entrypoint(monkeypatch, tmp_path)
    ts_config, nginx_config = entrypoint.write_configs("0123456789abcdef0123456789abcdef")
    properties = {}
    for line in ts_config.read_text().splitlines():  # later lines win, as in Java's Properties
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            properties[key] = value
    assert properties["inference_address"] == "http://127.0.0.1:8085"
    assert properties["management_address"].startswith("http://127.0.0.1:")
    assert properties["disable_token_authorization"] == "true"
    assert properties["model_store"] == str(tmp_path / "store") and properties["load_models"] == "all"
    assert Path(properties["metrics_config"]).is_file()
    nginx = nginx_config.read_text()
    assert '"Bearer 0123456789abcdef0123456789abcdef" 1;' in nginx and "@" not in nginx
    assert "server 127.0.0.1:8085;" in nginx and "listen 8080" in nginx
    assert oct(nginx_config.stat().st_mode & 0o777) == "0o600"


def test_every_image_the_docs_and_manifests_run_is_one_make_image_builds():
    """A command that runs vgg-serve:latest while the build tags vgg-serve:1.0 fails on a fresh machine."""
    import re

    makefile = (REPO / "Makefile").read_text()
    built = set(re.findall(r"-t ((?:vgg-serve[\w-]*):[\w.]+)", makefile))
    built |= {m for m in re.findall(r"^IMAGE \?= (\S+)", makefile, flags=re.M)}
    assert {"vgg-serve:1.0", "vgg-serve-loadgen:1.0", "vgg-serve-lb:1.0"} <= built, built
    sources = [REPO / "README.md", REPO / "deploy" / "compose.yaml", *sorted((REPO / "docs").glob("*.md")),
               *sorted((REPO / "deploy" / "k8s").rglob("*.yaml"))]
    for source in sources:
        for tag in re.findall(r"(?<![\w/.-])(vgg-serve(?:-loadgen|-lb)?:[\w.]+)(?![\w-])", source.read_text()):
            if not tag.split(":")[1].isdigit() and tag.split(":")[1] not in ("TAG",):
                assert tag in built, f"{source.relative_to(REPO)} runs {tag}, which `make image` does not build"


# Runs a script as `python script.py ARGS` would, but stops right after its arguments parse (exit 2 if they do not).
PARSE_ONLY = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    parse(self, args, namespace)
    print("PARSED")
    sys.exit(0)
argparse.ArgumentParser.parse_args = parse_then_stop
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
runpy.run_path(sys.argv[0], run_name="__main__")
"""
DOC_TEXTS = ("README.md", "loadtests/README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))


def test_every_make_target_and_python_command_the_docs_name_exists_and_parses_its_options():
    """`make X` must be a target of the Makefile; `python path.py --flags` must name a file whose argument parser
    accepts those flags (the script runs until its parse_args returns, then stops); `python -m module` imports."""
    import re
    import shlex
    import subprocess
    import sys

    makes, scripts, modules = set(), set(), set()
    for name in DOC_TEXTS:
        text = (REPO / name).read_text()
        makes |= set(re.findall(r"(?:^|`|\$ |&& )make ([a-z][a-z-]*)", text, flags=re.M))
        for match in re.finditer(r"(?:^|`)\s*(?:\.venv/bin/)?python3? ((?:scripts|loadtests|deploy)/[\w/]+\.py)"
                                 r"((?: --?[a-z][\w-]*(?:[ =](?!-)[^\s`#|&;]+)?)*)", text, flags=re.M):
            flags = match.group(2).strip()
            if "{" not in flags and not re.search(r"(?:^| )[A-Z][A-Z_]+(?: |$)", flags):  # not a usage synopsis
                scripts.add((match.group(1), flags))
        modules |= set(re.findall(r"python3? -m (anysize_tools[\w.]*)", text))
    assert {"serve", "test", "bench", "docs-check"} <= makes and scripts and modules
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    assert makes <= targets, f"the docs name make targets the Makefile lacks: {sorted(makes - targets)}"
    for script, flags in sorted(scripts):
        assert (REPO / script).is_file(), script
        run = subprocess.run([sys.executable, "-c", PARSE_ONLY, script, *shlex.split(flags)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        printed = "usage:" if {"-h", "--help"} & set(shlex.split(flags)) else "PARSED"
        assert run.returncode == 0 and printed in run.stdout, f"python {script} {flags}: {run.stderr[-800:]}"
    for module in sorted(modules):
        __import__(module)
