"""JPEG decoding on the fast path keeps answers exact: torchvision's decoder gives Pillow's pixels (one by one and
batched, as nvJPEG does on a GPU), anything it would decode differently stays with Pillow, damaged files get
Pillow's answer or a 400, and a bad JPEG in a GPU-style batch fails alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import encode, make_photo, run_handler
from PIL import Image

from anysize.image_decoding import (decode_image, decode_jpeg_batch, decode_pixels, is_plain_jpeg, network_size,
                                    open_image, resize_to_contract, to_rgb)
from anysize.request_errors import RequestError

MAX_PIXELS, MIN_SIDE, BOMB = 4_194_304, 32, 16

def pillow_path(body: bytes) -> np.ndarray:
    """What decode_image gave before torchvision: Pillow all the way."""
    image = to_rgb(decode_pixels(open_image(body, BOMB * MAX_PIXELS)))
    return np.asarray(resize_to_contract(image, MAX_PIXELS, MIN_SIDE))

def decode(body: bytes) -> np.ndarray:
    return decode_image(body, MAX_PIXELS, MIN_SIDE, BOMB).numpy()

def plain(body: bytes) -> bool:
    image = open_image(body, BOMB * MAX_PIXELS)
    return is_plain_jpeg(image, [network_size(*image.size, MAX_PIXELS, MIN_SIDE)])

JPEG_VARIANTS = {
    "4:2:0": {"quality": 90}, "4:4:4": {"quality": 95, "subsampling": 0}, "4:2:2": {"quality": 80, "subsampling": 1},
    "progressive": {"quality": 85, "progressive": True}, "optimized": {"quality": 75, "optimize": True},
}

@pytest.mark.parametrize("variant", sorted(JPEG_VARIANTS))
@pytest.mark.parametrize("size", [(224, 224), (97, 61), (1280, 720)])
def test_torchvision_decodes_plain_jpegs_to_pillows_pixels(variant, size):
    body = encode(make_photo(*size, seed=3), "JPEG", **JPEG_VARIANTS[variant])
    assert plain(body)
    assert np.array_equal(decode(body), pillow_path(body))

def test_grey_jpegs_decode_to_pillows_rgb():
    body = encode(make_photo(120, 80, seed=4).convert("L"), "JPEG", quality=90)
    assert plain(body)
    pixels = decode(body)
    assert pixels.shape == (80, 120, 3) and np.array_equal(pixels, pillow_path(body))

def test_jpegs_torchvision_would_decode_differently_stay_with_pillow():
    photo = make_photo(120, 80, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: Pillow turns it upright
    rotated = encode(photo, "JPEG", quality=90, exif=exif.tobytes())
    cmyk = encode(photo.convert("CMYK"), "JPEG", quality=90)
    large = encode(make_photo(2100, 2100, seed=6), "JPEG", quality=70)  # over max_pixels: resized
    tiny = encode(make_photo(20, 40, seed=6), "JPEG", quality=90)  # under min_side: upscaled
    for body in (rotated, cmyk, large, tiny, encode(photo, "PNG"), encode(photo, "WEBP")):
        assert not plain(body)
        assert np.array_equal(decode(body), pillow_path(body))
    assert decode(rotated).shape == (120, 80, 3)

def test_damaged_jpegs_get_pillows_answer_or_a_400():
    """Fuzzed JPEGs: whenever both decoders decode, the pixels are identical; whatever the handler refuses is a
    400-class RequestError. (torchvision accepts a few damaged files that Pillow refuses: docs/design.md.)"""
    rng = np.random.default_rng(7)
    body = encode(make_photo(160, 120, seed=8), "JPEG", quality=90)
    outcomes = {"same": 0, "refused": 0, "accepted_only_by_torchvision": 0}
    for case in range(240):
        damaged = bytearray(body)
        if case % 2:
            damaged = damaged[: int(rng.integers(100, len(damaged)))]
        else:
            for _ in range(int(rng.integers(1, 12))):
                damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
        damaged = bytes(damaged)
        try:
            pixels = decode(damaged)
        except RequestError as error:
            assert 400 <= error.status < 500
            outcomes["refused"] += 1
            continue
        try:
            expected = pillow_path(damaged)
        except RequestError:
            outcomes["accepted_only_by_torchvision"] += 1
            continue
        assert np.array_equal(pixels, expected)
        outcomes["same"] += 1
    assert outcomes["same"] > 0 and outcomes["refused"] > 0
    assert outcomes["accepted_only_by_torchvision"] <= 240 // 20

def test_batched_jpeg_decoding_equals_one_by_one_and_fails_as_a_whole_on_a_bad_file():
    bodies = [encode(make_photo(w, h, seed=w), "JPEG", quality=q) for w, h, q in ((64, 48, 90), (200, 100, 70))]
    batched = decode_jpeg_batch(bodies, torch.device("cpu"))
    assert [tuple(p.shape) for p in batched] == [(48, 64, 3), (100, 200, 3)]
    for pixels, body in zip(batched, bodies):
        assert np.array_equal(pixels.numpy(), decode(body))
    with pytest.raises(RuntimeError):
        decode_jpeg_batch([bodies[0], bodies[1][:200]], torch.device("cpu"))

def spy_on_batched_decoding(monkeypatch):
    """Record every call of the batched decoder as (number of bodies, decoded or the exception's name)."""
    from anysize import classifier as classifier_module

    calls, real = [], classifier_module.decode_jpeg_batch

    def spy(bodies, device):
        try:
            result = real(bodies, device)
        except Exception as error:
            calls.append((len(bodies), type(error).__name__))
            raise
        calls.append((len(bodies), "decoded"))
        return result

    monkeypatch.setattr(classifier_module, "decode_jpeg_batch", spy)
    return calls

def test_gpu_style_batched_decoding_gives_the_one_by_one_answers(demo_handler, monkeypatch):
    handler = demo_handler()
    jpegs = [encode(make_photo(112, 112, seed=s), "JPEG", quality=90) for s in range(3)]
    # Other slots between the JPEGs, so the batched results must land at the right indices.
    bodies = [jpegs[0], encode(make_photo(112, 112, seed=9), "PNG"), b"junk", jpegs[1],
              encode(make_photo(96, 80, seed=4), "JPEG", quality=80), jpegs[2]]
    calls = spy_on_batched_decoding(monkeypatch)
    handler.classifier.jpeg_batch_device = torch.device("cpu")  # the GPU code path, run on the CPU
    batched, context = run_handler(handler, bodies)
    assert calls == [(4, "decoded")]
    handler.classifier.jpeg_batch_device = None
    one_by_one, _ = run_handler(handler, bodies)
    assert calls == [(4, "decoded")]  # the one-by-one path does not use it
    assert context.statuses == {2: (400, "not_an_image")}
    assert batched == one_by_one

def test_a_bad_jpeg_in_a_gpu_batch_fails_alone(demo_handler, monkeypatch):
    handler = demo_handler()
    good = [encode(make_photo(112, 112, seed=s), "JPEG", quality=90) for s in range(2)]
    truncated = encode(make_photo(112, 112, seed=5), "JPEG", quality=90)
    bodies = [good[0], truncated[:len(truncated) // 2], good[1]]
    calls = spy_on_batched_decoding(monkeypatch)
    handler.classifier.jpeg_batch_device = torch.device("cpu")
    batched, context = run_handler(handler, bodies)
    # The batch call fails, each JPEG is tried alone on the device, the bad one falls back to Pillow's answer.
    assert calls[0] == (3, "RuntimeError") and calls[1:] == [(1, "decoded"), (1, "RuntimeError"), (1, "decoded")]
    handler.classifier.jpeg_batch_device = None
    one_by_one, _ = run_handler(handler, bodies)
    assert context.statuses == {1: (400, "corrupt_image")}
    assert batched == one_by_one
