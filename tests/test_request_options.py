"""Per-request options: parsing over the archive's defaults, and a 400 naming the option and its allowed values for
every bad one, without touching the other requests of the batch."""

from __future__ import annotations

import json

import pytest
from helpers import MockContext, demo_model_dir, encode, make_photo

from anysize.handler import SizeAgnosticVGGHandler
from anysize.request_formats import BODY_FIELDS
from anysize.request_errors import RequestError
from anysize.request_options import RequestOptions, option_header, parse_options

FCN = RequestOptions(topk=5, scale_policy="working", scales=(), flip=False, aggregation="mean")
ADAPTIVE = RequestOptions(topk=5, scale_policy="working", scales=(), flip=False, aggregation=None)


def parse(row, defaults=FCN):
    return parse_options(row, defaults, num_classes=10, ignore=BODY_FIELDS)


def test_no_options_means_the_archive_defaults():
    assert parse({"body": b"..."}) == FCN


def test_every_option_is_read_from_bytes_or_text():
    options = parse({"body": b"", "topk": b"3", "scale_policy": "native", "scales": b"224, 448", "flip": b"TRUE",
                     "aggregation": b"lse", "view_aggregation": b"max"})
    assert options == RequestOptions(topk=3, scale_policy="native", scales=(224, 448), flip=True, aggregation="lse",
                                     view_aggregation="max")
    assert parse({"scales": b"none", "flip": b"0"}).scales == () and parse({"flip": b"off"}).flip is False
    upper = parse({"scale_policy": b"Native", "view_aggregation": b"MAX", "aggregation": b"Lse"})
    assert (upper.scale_policy, upper.view_aggregation, upper.aggregation) == ("native", "max", "lse")
    assert parse({"view_aggregation": b"Top2"}).view_aggregation == "top2"


@pytest.mark.parametrize("row,option", [
    ({"topk": b"0"}, "topk"), ({"topk": b"11"}, "topk"), ({"topk": b"three"}, "topk"), ({"topk": b"-1"}, "topk"),
    ({"topk": "²".encode()}, "topk"), ({"topk": b"9" * 5000}, "topk"), ({"scales": b"2 24"}, "scales"),
    ({"scales": "٢٢٤".encode()}, "scales"), ({"scales": b","}, "scales"),
    ({"scale_policy": b"zoom"}, "scale_policy"), ({"scales": b"224,abc"}, "scales"), ({"scales": b"16"}, "scales"),
    ({"scales": b"5000"}, "scales"), ({"scales": b"64,96,128,160,192,224,256"}, "scales"),
    ({"flip": b"maybe"}, "flip"), ({"aggregation": b"median"}, "aggregation"),
    ({"view_aggregation": b"lse"}, "view_aggregation"), ({"scales": b"224" + b" " * 300 + b",junk"}, "scales"),
])
def test_a_bad_value_is_a_400_naming_the_option_and_its_allowed_values(row, option):
    with pytest.raises(RequestError) as raised:
        parse(row)
    error = raised.value
    assert error.status == 400 and error.code == "bad_option"
    body = error.to_json()
    assert body["option"] == option and body["allowed"] and option in body["message"]


def test_options_travel_as_headers_in_any_case_and_a_parameter_wins_over_its_header():
    """Headers are what TorchServe hands over on /predictions/ (it drops the query string there)."""
    headers = {"x-topk": "3", "X-SCALE-POLICY": "native", "X-Scales": "224,448", "x-flip": "yes",
               "X-Aggregation": "max", "x-view-aggregation": "max", "User-Agent": "curl/8",
               "body": {"content-type": "image/jpeg"}}
    options = parse_options({"body": b""}, FCN, 10, ignore=BODY_FIELDS, headers=headers)
    assert options == RequestOptions(topk=3, scale_policy="native", scales=(224, 448), flip=True, aggregation="max",
                                     view_aggregation="max")
    assert parse_options({"topk": b"2"}, FCN, 10, headers={"X-Topk": "4"}).topk == 2
    assert [option_header(name) for name in ("topk", "view_aggregation")] == ["X-Topk", "X-View-Aggregation"]
    with pytest.raises(RequestError) as raised:
        parse_options({}, FCN, 10, headers={"X-Flip": "sometimes"})
    assert raised.value.to_json()["option"] == "flip"


def test_other_parameters_are_listed_as_ignored_not_refused():
    """Clients send extra multipart fields; a misspelt option must still be visible in the answer."""
    options = parse({"body": b"", "top_k": b"3", "comment": b"holiday"})
    assert options.ignored == ("comment", "top_k") and options.topk == FCN.topk


def test_the_adaptive_head_has_no_aggregation_to_choose():
    assert parse({"topk": b"2"}, ADAPTIVE).aggregation is None
    with pytest.raises(RequestError) as raised:
        parse({"aggregation": b"max"}, ADAPTIVE)
    assert raised.value.to_json()["option"] == "aggregation" and "adaptive" in raised.value.message


def test_bad_options_fail_only_their_own_request_of_a_batch(tmp_path):
    handler = SizeAgnosticVGGHandler()
    handler.initialize(MockContext(demo_model_dir(tmp_path), {"handler": {
        "arch": "demo", "head": "fcn", "weights_file": "demo-vgg.pth", "warmup_sizes": "", "topk": 5}}))
    body = encode(make_photo(120, 90, seed=1), "PNG")
    rows = [{"body": body}, {"body": body, "topk": b"many"}, {"body": body, "topk": b"2"},
            {"body": body, "colour": b"red"}, {"body": b"not an image", "topk": b"2"},
            {"body": body, "scales": b"1500,1600,1700,1800", "flip": b"true"}, {"body": body}, {"body": body}]
    context = MockContext(None, None, headers={6: {"X-Topk": "1"}, 7: {"X-Aggregation": "median"}})
    answers = [json.loads(a) for a in handler.handle(rows, context)]
    assert context.statuses == {1: (400, "bad_option"), 4: (400, "not_an_image"), 5: (400, "bad_option"),
                                7: (400, "bad_option")}
    assert len(answers[0]["predictions"]) == 5 and len(answers[2]["predictions"]) == 2
    assert answers[0]["predictions"][:2] == answers[2]["predictions"]
    assert answers[1]["option"] == "topk" and answers[3]["ignored_parameters"] == ["colour"]
    assert answers[5]["option"] == "scales" and "pixels" in answers[5]["allowed"]  # over the per-image view budget
    assert answers[6]["predictions"] == answers[0]["predictions"][:1] and answers[7]["option"] == "aggregation"
