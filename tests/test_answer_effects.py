"""What answer_effects measures about decoders: the handler's decoder for plain JPEGs on a device against Pillow's
pixels (nvJPEG on a GPU; on this CPU torchvision's libjpeg-turbo, which must agree exactly with Pillow's)."""

from __future__ import annotations

import torch

from anysize import image_decoding
from anysize_tools import answer_effects


def test_the_cpu_jpeg_decoder_gives_pillows_pixels_and_answers():
    rows = answer_effects.decoder_effects(count=7, device=torch.device("cpu"))
    assert [row["head"] for row in rows] == ["fcn", "adaptive"]
    for row in rows:
        assert row["device"] == "cpu" and "CPU" in row["decoder"]
        assert (row["images_with_other_pixels"], row["max_pixel_difference"]) == (0, 0)
        assert row["top1_agreement"] == 1.0 and row["max_probability_difference"] == 0.0


def test_a_decoder_that_moves_pixels_is_reported_against_pillow_with_the_size_of_the_move(monkeypatch):
    real = image_decoding.decode_jpeg

    def off_by_three(*args, **kwargs):  # torchvision's decoder made not bit-identical, as nvJPEG is
        decoded = real(*args, **kwargs)
        shift = lambda pixels: (pixels.int() + 3).clamp(0, 255).to(torch.uint8)  # noqa: E731
        return [shift(p) for p in decoded] if isinstance(decoded, list) else shift(decoded)

    # Every torchvision decode of the handler moves; Pillow, the reference, does not.
    monkeypatch.setattr(image_decoding, "decode_jpeg", off_by_three)
    rows = answer_effects.decoder_effects(count=7, device=torch.device("cpu"))
    for row in rows:
        assert row["images_with_other_pixels"] == 7 and row["max_pixel_difference"] == 3
        assert row["max_probability_difference"] > 0.0
