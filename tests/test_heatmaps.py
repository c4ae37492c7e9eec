"""Class-score heatmaps: the map returned is the one the answer came from, one per fed view, refused on the
adaptive head, carried through OIP, and it points at the shape on a large canvas."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from helpers import MockContext

from anysize_tools.shapes import render, sample_scene, scene_generator


def jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def ask(handler, body: bytes, **options):
    context = MockContext(None, None)
    row = {"body": body, **{name: str(value).encode() for name, value in options.items()}}
    return json.loads(handler.handle([row], context)[0]), context


def canvas(index: int, side: int = 448):
    """A held-out scene's shape at the 112-px scale on a side x side canvas: (JPEG, label, shape centre x, y)."""
    scene = sample_scene(scene_generator(3, "test", index))
    radius = scene.radius * 112
    centre = (radius + scene.center[0] * (side - 2 * radius), radius + scene.center[1] * (side - 2 * radius))
    return jpeg(render(scene, side, side, 112)), scene.label, centre


@pytest.mark.parametrize("aggregation", ["max", "mean", "lse"])
def test_the_heatmap_is_the_map_the_answer_came_from(demo_handler, aggregation):
    handler = demo_handler("fcn", scale_policy="native", scales="", flip=False, aggregation=aggregation)
    body, _, _ = canvas(0)
    answer, context = ask(handler, body, heatmap="true", topk=3)
    assert context.statuses == {}
    heatmap = answer["heatmap"]
    assert heatmap["aggregation"] == aggregation and len(heatmap["views"]) == 1
    view = heatmap["views"][0]
    assert view["size"] == answer["input_size"] == [448, 448] and view["grid"] == [8, 8]  # (448 / 32) - 7 + 1
    assert [c["index"] for c in view["classes"]] == [p["index"] for p in answer["predictions"]]
    for entry, prediction in zip(view["classes"], answer["predictions"]):
        grid = np.array(entry["map"])
        assert grid.shape == (8, 8)
        assert math.exp(entry["score"] - view["log_normalizer"]) == pytest.approx(prediction["probability"], abs=1e-5)
        recomputed = {"max": grid.max(), "mean": grid.mean(),
                      "lse": np.log(np.exp(grid).mean())}[aggregation]  # from the rounded numbers sent
        assert recomputed == pytest.approx(entry["score"], abs=1e-3)


def test_one_heatmap_per_fed_view_and_none_unless_asked(demo_handler):
    handler = demo_handler("fcn", scales="112,224", flip=True, view_aggregation="max")
    body, _, _ = canvas(1, 336)
    answer, _ = ask(handler, body, heatmap="yes")
    assert [view["size"] for view in answer["heatmap"]["views"]] == answer["scales"]  # mirrors are not repeated
    assert "heatmap" not in ask(handler, body)[0] and "heatmap" not in ask(handler, body, heatmap="false")[0]


def test_the_adaptive_head_refuses_a_heatmap_with_a_400_saying_why(demo_handler):
    handler = demo_handler("adaptive")
    body, _, _ = canvas(2)
    answer, context = ask(handler, body, heatmap="true")
    assert context.statuses == {0: (400, "bad_option")} and answer["option"] == "heatmap"
    assert "7x7" in answer["allowed"]
    assert "predictions" in ask(handler, body, heatmap="false")[0]


def test_oip_requests_get_the_heatmap_as_an_output(demo_handler):
    handler = demo_handler("fcn", scale_policy="native", scales="", flip=False)
    body, _, _ = canvas(4)
    document = {"parameters": {"heatmap": True}, "inputs": [
        {"name": "x", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(body).decode()]}]}
    answer = json.loads(handler.handle([{"body": document}], MockContext(None, None))[0])
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["heatmap"]["shape"] == [1] and outputs["heatmap"]["datatype"] == "BYTES"
    assert json.loads(outputs["heatmap"]["data"][0]) == ask(handler, body, heatmap="true")[0]["heatmap"]


def test_the_heatmap_points_at_the_shape_on_a_large_canvas(demo_handler):
    """The top class's best window is centred on the shape: a weak localiser from the same pass. Windows are 224 px
    wide and 32 px apart, so on a 448-px canvas their centres lie in 112-336 px; a hit is a best window whose centre
    is within 64 px of the shape's centre (clamped into that range) along each axis. A cell drawn at random hits
    at most (5/8)^2 = 39 % of the time (about 8 of 20); the threshold is 16."""
    handler = demo_handler("fcn", scale_policy="native", scales="", flip=False, aggregation="max")
    hits = 0
    for index in range(20):
        body, _, centre = canvas(10 + index)
        answer, _ = ask(handler, body, heatmap="true", topk=1)
        grid = np.array(answer["heatmap"]["views"][0]["classes"][0]["map"])
        row, column = np.unravel_index(grid.argmax(), grid.shape)
        window = (32 * column + 112, 32 * row + 112)
        hits += all(abs(w - min(max(c, 112), 336)) <= 64 for w, c in zip(window, centre))
    assert hits >= 16, hits
