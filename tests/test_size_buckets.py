"""Opt-in size buckets: images resized to the nearest configured size so that different sizes share a forward
pass; an image already at a bucket's size keeps its exact answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import count_passes, encode, make_photo, run_handler

from anysize.size_buckets import nearest_bucket, parse_sizes, resize_to_bucket

def test_size_buckets_parse_and_choose_the_least_distorting_size():
    buckets = parse_sizes("224x224, 448x256,256x448")
    assert buckets == [(224, 224), (448, 256), (256, 448)]
    assert nearest_bucket(230, 220, buckets) == (224, 224)
    assert nearest_bucket(1920, 1080, buckets) == (448, 256)
    assert nearest_bucket(300, 640, buckets) == (256, 448)
    assert parse_sizes("") == []
    for bad in ("224", "224x", "0x224", "axb"):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    pixels = torch.from_numpy(np.asarray(make_photo(230, 220, seed=1)).copy())  # (H, W) = (220, 230)
    assert tuple(resize_to_bucket(pixels, buckets).shape) == (224, 224, 3)
    at_bucket = torch.zeros(224, 224, 3, dtype=torch.uint8)
    assert resize_to_bucket(at_bucket, buckets) is at_bucket

def test_buckets_let_different_sizes_share_a_forward_pass(demo_handler):
    exact = demo_handler()
    bucketed = demo_handler(buckets="112x112,224x112")
    bodies = [encode(make_photo(w, h, seed=w), "PNG") for w, h in ((112, 112), (120, 104), (100, 118), (230, 110))]
    shapes = count_passes(bucketed)
    answers, _ = run_handler(bucketed, bodies)
    assert sorted(shapes) == [(1, 3, 112, 224), (3, 3, 112, 112)]
    assert [a["input_size"] for a in answers] == [[112, 112], [112, 112], [112, 112], [112, 224]]
    exact_answers, _ = run_handler(exact, bodies)
    # Already at a bucket's size: the exact answer (up to float summation order in a larger batch).
    assert [p["index"] for p in answers[0]["predictions"]] == [p["index"] for p in exact_answers[0]["predictions"]]
    assert all(abs(a["probability"] - b["probability"]) < 1e-5
               for a, b in zip(answers[0]["predictions"], exact_answers[0]["predictions"]))
    assert exact_answers[1]["input_size"] == [104, 120]
