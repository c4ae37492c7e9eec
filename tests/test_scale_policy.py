"""Which sizes an image is fed at (working range, native, multi-scale, flip), how score maps are aggregated, and
reduced-size JPEG decoding: the policy functions alone, then through the handler on the shipped demo model."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from helpers import MockContext, demo_model_dir, encode, make_photo, to_input
from PIL import Image

from anysize.handler import SizeAgnosticVGGHandler
from anysize.handler_config import HandlerOptions
from anysize.image_decoding import decode_views, network_size
from anysize.scale_policy import combine_views, parse_range, parse_scales, view_sizes, working_size
from anysize.vgg_models import AGGREGATIONS, aggregate, load_model
from anysize.weights import read_state_dict
from anysize_tools.paths import DEMO

MAX_PIXELS, MIN_SIDE = 4_194_304, 32


def sizes(width, height, policy="working", working=(56, 448), scales=()):
    return view_sizes(width, height, policy, working, scales, MAX_PIXELS, MIN_SIDE)


def test_an_image_inside_the_working_range_is_fed_at_its_own_size():
    for size in ((56, 56), (640, 448), (448, 3000), (300, 200), (100, 56)):
        assert sizes(*size) == [size]


def test_an_image_outside_the_working_range_is_rescaled_into_it_with_its_aspect():
    assert sizes(4032, 3024) == [(597, 448)]
    assert sizes(3024, 4032) == [(448, 597)]
    assert sizes(1920, 1080) == [(796, 448)]
    assert sizes(28, 28) == [(56, 56)]
    assert sizes(48, 96) == [(56, 112)]
    assert working_size(900, 900, (56, 448)) == (448, 448)


def test_native_keeps_the_plain_contract_and_limits_always_apply():
    assert sizes(4032, 3024, policy="native") == [network_size(4032, 3024, MAX_PIXELS, MIN_SIDE)]
    assert sizes(20, 20, policy="native") == [(32, 32)]
    assert sizes(28, 28, working=None) == [(32, 32)]  # no range declared: working = native
    # a strip whose shorter side is in range but whose pixels are over max_pixels is still capped
    (width, height), = sizes(448, 40_000)
    assert width * height <= MAX_PIXELS


def test_multi_scale_views_are_one_per_distinct_scale_main_first():
    assert sizes(640, 480, scales=(224, 448, 448)) == [(299, 224), (597, 448)]
    assert sizes(640, 480, policy="native", scales=(112,)) == [(149, 112)]


@pytest.mark.parametrize("text", ["448-56", "56", "a-b", "0-10", "56-448-900"])
def test_bad_working_ranges_are_refused(text):
    with pytest.raises(ValueError):
        parse_range(text)


def test_bad_scale_configuration_is_refused_when_the_archive_is_built():
    assert parse_range("56-448") == (56, 448) and parse_range("") is None
    assert parse_scales("224, 448") == (224, 448) and parse_scales("") == () == parse_scales("None")
    for bad in ({"working_scale": "448-56"}, {"working_scale": "16-448"}, {"working_scale": "56-4096"},
                {"scales": "16,224"}, {"scales": "a,b"}, {"scale_policy": "zoom"}, {"aggregation": "median"}):
        with pytest.raises(ValueError):
            HandlerOptions(arch="demo", head="fcn", **bad)
    with pytest.raises(ValueError, match="fcn head"):
        HandlerOptions(arch="demo", head="adaptive", aggregation="max")


def test_aggregations_reduce_the_score_map_as_defined():
    score_map = torch.randn(2, 10, 3, 4)
    flat = score_map.flatten(2)
    assert torch.allclose(aggregate(score_map, "mean"), flat.mean(2))
    assert torch.equal(aggregate(score_map, "max"), flat.max(2).values)
    assert torch.allclose(aggregate(score_map, "lse"), torch.log(torch.exp(flat).mean(2)), atol=1e-6)
    one = score_map[:, :, :1, :1]  # a single window: every aggregation is that window's scores
    assert all(torch.allclose(aggregate(one, a), one.flatten(1)) for a in AGGREGATIONS)
    with pytest.raises(ValueError):
        aggregate(score_map, "median")


def test_a_corrupt_png_is_still_refused_when_views_are_planned():
    """Planning must not decode a PNG before decode_pixels does (Pillow then swallows a broken stream)."""
    from anysize.request_errors import RequestError

    body = bytearray(encode(make_photo(64, 48, seed=2), "PNG"))
    start = body.index(b"IDAT") + 40
    body[start:start + 20] = bytes(20)
    with pytest.raises(RequestError) as raised:
        decode_views(bytes(body), lambda w, h: [(w, h)], 16 * MAX_PIXELS)
    assert raised.value.code == "corrupt_image"


def test_large_jpegs_are_decoded_at_reduced_size_but_fed_at_the_planned_size():
    photo = make_photo(1600, 1200, seed=3)
    body = encode(photo, "JPEG", quality=92)
    plan = lambda w, h: [(400, 300)]  # noqa: E731
    reduced, = decode_views(body, plan, 16 * MAX_PIXELS)
    full, = decode_views(body, plan, 16 * MAX_PIXELS, reduce_jpeg=False)
    assert reduced.shape == full.shape == (300, 400, 3)
    # DCT scaling then a small bicubic shrink against a full decode then a 4x bicubic shrink: close, not equal
    difference = (reduced.float() - full.float()).abs()
    assert 0 < difference.mean() < 3 and difference.max() < 60


def test_an_exif_rotated_photo_is_planned_upright():
    from PIL import Image as PILImage

    stored = make_photo(800, 600, seed=4)  # stored landscape, displayed portrait (orientation 6)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    body = encode(stored, "JPEG", quality=90, exif=exif.tobytes())
    planned = []
    views = decode_views(body, lambda w, h: planned.append((w, h)) or [(150, 200)], 16 * MAX_PIXELS)
    assert planned == [(600, 800)] and views[0].shape == (200, 150, 3)
    from PIL import ImageOps

    upright = ImageOps.exif_transpose(PILImage.open(io.BytesIO(body))).resize((150, 200), Image.Resampling.BICUBIC)
    difference = (views[0].float() - torch.from_numpy(np.asarray(upright)).float()).abs()
    assert difference.mean() < 4  # the same picture, turned upright (a wrong turn differs by tens of levels)
    sideways = torch.from_numpy(np.asarray(stored.resize((150, 200), Image.Resampling.BICUBIC))).float()
    assert (views[0].float() - sideways).abs().mean() > 10


# ------------------------------------------------------------------------------- through the demo handler
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo_model_dir(tmp_path_factory.mktemp("demo_scale_dir"))


def make_handler(demo_dir, head="fcn", **options):
    config = {"batchSize": 8, "handler": {"arch": "demo", "head": head, "weights": "shipped demo",
                                          "weights_file": "demo-vgg.pth", "topk": 10, "warmup_sizes": "",
                                          "working_scale": "56-448", **options}}
    handler = SizeAgnosticVGGHandler()
    handler.initialize(MockContext(demo_dir, config, model_name="demo-test"))
    return handler


def answer(handler, body, **query):
    context = MockContext(None, None, model_name="demo-test")
    out = json.loads(handler.handle([{"body": body, **{k: str(v).encode() for k, v in query.items()}}], context)[0])
    assert not context.statuses, out
    return out


def distribution(response) -> torch.Tensor:
    probabilities = torch.zeros(10)
    for prediction in response["predictions"]:
        probabilities[prediction["index"]] = prediction["probability"]
    return probabilities


def test_the_response_says_what_was_applied(demo_dir):
    handler = make_handler(demo_dir)
    body = encode(make_photo(1000, 750, seed=5), "PNG")
    response = answer(handler, body)
    assert response["input_size"] == [448, 597] and response["scales"] == [[448, 597]]
    assert response["scale_policy"] == "working" and response["flip"] is False and response["aggregation"] == "mean"
    response = answer(handler, body, scales="112,224", flip="true", aggregation="max")
    assert response["scale_policy"] == "multi-scale" and response["scales"] == [[112, 149], [224, 299]]
    assert response["flip"] is True and response["aggregation"] == "max"
    assert answer(handler, body, scale_policy="native")["input_size"] == [750, 1000]


def test_multi_scale_is_the_mean_of_the_single_scale_probabilities(demo_dir):
    handler = make_handler(demo_dir, aggregation="max")
    body = encode(make_photo(300, 200, seed=6), "PNG")
    together = distribution(answer(handler, body, scales="64,96,160"))
    alone = [distribution(answer(handler, body, scales=str(s))) for s in (64, 96, 160)]
    assert torch.allclose(together, sum(alone) / 3, atol=1e-5)
    assert not torch.allclose(alone[0], alone[2], atol=1e-3)  # the scales do disagree, so the mean means something


def test_a_panorama_under_the_archive_defaults_drops_its_largest_views_instead_of_being_refused(demo_dir):
    handler = make_handler(demo_dir, scales="112,224,448,672", flip="true", view_aggregation="max")
    response = answer(handler, encode(make_photo(1600, 100, seed=3), "PNG"))
    assert response["scales"] == [[112, 1792], [224, 3584], [448, 7168]]  # with the 672 view: over 4 x max_pixels


@pytest.mark.parametrize("how, best", [("max", 1), ("top2", 2)])
def test_max_and_top2_are_the_mean_of_each_classs_best_views_renormalised(demo_dir, how, best):
    handler = make_handler(demo_dir, aggregation="max", view_aggregation=how)
    body = encode(make_photo(300, 200, seed=6), "PNG")
    response = answer(handler, body, scales="64,96,160")
    assert response["view_aggregation"] == how
    alone = torch.stack([distribution(answer(handler, body, scales=str(s))) for s in (64, 96, 160)])
    chosen = alone.sort(0, descending=True).values[:best].mean(0)
    assert torch.allclose(distribution(response), chosen / chosen.sum(), atol=1e-5)
    mean = distribution(answer(handler, body, scales="64,96,160", view_aggregation="mean"))
    assert torch.allclose(mean, alone.mean(0), atol=1e-5) and not torch.allclose(mean, chosen / chosen.sum(), atol=1e-3)


def test_one_confident_view_wins_max_but_not_top2_against_two_that_agree():
    stray, agree = [0.9, 0.1, 0.0], [0.2, 0.8, 0.0]  # a small view sure of class 0; a view and its mirror: class 1
    rows = torch.tensor([stray, agree, agree])
    assert int(combine_views(rows, "max").argmax()) == 0
    assert int(combine_views(rows, "top2").argmax()) == 1
    assert torch.allclose(combine_views(rows[:1], "top2"), rows[0])  # one view: that view's answer


def test_combining_views_by_an_unknown_rule_is_refused():
    with pytest.raises(ValueError):
        combine_views(torch.ones(2, 3) / 3, "median")
    with pytest.raises(ValueError):
        HandlerOptions(arch="demo", head="fcn", view_aggregation="median")


def test_flip_averages_the_image_and_its_mirror(demo_dir):
    handler = make_handler(demo_dir, head="adaptive")
    photo = make_photo(240, 180, seed=7)
    both = distribution(answer(handler, encode(photo, "PNG"), flip="true"))
    plain = distribution(answer(handler, encode(photo, "PNG")))
    mirrored = distribution(answer(handler, encode(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")))
    assert torch.allclose(both, (plain + mirrored) / 2, atol=1e-5)


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_each_aggregation_equals_its_direct_computation(demo_dir, how):
    handler = make_handler(demo_dir)
    photo = make_photo(320, 256, seed=8)  # a 10x8 feature map: 4x2 windows of fc6
    model = load_model("demo", "fcn", read_state_dict(DEMO / "demo-vgg.pth"))
    with torch.no_grad():
        score_map = model.class_score_map(to_input(np.asarray(photo)))
    assert score_map.shape[-2:] == (2, 4)
    flat = score_map.flatten(2)
    logits = {"mean": flat.mean(2), "max": flat.max(2).values, "lse": torch.logsumexp(flat, 2) - math.log(8)}[how]
    expected = torch.softmax(logits, 1)[0]
    got = distribution(answer(handler, encode(photo, "PNG"), aggregation=how))
    assert torch.allclose(got, expected, atol=1e-5)


def test_views_of_many_requests_share_forward_passes(demo_dir):
    handler = make_handler(demo_dir)
    passes = []
    handler.classifier.model.features.register_forward_hook(lambda m, args, out: passes.append(tuple(args[0].shape)))
    rows = [{"body": encode(make_photo(300, 200, seed=s), "PNG"), "scales": b"64,96", "flip": b"yes"}
            for s in range(3)]
    rows.append({"body": encode(make_photo(96, 64, seed=9), "PNG"), "scale_policy": b"native",
                 "aggregation": b"lse"})  # its one view has the size of the others' smaller scale
    context = MockContext(None, None, model_name="demo-test")
    answers = [json.loads(a) for a in handler.handle(rows, context)]
    assert not context.statuses and all(a["predictions"] for a in answers)
    assert sorted(passes) == [(6, 3, 96, 144), (7, 3, 64, 96)]
