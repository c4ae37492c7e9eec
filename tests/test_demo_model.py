"""The shipped demo model: its files, and its accuracy when served, measured against the resolution study.

The served test classifies scenes the study never saw (another seed) over HTTP and computes accuracy from the
responses; it must be no worse than the study's figure for that head and size, minus three standard errors of a
sample this small and a 3-point allowance for the fresh scenes. Because that bound is loose where the study's
accuracy is low (twice the training size), every served top-1 must also equal the shipped model's own answer.
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
import numpy as np

from helpers import encode, to_input
from shapes_dataset import CLASSES, render_example
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
        return answer.json()["predictions"][0]["index"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        served = list(pool.map(classify, scenes))
    model = load_model("demo", head, read_state_dict(DEMO / "demo-vgg.pth"))
    with torch.no_grad():
        local = model(torch.cat([to_input(np.asarray(image)) for image, _ in scenes])).argmax(1).tolist()
    assert served == local
    measured = sum(index == label for index, (_, label) in zip(served, scenes)) / SAMPLES
    expected = study_accuracy(head, side)
    margin = 3 * math.sqrt(expected * (1 - expected) / SAMPLES) + 0.03
    assert measured >= expected - margin, f"served {measured:.3f} vs study {expected:.3f} - {margin:.3f}"


def test_training_is_deterministic_on_a_tiny_run(tmp_path):
    """Backs the model card's reproducibility claim: the same seed gives bit-identical weights."""
    import subprocess
    import sys

    runs = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(REPO / "scripts" / "train_demo.py"), "--train-images", "128",
                        "--val-images", "32", "--epochs", "1", "--batch-size", "32", "--output", str(tmp_path / name)],
                       check=True, capture_output=True)
        runs.append(read_state_dict(tmp_path / name / "demo-vgg.pth"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])


def test_make_serve_builds_trained_demo_archives_and_rebuilds_impostors(tmp_path, monkeypatch):
    import zipfile

    import yaml

    import serve

    monkeypatch.setattr(serve, "MODEL_STORE", tmp_path)
    # an archive of the default name holding random weights, newer than everything: must not be served as is
    build_archive.build(build_archive.parse_args(["--arch", "demo", "--head", "fcn", "--weights", "random",
                                                  "--name", "demo-fcn", "--export-path", str(tmp_path)]))
    assert serve.demo_archives() == ["demo-adaptive", "demo-fcn"]
    for head in HEADS:
        with zipfile.ZipFile(tmp_path / f"demo-{head}.mar") as mar:
            options = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
            assert json.loads(mar.read("index_to_name.json")) == {str(i): c for i, c in enumerate(CLASSES)}
        assert options["trained"] is True and options["weights"] == serve.DEMO_DESCRIPTION
        assert options["weights_file"] == "demo-vgg.pth" and options["arch"] == "demo" and options["head"] == head
