"""TorchServe handler for size-agnostic VGG classifiers: the TorchServe plumbing around ``ImageClassifier``.

``initialize`` reads the archive once (model-config.yaml, labels, weights), picks the device and warms the model
up; ``handle`` turns TorchServe's batch into request bodies, runs decode -> group -> infer -> encode, sets each
request's own HTTP status so one bad image never fails the rest of its batch, and exports the batch's stage times
as TorchServe metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, List, Union

import torch

from .classifier import ImageClassifier
from .cpu_memory import keep_freed_buffers
from .handler_config import HandlerOptions
from .request_errors import RequestError, empty_body, not_an_image
from .request_options import RequestOptions, parse_options
from .stage_metrics import batch_line, emit
from .vgg_models import load_model
from .weights import read_state_dict

logger = logging.getLogger(__name__)

# Multipart field names that carry the image, in order of preference; a raw body arrives as "body".
BODY_FIELDS = ("data", "file", "body")


class SizeAgnosticVGGHandler:
    def __init__(self):
        self.classifier: ImageClassifier | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        model_config = getattr(context, "model_yaml_config", None) or {}
        options = HandlerOptions.from_mapping(model_config.get("handler", {}))
        device = self.choose_device(properties.get("gpu_id"))
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads(options.cpu_threads, int(model_config.get("maxWorkers", 1))))
            if options.keep_cpu_buffers:
                keep_freed_buffers()
        started = time.perf_counter()
        state_dict = read_state_dict(os.path.join(model_dir, options.weights_file))
        model = load_model(options.arch, options.head, state_dict)
        with open(os.path.join(model_dir, options.labels_file)) as labels_file:
            index_to_name = json.load(labels_file)
        labels = [index_to_name[str(i)] for i in range(len(index_to_name))]
        self.classifier = ImageClassifier(model, options, labels, context.model_name, device)
        loaded = time.perf_counter()
        self.classifier.warm_up(int(model_config.get("batchSize", 1)))
        logger.info("loaded %s (%s head, %s, %s%s%s) on %s in %.1f s, warmed up at %s in %.1f s; torch uses %d CPU "
                    "threads", options.arch, options.head, options.weights, options.precision,
                    ", channels_last" if options.channels_last else "", ", compiled" if options.compile else "",
                    device, loaded - started, options.warmup_sizes or "no sizes", time.perf_counter() - loaded,
                    torch.get_num_threads())
        # The archive's own copy of this package, found first on the worker's path (the model directory), not an
        # installed one: tests/test_serving.py checks this line.
        logger.info("worker code from %s", os.path.dirname(os.path.abspath(__file__)))
        if not options.trained:
            logger.warning("%s serves UNTRAINED random weights; its predictions are meaningless", context.model_name)
        self.initialized = True

    @staticmethod
    def choose_device(gpu_id: Any) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{int(gpu_id)}")
        return torch.device("cpu")

    def handle(self, data: List[dict], context) -> List[str]:
        bodies = [request_body(row) for row in data]
        answers, clock = self.classifier.classify(
            bodies, [self.request_options(row, request_headers(context, index)) for index, row in enumerate(data)])
        logger.info("%s", batch_line(len(data), clock))  # one line per batch in model_log.log (stage_metrics)
        if getattr(context, "metrics", None) is not None:
            try:
                emit(context.metrics, clock)
            except Exception:  # the answers are ready; a metrics problem must not turn them into errors
                logger.exception("exporting the stage metrics failed")
        return [self.respond(answer, index, context) for index, answer in enumerate(answers)]

    def request_options(self, row: Any, headers: dict | None = None) -> Union[RequestOptions, RequestError]:
        """The request's options: its headers, form fields and query parameters over the archive's defaults, or
        the 400 that refuses them."""
        defaults = self.classifier.defaults
        if not isinstance(row, dict):
            return defaults
        try:
            return parse_options(row, defaults, len(self.classifier.labels), ignore=BODY_FIELDS, headers=headers)
        except RequestError as error:
            return error

    @staticmethod
    def respond(answer: Union[dict, RequestError], index: int, context) -> str:
        context.set_response_content_type(index, "application/json")
        if isinstance(answer, RequestError):
            context.set_response_status(answer.status, answer.code, index)
            return json.dumps(answer.to_json())
        return json.dumps(answer)


def cpu_threads(configured: int, max_workers: int) -> int:
    """Intra-op threads for one worker. Every worker's torch would otherwise start one thread per core, and
    several busy workers then oversubscribe the cores: on 2 cores, 2 workers served 12-51 req/s where 1 served
    66-101 (docs/benchmarks.md)."""
    if configured > 0:
        return configured
    return max(1, usable_cores() // max(1, max_workers))


def usable_cores() -> int:
    """The cores this process may use: its affinity mask, capped by a cgroup CPU quota. In a container with a CPU
    limit (Kubernetes, `docker run --cpus`) every host core is still in the mask; the quota is the limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return min(cores, max(1, math.ceil(quota))) if quota else cores


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs allowed by the cgroup v2 quota ("400000 100000" -> 4.0), or None when unlimited or unknown."""
    try:
        quota, period = open(path).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def request_headers(context, index: int) -> dict:
    """Request ``index``'s HTTP headers, or none when the context has no such request (a direct call)."""
    try:
        return dict(context.get_all_request_header(index) or {})
    except (AttributeError, IndexError, KeyError, TypeError):
        return {}


def request_body(row: Any) -> Union[bytes, RequestError]:
    """The image bytes of one request: a multipart field ``data`` or ``file``, or the raw body."""
    if not isinstance(row, dict):
        return not_an_image("unexpected request layout")
    present = [name for name in BODY_FIELDS if name in row]
    if not present:
        fields = ", ".join(sorted(map(str, row))) or "none"
        return RequestError(400, "missing_field",
                            f"No image found: send it as the raw body or as a multipart field named 'data' or "
                            f"'file' (fields received: {fields}).")
    value = row[present[0]]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) if value else empty_body()
    if isinstance(value, str):  # TorchServe decodes text/* bodies to str
        return empty_body() if not value else not_an_image("the body is text")
    # TorchServe parses application/json bodies into Python objects
    return not_an_image("the body is JSON")
