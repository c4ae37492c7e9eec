"""Where a batch's time goes: the classifier's stages timed per batch, their export as TorchServe metrics, and the
handler's per-batch log line (its format and its parser side by side: the benchmark reads the server's logs).

The counters add up milliseconds per stage (and images, refusals, forward passes), so in Prometheus
``rate(StageForwardMs[1m]) / rate(ImagesClassified[1m])`` is the forward time per image. Their names and
dimensions are declared in metrics.yaml at the repository root: TorchServe's Prometheus endpoint only shows
declared model metrics.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List

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


@dataclass(frozen=True)
class BatchRecord:
    """One handler batch as its log line tells it."""
    requests: int
    answered: int
    refused: int
    ms: Dict[str, float]


BATCH_LINE = re.compile(r"batch of (\d+) requests: (\d+) answered, (\d+) refused; "
                        + ", ".join(rf"{stage} ([\d.]+) ms" for stage in STAGES))


def batch_line(requests: int, clock: StageClock) -> str:
    """The line the handler logs after each batch (parsed back by ``batch_records``)."""
    refused = clock.counts["refused"]
    return (f"batch of {requests} requests: {requests - refused} answered, {refused} refused; "
            + ", ".join(f"{stage} {clock.ms[stage]:.1f} ms" for stage in STAGES))


def batch_records(log: str) -> List[BatchRecord]:
    """Every batch line in a log text (TorchServe's model_log.log), in order."""
    return [BatchRecord(int(match[0]), int(match[1]), int(match[2]),
                        {stage: float(value) for stage, value in zip(STAGES, match[3:])})
            for match in BATCH_LINE.findall(log)]


def emit(metrics, clock: StageClock) -> None:
    """Add one batch to TorchServe's counters (``context.metrics``)."""
    from ts.metrics.metric_type_enum import MetricTypes

    for stage, name in STAGE_METRICS.items():
        # A fresh dimensions list each time: TorchServe appends its default dimensions to the list it is given.
        metrics.add_metric(name, round(clock.ms[stage], 3), unit="ms", dimensions=[],
                           metric_type=MetricTypes.COUNTER)
    for count, name in COUNT_METRICS.items():
        metrics.add_metric(name, clock.counts[count], unit="count", dimensions=[], metric_type=MetricTypes.COUNTER)
