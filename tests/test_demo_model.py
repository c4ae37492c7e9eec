"""The shipped demo model: its files, and its accuracy when served, measured against the resolution study.

The served test classifies scenes the study never saw (another seed) over HTTP and computes accuracy from the
responses; it must be no worse than the study's figure for that head and size, minus three standard errors of a
sample this small and a 3-point allowance for the fresh scenes.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

import build_archive
from helpers import encode
from shapes_dataset import CLASSES, render_example
from torchserve_runner import TorchServe
from vgg_models import ARCHS, HEADS, load_model, training_size
from weights import read_state_dict

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "model_store" / "demo"
STUDY = REPO / "docs" / "resolution-study.json"
FRESH_SEED = 20261129  # the study uses seed 0; these scenes are new to both the model and the study
SAMPLES = 120


def test_the_demo_model_ships_small_with_labels_and_card():
    weights = DEMO / "demo-vgg.pth"
    assert weights.is_file() and weights.stat().st_size <= 20 * 1024 * 1024
    assert json.loads((DEMO / "labels.json").read_text()) == CLASSES
    card = (DEMO / "MODEL_CARD.md").read_text()
    assert "scripts/train_demo.py" in card and "seed" in card and "validation" in card
    state_dict = read_state_dict(weights)
    for head in HEADS:
        logits = load_model("demo", head, state_dict)(torch.zeros(1, 3, 112, 112))
        assert logits.shape == (1, len(CLASSES))


def study_accuracy(head: str, side: int) -> float:
    rows = json.loads(STUDY.read_text())["rows"]
    return next(r[f"{head}_accuracy"] for r in rows if (r["width"], r["height"]) == (side, side))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo_store")
    for head in HEADS:
        build_archive.build(build_archive.parse_args([
            "--arch", "demo", "--head", head, "--weights", str(DEMO / "demo-vgg.pth"), "--labels",
            str(DEMO / "labels.json"), "--name", f"demo-{head}", "--export-path", str(store)]))
    server = TorchServe(tmp_path_factory.mktemp("demo_ts"), store, [f"demo-{h}=demo-{h}.mar" for h in HEADS],
                        free_ports=True).start()
    try:
        server.wait_ready([f"demo-{h}" for h in HEADS], timeout=300)
        yield server
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.parametrize("scale", [1, 2], ids=["training-size", "twice-training-size"])
@pytest.mark.parametrize("head", HEADS)
def test_served_demo_accuracy_matches_the_study(demo_server, head, scale):
    side = scale * training_size(ARCHS["demo"])
    scenes = [render_example(FRESH_SEED, "test", i, side, side) for i in range(SAMPLES)]
    url = f"{demo_server.url('inference')}/predictions/demo-{head}"
    headers = {**demo_server.headers("inference"), "Content-Type": "image/png"}

    def classify(scene):
        answer = requests.post(url, data=encode(scene[0], "PNG"), headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["input_size"] == [side, side]
        return answer.json()["predictions"][0]["label"] == CLASSES[scene[1]]

    with ThreadPoolExecutor(max_workers=4) as pool:
        measured = sum(pool.map(classify, scenes)) / SAMPLES
    expected = study_accuracy(head, side)
    margin = 3 * math.sqrt(expected * (1 - expected) / SAMPLES) + 0.03
    assert measured >= expected - margin, f"served {measured:.3f} vs study {expected:.3f} - {margin:.3f}"
