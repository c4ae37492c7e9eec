"""The generated shapes data set: deterministic scenes, renderable at any size and aspect ratio, all classes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from anysize_tools.shapes import CLASSES, render_example


def test_a_scene_is_a_function_of_seed_split_and_index():
    first, label = render_example(0, "test", 5, 96, 80)
    again, label_again = render_example(0, "test", 5, 96, 80)
    assert label == label_again and np.array_equal(np.asarray(first), np.asarray(again))
    for other in (render_example(0, "test", 6, 96, 80), render_example(1, "test", 5, 96, 80),
                  render_example(0, "train", 5, 96, 80)):
        assert not np.array_equal(np.asarray(other[0]), np.asarray(first))


@pytest.mark.parametrize("size", [(28, 28), (112, 112), (199, 112), (112, 224), (896, 896)])
def test_scenes_render_at_any_size_and_aspect_ratio(size):
    image, label = render_example(0, "val", 3, *size)
    assert image.size == size and image.mode == "RGB" and 0 <= label < len(CLASSES)


def test_the_same_scene_at_two_resolutions_is_the_same_picture():
    small, small_label = render_example(0, "test", 11, 112, 112)
    large, large_label = render_example(0, "test", 11, 448, 448)
    assert small_label == large_label
    shrunk = np.asarray(large.resize((112, 112), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(shrunk - np.asarray(small, dtype=np.float32)).mean() < 12  # edges differ by antialiasing only


def test_every_class_appears_in_roughly_equal_numbers():
    counts = Counter(render_example(0, "train", i, 32, 32)[1] for i in range(1000))
    assert set(counts) == set(range(len(CLASSES))) and len(CLASSES) >= 10
    assert min(counts.values()) > 60 and max(counts.values()) < 140
