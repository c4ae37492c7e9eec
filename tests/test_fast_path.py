"""The fast path keeps answers exact: torchvision JPEG decoding (one by one and batched, as on a GPU), warm-up,
torch.compile with a bounded number of sizes, opt-in size buckets, and the per-stage metrics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import MockContext, demo_model_dir, encode, make_photo
from PIL import Image

from anysize.handler import SizeAgnosticVGGHandler
from anysize.image_decoding import (decode_image, decode_jpeg_batch, decode_pixels, is_plain_jpeg, network_size,
                                    open_image, resize_to_contract, to_rgb)
from anysize.request_errors import RequestError
from anysize.size_buckets import nearest_bucket, parse_sizes, resize_to_bucket
from anysize.stage_metrics import COUNT_METRICS, STAGE_METRICS

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


# ------------------------------------------------------------------------------------------- the demo handler
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The shipped demo model laid out as an unpacked archive."""
    return demo_model_dir(tmp_path_factory.mktemp("demo_model_dir"))


@pytest.fixture
def demo_handler(demo_dir):
    def make(head="fcn", batch_size=8, **options) -> SizeAgnosticVGGHandler:
        config = {"batchSize": batch_size, "handler": {
            "arch": "demo", "head": head, "weights": "shipped demo", "weights_file": "demo-vgg.pth", "topk": 3,
            "warmup_sizes": "", **options}}
        handler = SizeAgnosticVGGHandler()
        handler.initialize(MockContext(demo_dir, config, model_name="demo-test"))
        return handler
    return make


def run(handler, bodies):
    context = MockContext(None, None, model_name="demo-test")
    outputs = [json.loads(out) for out in handler.handle([{"body": b} for b in bodies], context)]
    return outputs, context


def count_passes(handler):
    shapes = []
    handler.classifier.model.features.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


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
    batched, context = run(handler, bodies)
    assert calls == [(4, "decoded")]
    handler.classifier.jpeg_batch_device = None
    one_by_one, _ = run(handler, bodies)
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
    batched, context = run(handler, bodies)
    # The batch call fails, each JPEG is tried alone on the device, the bad one falls back to Pillow's answer.
    assert calls[0] == (3, "RuntimeError") and calls[1:] == [(1, "decoded"), (1, "RuntimeError"), (1, "decoded")]
    handler.classifier.jpeg_batch_device = None
    one_by_one, _ = run(handler, bodies)
    assert context.statuses == {1: (400, "corrupt_image")}
    assert batched == one_by_one


def test_warm_up_runs_the_configured_sizes_at_batch_one_and_batch_size(demo_handler):
    handler = demo_handler()
    shapes = count_passes(handler)
    handler.classifier.options = handler.classifier.options.__class__(
        **{**handler.classifier.options.to_mapping(), "warmup_sizes": "112x112,160x96"})
    handler.classifier.warm_up(batch_size=4)
    assert shapes == [(1, 3, 112, 112), (4, 3, 112, 112), (1, 3, 96, 160), (4, 3, 96, 160)]
    assert handler.classifier.clock.counts["passes"] == 0  # warm-up is not counted as traffic


def test_stage_metrics_are_added_once_per_batch(demo_handler):
    handler = demo_handler()
    bodies = [encode(make_photo(112, 112, seed=1), "JPEG"), encode(make_photo(96, 80, seed=2), "PNG"), b"junk"]
    _, context = run(handler, bodies)
    added = {name: (value, unit, kind) for name, value, unit, kind in context.metrics.added}
    assert len(context.metrics.added) == len(added)  # each counter once per batch
    assert set(added) == set(STAGE_METRICS.values()) | set(COUNT_METRICS.values())
    assert all(kind == "COUNTER" for _, _, kind in added.values())
    assert added["ImagesClassified"][0] == 2 and added["RequestsRefused"][0] == 1
    assert added["ForwardPasses"][0] == 2  # two sizes, two passes
    assert all(added[name][0] > 0 and added[name][1] == "ms" for name in STAGE_METRICS.values())


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
    answers, _ = run(bucketed, bodies)
    assert sorted(shapes) == [(1, 3, 112, 224), (3, 3, 112, 112)]
    assert [a["input_size"] for a in answers] == [[112, 112], [112, 112], [112, 112], [112, 224]]
    exact_answers, _ = run(exact, bodies)
    # Already at a bucket's size: the exact answer (up to float summation order in a larger batch).
    assert [p["index"] for p in answers[0]["predictions"]] == [p["index"] for p in exact_answers[0]["predictions"]]
    assert all(abs(a["probability"] - b["probability"]) < 1e-5
               for a, b in zip(answers[0]["predictions"], exact_answers[0]["predictions"]))
    assert exact_answers[1]["input_size"] == [104, 120]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="inductor needs a C++ compiler")
def test_compiled_model_answers_like_eager_and_compiles_only_warm_up_sizes_within_the_bound(demo_handler):
    """The slowest test here (tens of seconds): torch.compile for real, on the demo model."""
    from anysize.compiled_model import SizeBoundedCompile
    from anysize.vgg_models import ScoreMap

    model = demo_handler().classifier.model
    compiled = SizeBoundedCompile(ScoreMap(model), max_sizes=1)  # what an fcn archive compiles and serves

    def check(batch, height, width):
        x = torch.randn(batch, 3, height, width)
        with torch.inference_mode():
            assert torch.allclose(compiled(x), model.class_score_map(x), atol=1e-4, rtol=1e-4)

    check(2, 112, 112)  # warm-up: compiled
    check(2, 96, 128)  # warm-up, but over max_sizes: eager
    compiled.seal()
    check(3, 112, 112)  # traffic at a compiled size, another batch size: the same graph
    check(2, 128, 96)  # traffic at a new size after warm-up: eager, never a compile inside a request
    assert compiled.compiled_sizes == {(112, 112)}
    assert compiled.eager_calls == 2


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
