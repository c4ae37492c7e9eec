"""Where a batch's time goes: the stage counters reach TorchServe's metrics once per batch and its Prometheus
endpoint, and the handler's batch log line parses back to what was logged."""

from __future__ import annotations

import pytest
from helpers import encode, make_photo, run_handler

from anysize.stage_metrics import COUNT_METRICS, STAGE_METRICS, STAGES, StageClock, batch_line, batch_records

def test_stage_metrics_are_added_once_per_batch(demo_handler):
    handler = demo_handler()
    bodies = [encode(make_photo(112, 112, seed=1), "JPEG"), encode(make_photo(96, 80, seed=2), "PNG"), b"junk"]
    _, context = run_handler(handler, bodies)
    added = {name: (value, unit, kind) for name, value, unit, kind in context.metrics.added}
    assert len(context.metrics.added) == len(added)  # each counter once per batch
    assert set(added) == set(STAGE_METRICS.values()) | set(COUNT_METRICS.values())
    assert all(kind == "COUNTER" for _, _, kind in added.values())
    assert added["ImagesClassified"][0] == 2 and added["RequestsRefused"][0] == 1
    assert added["ForwardPasses"][0] == 2  # two sizes, two passes
    assert all(added[name][0] > 0 and added[name][1] == "ms" for name in STAGE_METRICS.values())


def test_the_batch_log_line_parses_back_to_what_was_logged():
    clock = StageClock()
    clock.ms.update(decode=3.25, preprocess=2.0, forward=28.04, postprocess=0.3)
    clock.counts["refused"] = 1
    log = f"2026-12-03 [INFO ] W-9000 MODEL_LOG - {batch_line(3, clock)}\nother line\n" + batch_line(1, StageClock())
    first, second = batch_records(log)
    assert (first.requests, first.answered, first.refused) == (3, 2, 1)
    assert first.ms == {"decode": 3.2, "preprocess": 2.0, "forward": 28.0, "postprocess": 0.3}  # logged at 0.1 ms
    assert (second.requests, second.answered, second.refused) == (1, 1, 0) and set(second.ms) == set(STAGES)


@pytest.mark.integration
def test_served_stage_times_reach_prometheus(demo_server):
    """The handler's counters come out of TorchServe's metrics endpoint (declared in metrics.yaml)."""
    import requests

    body = encode(make_photo(112, 112, seed=21), "JPEG", quality=90)
    headers = {**demo_server.headers("inference"), "Content-Type": "image/jpeg"}
    for _ in range(2):
        answer = requests.post(f"{demo_server.url('inference')}/predictions/demo-fcn", data=body, headers=headers,
                               timeout=60)
        assert answer.status_code == 200
    text = requests.get(f"{demo_server.url('metrics')}/metrics", timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line.startswith(tuple(STAGE_METRICS.values()) + tuple(COUNT_METRICS.values())) and 'demo-fcn' in line:
            samples[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    assert set(samples) == set(STAGE_METRICS.values()) | set(COUNT_METRICS.values()), text[-2000:]
    assert samples["ImagesClassified"] >= 2 and samples["StageForwardMs"] > 0
