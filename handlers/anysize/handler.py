"""TorchServe handler for size-agnostic VGG classifiers: the TorchServe plumbing around ``ImageClassifier``.

``initialize`` reads the archive once (model-config.yaml, labels, weights), picks the device and warms the model
up; ``handle`` reads each request of TorchServe's batch in its form (request_formats: one image, several, or OIP
v2), runs every image of the batch through decode -> group -> infer -> encode together, writes each request's
answer in its form with its own HTTP status, so one bad request never fails the rest of its batch (nor one bad image
the other images of its request, except in OIP, which has no per-image error), and exports the batch's stage times
as TorchServe metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, List, Tuple, Union

import torch

from .classifier import VIEW_BUDGET, ImageClassifier
from .cpu_memory import keep_freed_buffers
from .handler_config import HandlerOptions
from .request_errors import RequestError
from .request_formats import SINGLE, Limits, Reply, Request, read_request, write_answer
from .request_options import RequestOptions, parse_options
from .stage_metrics import batch_line, emit
from .vgg_models import load_model
from .weights import read_state_dict

logger = logging.getLogger(__name__)

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
        headers = [request_headers(context, index) for index in range(len(data))]
        requests = [self.read(row, headers[index]) for index, row in enumerate(data)]
        options = [self.request_options(request, headers[index]) for index, request in enumerate(requests)]
        for request, option in zip(requests, options):
            if request.form != SINGLE and request.error is None:
                # refused whole: its options, or the pixels its views would feed; a single image's own error goes
                # first (classify)
                request.error = option if isinstance(option, RequestError) else self.over_view_budget(request, option)
        owners, images = gather_images(requests)
        answers, clock = self.classifier.classify(images, [options[index] for index in owners])
        logger.info("%s", batch_line(len(data), clock))  # one line per batch in model_log.log (stage_metrics)
        if getattr(context, "metrics", None) is not None:
            try:
                emit(context.metrics, clock)
            except Exception:  # the answers are ready; a metrics problem must not turn them into errors
                logger.exception("exporting the stage metrics failed")
        return [self.respond(self.write(request, answers_of), index, context)
                for index, (request, answers_of) in enumerate(zip(requests, split_answers(owners, answers, len(data))))]

    def read(self, row: Any, headers: dict) -> Request:
        """read_request, where a failure of the reader itself is this request's own 500, not the batch's."""
        try:
            return read_request(row, headers, self.limits)
        except Exception:
            logger.exception("reading a request failed")
            return Request(SINGLE, error=RequestError(500, "request_failed", "The request could not be read."))

    def write(self, request: Request, answers: List) -> Reply:
        """write_answer, with the same guard, and an answer too large for TorchServe to carry refused (413)."""
        try:
            reply = write_answer(request, answers, self.classifier.model_name)
            body = json.dumps(reply.body)
        except Exception:
            logger.exception("writing an answer failed")
            return Reply(500, "request_failed", {"error": "request_failed",
                                                 "message": "The answer could not be written."})
        limit = self.classifier.options.max_response_bytes
        if len(body) > limit:
            error = RequestError(413, "response_too_large", f"The answer would hold {len(body)} bytes, over this "
                                                            f"model's {limit}: ask for fewer images, scales or heatmap "
                                                            f"classes (topk).")
            request.error = error
            return write_answer(request, [], self.classifier.model_name)
        return Reply(reply.status, reply.phrase, body)

    def over_view_budget(self, request: Request, options: RequestOptions) -> RequestError | None:
        """413 when the images of one request would feed the network more pixels in all (views and mirrors) than
        one image may (VIEW_BUDGET x max_pixels): a request of several images costs at most what one may."""
        budget = VIEW_BUDGET * self.classifier.options.max_pixels
        fed = sum(self.classifier.fed_pixels(image, options) for image in request.images)
        if fed <= budget:
            return None
        return RequestError(413, "too_many_pixels", f"The request's images would feed {fed} pixels in all (views and "
                                                    f"mirrors); this model feeds at most {budget} per request.")

    def request_options(self, request: Request, headers: dict | None = None) -> Union[RequestOptions, RequestError]:
        """The request's options: its headers, form fields, query parameters or JSON parameters over the archive's
        defaults, or the 400 that refuses them."""
        try:
            return parse_options(request.options, self.classifier.defaults, len(self.classifier.labels),
                                 ignore=request.option_fields, headers=headers)
        except RequestError as error:
            return error

    @property
    def limits(self) -> Limits:
        options = self.classifier.options
        return Limits(options.max_images, options.max_request_pixels, options.bomb_pixels)

    @staticmethod
    def respond(reply: Reply, index: int, context) -> str:
        context.set_response_content_type(index, "application/json")
        if reply.status != 200:
            context.set_response_status(reply.status, reply.phrase, index)
        return reply.body if isinstance(reply.body, str) else json.dumps(reply.body)


def gather_images(requests: List[Request]) -> Tuple[List[int], List]:
    """Every image of every request in one list (and its request's index), so the images of one request are batched
    like those of separate requests: same-size views share a forward pass."""
    owners, images = [], []
    for index, request in enumerate(requests):
        if request.error is None:
            owners += [index] * len(request.images)
            images += request.images
    return owners, images


def split_answers(owners: List[int], answers: List, count: int) -> List[List]:
    """The answers back per request, in each request's image order."""
    by_request: List[List] = [[] for _ in range(count)]
    for index, answer in zip(owners, answers):
        by_request[index].append(answer)
    return by_request


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
