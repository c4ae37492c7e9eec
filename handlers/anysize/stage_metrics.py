"""Where a batch's time goes: the classifier's stages timed per batch, and their export as TorchServe metrics.

The counters add up milliseconds per stage (and images, refusals, forward passes), so in Prometheus
``rate(StageForwardMs[1m]) / rate(ImagesClassified[1m])`` is the forward time per image. Their names and
dimensions are declared in metrics.yaml at the repository root: TorchServe's Prometheus endpoint only shows
declared model metrics.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator

STAGES = ("decode", "preprocess", "forward", "postprocess")
STAGE_METRICS = {"decode": "StageDecodeMs", "preprocess": "StagePreprocessMs", "forward": "StageForwardMs",
                 "postprocess": "StagePostprocessMs"}
COUNT_METRICS = {"images": "ImagesClassified", "refused": "RequestsRefused", "passes": "ForwardPasses"}


class StageClock:
    """Milliseconds per stage and a few counts for one batch."""

    def __init__(self):
        self.ms: Dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.counts: Dict[str, int] = dict.fromkeys(COUNT_METRICS, 0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += 1000 * (time.perf_counter() - started)


def emit(metrics, clock: StageClock) -> None:
    """Add one batch to TorchServe's counters (``context.metrics``)."""
    from ts.metrics.metric_type_enum import MetricTypes

    for stage, name in STAGE_METRICS.items():
        # A fresh dimensions list each time: TorchServe appends its default dimensions to the list it is given.
        metrics.add_metric(name, round(clock.ms[stage], 3), unit="ms", dimensions=[],
                           metric_type=MetricTypes.COUNTER)
    for count, name in COUNT_METRICS.items():
        metrics.add_metric(name, clock.counts[count], unit="count", dimensions=[], metric_type=MetricTypes.COUNTER)
