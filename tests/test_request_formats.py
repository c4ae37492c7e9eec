"""Request formats without TorchServe: one image, several images (multipart files, JSON instances), OIP v2 in JSON
and with the binary extension; the limits checked before decoding; each form's answer, and the handler batching
the images of one request like separate requests."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from helpers import MockContext, encode, make_photo

from anysize.request_errors import RequestError
from anysize.request_formats import LIST, OIP, SINGLE, Limits, read_request, write_answer

LIMITS = Limits(max_images=4, max_request_pixels=100_000, bomb_pixels=1_000_000)
PNG = encode(make_photo(64, 48, seed=1), "PNG")
JPEG = encode(make_photo(80, 60, seed=2), "JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def binary_request(images, document=None, name="image"):
    """A body and headers as tritonclient sends them: the JSON header, then each element length-prefixed."""
    blob = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps(document or {"id": "7", "inputs": [{"name": name, "shape": [len(images)], "datatype": "BYTES",
                                                            "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return {"body": bytearray(header + blob)}, {"Inference-Header-Content-Length": str(len(header))}


def test_a_raw_body_or_one_file_is_one_image_with_one_answer():
    request = read_request({"body": bytearray(PNG)}, {"body": {"content-type": "image/png"}}, LIMITS)
    assert (request.form, request.images, request.error) == (SINGLE, [PNG], None)
    request = read_request({"file": PNG, "comment": b"hello"}, {"file": {"content-type": "image/png"}}, LIMITS)
    assert (request.form, request.images) == (SINGLE, [PNG])


def test_several_multipart_files_are_several_images_in_order():
    row = {"b": JPEG, "topk": b"2", "a": PNG, "note": b"text"}
    headers = {"b": {"content-type": "image/jpeg"}, "a": {"content-type": "image/png"}}
    request = read_request(row, headers, LIMITS)
    assert (request.form, request.images) == (LIST, [JPEG, PNG])
    assert request.options["topk"] == b"2" and set(request.option_fields) == {"a", "b"}


def test_json_instances_are_base64_images_with_their_own_errors():
    body = {"instances": [{"b64": b64(PNG)}, {"b64": "not base64!"}, b64(JPEG), {"image": "x"}],
            "parameters": {"topk": 2, "scales": [112, 224], "flip": True}}
    request = read_request({"body": body}, {}, LIMITS)
    assert request.form == LIST and request.images[0] == PNG and request.images[2] == JPEG
    assert [image.code for image in request.images if isinstance(image, RequestError)] == ["bad_image_data"] * 2
    assert request.options == {"topk": "2", "scales": "112,224", "flip": "true"}


@pytest.mark.parametrize("body, code", [
    ({"instances": []}, "bad_json_body"), ({"instances": "x"}, "bad_json_body"),
    ({"instances": [{"b64": "AA=="}], "parameters": [1]}, "bad_json_body"), ({"image": "x"}, "bad_json_body"),
    ([1, 2], "bad_json_body"), (bytearray(b'{"instances": [oops'), "bad_json_body")])
def test_unreadable_json_bodies_are_refused_whole(body, code):
    request = read_request({"body": body}, {}, LIMITS)
    assert request.error is not None and (request.error.status, request.error.code) == (400, code)


def test_oip_json_with_base64_data_and_parameters():
    document = {"id": 42, "parameters": {"topk": 3}, "inputs": [
        {"name": "whatever", "shape": [2], "datatype": "BYTES", "data": [b64(PNG), b64(JPEG)]}],
        "outputs": [{"name": "labels"}, {"name": "probabilities"}]}
    for body in (document, bytearray(json.dumps(document).encode())):  # parsed by TorchServe, or not
        request = read_request({"body": body}, {}, LIMITS)
        assert (request.form, request.images, request.oip_id) == (OIP, [PNG, JPEG], "42")
        assert request.options == {"topk": "3"} and request.oip_outputs == ("labels", "probabilities")


def test_oip_binary_extension_reads_length_prefixed_elements():
    row, headers = binary_request([PNG, JPEG])
    request = read_request(row, headers, LIMITS)
    assert (request.form, request.images, request.oip_id, request.error) == (OIP, [PNG, JPEG], "7", None)


@pytest.mark.parametrize("change, code", [
    (lambda d: d["inputs"].append(dict(d["inputs"][0])), "bad_oip_request"),
    (lambda d: d["inputs"][0].update(datatype="UINT8"), "bad_oip_request"),
    (lambda d: d["inputs"][0].update(shape=[3]), "bad_oip_request"),
    (lambda d: d["inputs"][0].update(data="abc"), "bad_oip_request"),
    (lambda d: d["inputs"][0].pop("data"), "bad_oip_request"),
    (lambda d: d.update(outputs=[{"name": "logits"}]), "bad_oip_request"),
    (lambda d: d.update(inputs="x"), "bad_oip_request")])
def test_malformed_oip_requests_get_a_400_naming_the_problem(change, code):
    document = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}]}
    change(document)
    request = read_request({"body": document}, {}, LIMITS)
    assert request.error is not None and (request.error.status, request.error.code) == (400, code)


@pytest.mark.parametrize("mangle, code", [
    (lambda body, n: (body[:-3], n), "bad_binary_data"),  # the last element cut short
    (lambda body, n: (body, str(len(body) + 1)), "bad_binary_header"),  # a header longer than the body
    (lambda body, n: (body, "abc"), "bad_binary_header"),
    (lambda body, n: (body[:int(n)] + b"\x01\x00", n), "bad_binary_data")])  # the length prefix cut off
def test_broken_binary_bodies_get_a_400(mangle, code):
    row, headers = binary_request([PNG])
    body, length = mangle(bytes(row["body"]), headers["Inference-Header-Content-Length"])
    request = read_request({"body": bytearray(body)}, {"Inference-Header-Content-Length": length}, LIMITS)
    assert request.error is not None and (request.error.status, request.error.code) == (400, code)


def test_too_many_images_or_pixels_are_refused_before_decoding():
    request = read_request({"body": {"instances": [b64(PNG)] * 5}}, {}, LIMITS)
    assert (request.error.status, request.error.code) == (413, "too_many_images")
    big = encode(make_photo(400, 300, seed=3), "PNG")  # 120,000 declared pixels: over the limit with the other
    request = read_request({"body": {"instances": [b64(big), b64(PNG)]}}, {}, LIMITS)
    assert (request.error.status, request.error.code) == (413, "too_many_pixels")
    # one image alone is bounded by the per-image limits, not the request's
    assert read_request({"body": bytearray(big)}, {}, LIMITS).error is None


def answer(label="circle"):
    return {"predictions": [{"index": 0, "label": label, "probability": 0.75}, {"index": 3, "label": "square",
                                                                               "probability": 0.25}],
            "scale_policy": "working", "flip": False, "view_aggregation": "mean", "aggregation": "max",
            "input_size": [48, 64], "scales": [[48, 64]]}


def test_each_form_writes_its_own_answer():
    bad = RequestError(400, "not_an_image", "nope")
    single = read_request({"body": bytearray(PNG)}, {}, LIMITS)
    assert write_answer(single, [answer()], "m").body == answer()
    assert write_answer(single, [bad], "m").status == 400
    listed = read_request({"body": {"instances": [b64(PNG), b64(PNG)]}}, {}, LIMITS)
    reply = write_answer(listed, [answer(), bad], "m")
    assert reply.status == 200 and reply.body == [answer(), {"error": "not_an_image", "message": "nope",
                                                             "status": 400}]
    assert write_answer(listed, [bad, bad], "m").status == 400
    oip = read_request({"body": {"id": "x", "inputs": [{"name": "i", "shape": [2], "datatype": "BYTES",
                                                        "data": [b64(PNG)] * 2}]}}, {}, LIMITS)
    reply = write_answer(oip, [answer(), answer("ring")], "demo")
    outputs = {o["name"]: o for o in reply.body["outputs"]}
    assert reply.body["id"] == "x" and reply.body["model_name"] == "demo"
    assert outputs["labels"]["data"] == ["circle", "square", "ring", "square"]
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [2, 2],
                                        "data": [0.75, 0.25, 0.75, 0.25]}
    assert outputs["indices"]["datatype"] == "INT64"
    failed = write_answer(oip, [answer(), bad], "demo")
    assert failed.status == 400 and "image 1 of 2" in failed.body["error"]


def test_the_images_of_one_request_share_passes_and_equal_separate_requests(demo_handler):
    handler = demo_handler("fcn", scale_policy="native", scales="", flip=False)
    first, second = encode(make_photo(96, 64, seed=4), "PNG"), encode(make_photo(96, 64, seed=5), "PNG")
    context = MockContext(None, None)
    separate = [json.loads(out) for out in handler.handle([{"body": first}, {"body": second}], context)]
    passes = handler.classifier.clock.counts["passes"]
    rows = [{"body": {"instances": [{"b64": b64(first)}, {"b64": "%%"}, {"b64": b64(second)}]}},
            {"body": {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": [b64(first), b64(second)]}]}}]
    context = MockContext(None, None)
    listed, oip = [json.loads(out) for out in handler.handle(rows, context)]
    assert handler.classifier.clock.counts["passes"] == passes == 1  # four images of one size: one pass
    assert context.statuses == {}
    assert same(listed[0], separate[0]) and same(listed[2], separate[1]) and listed[1]["error"] == "bad_image_data"
    outputs = {o["name"]: o["data"] for o in oip["outputs"]}
    assert outputs["indices"] == [p["index"] for answer in separate for p in answer["predictions"]]
    assert outputs["probabilities"] == pytest.approx([p["probability"] for answer in separate
                                                      for p in answer["predictions"]], abs=1e-5)


def same(got: dict, expected: dict) -> bool:
    """The same answer; probabilities within 1e-5 (a pass of four images may run other kernels than one of two)."""
    rest = lambda answer: {k: v for k, v in answer.items() if k != "predictions"}  # noqa: E731
    return rest(got) == rest(expected) and [p["index"] for p in got["predictions"]] == [
        p["index"] for p in expected["predictions"]] and [p["probability"] for p in got["predictions"]] == \
        pytest.approx([p["probability"] for p in expected["predictions"]], abs=1e-5)


def test_bad_options_refuse_a_list_or_oip_request_whole(demo_handler):
    handler = demo_handler("fcn")
    rows = [{"body": {"instances": [b64(PNG)], "parameters": {"topk": 99}}},
            {"body": {"parameters": {"aggregation": "median"}, "inputs": [
                {"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}]}}]
    context = MockContext(None, None)
    listed, oip = [json.loads(out) for out in handler.handle(rows, context)]
    assert context.statuses == {0: (400, "bad_option"), 1: (400, "bad_option")}
    assert listed["option"] == "topk" and oip["error"].startswith("bad_option: Option 'aggregation'")


@pytest.mark.parametrize("length", ["²", "9" * 5000, "-1", " ", "0x10"])
def test_hostile_binary_header_lengths_get_a_400(length):
    row, _ = binary_request([PNG])
    request = read_request(row, {"inference-header-content-length": length}, LIMITS)
    assert (request.error.status, request.error.code) == (400, "bad_binary_header")


@pytest.mark.parametrize("body", [
    bytearray(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [[[[[[b64(PNG)]]]]]]}]},
    {"inputs": [{"name": "x", "shape": [10 ** 6] * 10 ** 5, "datatype": "BYTES", "data": []}]},
    {"inputs": [{"name": "x", "shape": [True], "datatype": "BYTES", "data": [b64(PNG)]}]},
    {"inputs": [{"name": "x", "shape": [-1, -1], "datatype": "BYTES", "data": [b64(PNG)]}]},
    {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)], "parameters": [1]}]},
    {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}], "outputs": [
        {"name": "labels"}, {"name": "labels"}]}])
def test_deep_huge_or_odd_json_gets_a_400_quickly(body):
    request = read_request({"body": body}, {}, LIMITS)
    assert request.error is not None and request.error.status == 400, request.error


def test_images_are_counted_before_any_is_decoded():
    for body in ({"instances": [{"b64": "%"}] * 1000},
                 {"inputs": [{"name": "x", "shape": [1000], "datatype": "BYTES", "data": ["%"] * 1000}]}):
        request = read_request({"body": body}, {}, LIMITS)
        assert (request.error.status, request.error.code) == (413, "too_many_images") and request.images == []
    row, headers = binary_request([b""] * 1000)
    assert read_request(row, headers, LIMITS).error.code == "too_many_images"
    # the binary data holding more images than its shape says is refused, not read on
    blob = struct.pack("<I", 1) * 3 + b"x"
    document = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(blob)}}]}
    row, headers = binary_request([], document)
    row["body"] += blob
    assert read_request(row, headers, LIMITS).error.code == "bad_binary_data"


def test_every_multipart_file_holds_its_slot_even_when_torchserve_decoded_it():
    row = {"a": PNG, "b": "some text", "c": {"json": True}, "d": JPEG}  # text/* and JSON parts arrive decoded
    headers = {name: {"content-type": kind} for name, kind in
               (("a", "image/png"), ("b", "text/plain"), ("c", "application/json"), ("d", "image/jpeg"))}
    request = read_request(row, headers, LIMITS)
    assert request.form == LIST and request.images[0] == PNG and request.images[3] == JPEG
    assert [image.code for image in request.images[1:3]] == ["not_an_image", "not_an_image"]


def test_oip_outputs_name_what_comes_back():
    base = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}]}
    request = read_request({"body": {**base, "outputs": [{"name": "heatmap"}]}}, {}, LIMITS)
    assert request.oip_outputs == ("heatmap",) and request.options["heatmap"] == "true"
    request = read_request({"body": {**base, "outputs": [{"name": "labels"}]}}, {}, LIMITS)
    reply = write_answer(request, [{**answer(), "heatmap": {"views": []}}], "m")
    assert [o["name"] for o in reply.body["outputs"]] == ["labels"]
    request = read_request({"body": base}, {}, LIMITS)
    reply = write_answer(request, [{**answer(), "heatmap": {"views": []}, "ignored_parameters": ["top_k"]}], "m")
    assert [o["name"] for o in reply.body["outputs"]] == ["labels", "probabilities", "indices", "heatmap"]
    assert reply.body["parameters"]["ignored_parameters"] == "top_k"


def test_a_list_whose_images_all_fail_takes_the_first_images_status():
    listed = read_request({"body": {"instances": [b64(PNG), b64(PNG)]}}, {}, LIMITS)
    errors = [RequestError(415, "unsupported_format", "svg"), RequestError(400, "not_an_image", "nope")]
    reply = write_answer(listed, errors, "m")
    assert (reply.status, reply.phrase) == (415, "unsupported_format")
    assert [item["status"] for item in reply.body] == [415, 400]


def test_a_failing_reader_fails_only_its_own_request(demo_handler, monkeypatch):
    import anysize.handler as handler_module

    handler = demo_handler("fcn", scale_policy="native", scales="", flip=False)
    real = handler_module.read_request

    def flaky(row, headers, limits):
        if row.get("boom"):
            raise RuntimeError("a bug in a reader")
        return real(row, headers, limits)
    monkeypatch.setattr(handler_module, "read_request", flaky)
    context = MockContext(None, None)
    answers = [json.loads(a) for a in handler.handle([{"body": PNG}, {"body": PNG, "boom": b"1"}], context)]
    assert context.statuses == {1: (500, "request_failed")} and answers[0]["predictions"]


def test_several_images_may_feed_what_one_image_may(demo_handler):
    """Each tiny image's views at three large scales and their mirrors feed 14.7 M pixels, under one image's budget
    (4 x max_pixels = 16.8 M); two in one request would feed twice that: 413 before decoding."""
    handler = demo_handler("fcn")
    tiny = b64(encode(make_photo(32, 32, seed=9), "PNG"))
    options = {"scales": [2048, 1448, 1024], "flip": True}
    context = MockContext(None, None)
    one, two = [json.loads(a) for a in handler.handle([
        {"body": {"instances": [tiny], "parameters": options}},
        {"body": {"instances": [tiny, tiny], "parameters": options}}], context)]
    assert one[0]["scales"] == [[2048, 2048], [1448, 1448], [1024, 1024]]
    assert context.statuses == {1: (413, "too_many_pixels")} and "feed" in two["message"]


def test_heatmaps_are_capped_in_classes_and_answers_in_bytes(demo_handler):
    handler = demo_handler("fcn", scale_policy="native", scales="", flip=False, topk=10)
    body = encode(make_photo(448, 448, seed=10), "PNG")
    context = MockContext(None, None)
    answer = json.loads(handler.handle([{"body": body, "heatmap": b"true"}], context)[0])
    assert len(answer["predictions"]) == 10 and len(answer["heatmap"]["views"][0]["classes"]) == 5
    small = demo_handler("fcn", scale_policy="native", scales="", flip=False, max_response_bytes=2000)
    context = MockContext(None, None)
    answers = [json.loads(a) for a in small.handle([{"body": body, "heatmap": b"true"}, {"body": body}], context)]
    assert context.statuses == {0: (413, "response_too_large")} and answers[1]["predictions"]
