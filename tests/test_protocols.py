"""Every request form through a real TorchServe serving the shipped demo model: the Open Inference Protocol v2 (base64
JSON, and the binary extension sent by tritonclient, a real OIP client), several images per request on
/predictions (JSON instances, multipart files), the v2 health route, and the per-request limits. Each path must
answer what the raw-body path answers for the same image, within 1e-5."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from helpers import encode, make_photo

from anysize_tools.hostile_corpus import png_with_header
from anysize_tools.shape_probe import probe_jpeg

pytestmark = pytest.mark.integration

# Two drawn shapes the study's probe makes (other drawing code than the training data), at two sizes: a 640x480
# webcam frame and a small square, so a request's images do not all share one size.
PICTURES = [probe_jpeg(31, 0, 640, 480), probe_jpeg(31, 1, 224, 224)]


def url(server, path: str) -> str:
    return f"{server.url('inference')}/{path}"


def raw_answers(server, model: str) -> list:
    answers = []
    for body, _ in PICTURES:
        answer = requests.post(url(server, f"predictions/{model}"), data=body, timeout=120,
                               headers={**server.headers("inference"), "Content-Type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    return answers


def columns(answers: list) -> dict:
    """The raw answers as OIP's three outputs, flattened row by row."""
    rows = [answer["predictions"] for answer in answers]
    return {"labels": [p["label"] for row in rows for p in row], "indices": [p["index"] for row in rows for p in row],
            "probabilities": [p["probability"] for row in rows for p in row]}


def assert_same_outputs(outputs: dict, expected: dict, shape: list):
    assert list(outputs["labels"]) == expected["labels"] and list(outputs["indices"]) == expected["indices"]
    assert np.allclose(outputs["probabilities"], expected["probabilities"], atol=1e-5, rtol=0)
    assert shape == [len(PICTURES), len(expected["labels"]) // len(PICTURES)]


def assert_same_answers(got: list, expected: list):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert {k: v for k, v in a.items() if k != "predictions"} == {k: v for k, v in b.items() if k != "predictions"}
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        assert np.allclose([p["probability"] for p in a["predictions"]], [p["probability"] for p in b["predictions"]],
                           atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["fcn", "adaptive"])
def test_every_request_form_answers_what_the_raw_body_answers(demo_server, head):
    model = f"demo-{head}"
    raw = raw_answers(demo_server, model)
    assert [answer["predictions"][0]["index"] for answer in raw] == [label for _, label in PICTURES]
    expected = columns(raw)
    auth = demo_server.headers("inference")

    # OIP v2, base64 in JSON
    document = {"id": "request-1", "inputs": [{"name": "image", "shape": [len(PICTURES)], "datatype": "BYTES",
                                               "data": [base64.b64encode(body).decode() for body, _ in PICTURES]}]}
    answer = requests.post(url(demo_server, f"v2/models/{model}/infer"), json=document, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "request-1" and body["model_name"] == model
    outputs = {o["name"]: o for o in body["outputs"]}
    assert_same_outputs({name: o["data"] for name, o in outputs.items()}, expected, outputs["labels"]["shape"])
    assert body["parameters"]["input_sizes"] == ";".join("x".join(map(str, a["input_size"])) for a in raw)

    # OIP v2, binary tensor data extension, from tritonclient
    client = triton.InferenceServerClient(demo_server.url("inference").removeprefix("http://"))
    tensor = triton.InferInput("IMAGES", [len(PICTURES)], "BYTES")
    tensor.set_data_from_numpy(np.array([body for body, _ in PICTURES], dtype=np.object_), binary_data=True)
    result = client.infer(model, [tensor], request_id="request-2", headers=dict(auth))  # it adds its own to the dict
    assert result.get_response()["id"] == "request-2"
    outputs = {"labels": [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("labels").ravel()],
               "indices": result.as_numpy("indices").ravel().tolist(),
               "probabilities": result.as_numpy("probabilities").ravel()}
    assert_same_outputs(outputs, expected, list(result.as_numpy("probabilities").shape))

    # several images on /predictions: JSON instances, then multipart files under distinct names
    instances = {"instances": [{"b64": base64.b64encode(body).decode()} for body, _ in PICTURES]}
    answer = requests.post(url(demo_server, f"predictions/{model}"), json=instances, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    assert_same_answers(answer.json(), raw)
    files = {f"image{k}": (f"picture{k}.jpg", body, "image/jpeg") for k, (body, _) in enumerate(PICTURES)}
    answer = requests.post(url(demo_server, f"predictions/{model}"), files=files, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    assert_same_answers(answer.json(), raw)


def test_oip_parameters_set_the_options_and_bad_ones_get_the_protocols_error(demo_server):
    auth = demo_server.headers("inference")
    data = [base64.b64encode(PICTURES[1][0]).decode()]
    document = {"parameters": {"topk": 2, "scales": [112, 224], "flip": False, "aggregation": "mean"},
                "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": data}]}
    answer = requests.post(url(demo_server, "v2/models/demo-fcn/infer"), json=document, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["outputs"][0]["shape"] == [1, 2] and body["parameters"]["aggregation"] == "mean"
    assert body["parameters"]["flip"] is False and body["parameters"]["scales"].count("x") == 2
    document["parameters"] = {"topk": 99}
    answer = requests.post(url(demo_server, "v2/models/demo-fcn/infer"), json=document, headers=auth, timeout=120)
    assert answer.status_code == 400 and answer.json()["error"].startswith("bad_option: Option 'topk'")


def test_v2_health_routes_answer_with_the_archives_loaded(demo_server):
    auth = demo_server.headers("inference")
    for route, key in (("v2/health/ready", "ready"), ("v2/health/live", "live")):
        answer = requests.get(url(demo_server, route), headers=auth, timeout=30)
        assert answer.status_code == 200 and answer.json() == {key: True}
    refused = requests.get(url(demo_server, "v2/health/ready"), timeout=30)  # no key: TorchServe's 400
    assert refused.status_code == 400 and "Token Auth" in refused.text
    # TorchServe 0.12 routes no model metadata over HTTP (docs/torchserve-oip-notes.md): the input's name is free
    assert requests.get(url(demo_server, "v2/models/demo-fcn"), headers=auth, timeout=30).status_code == 404


def test_heatmaps_travel_through_torchserve_on_every_path(demo_server):
    auth = demo_server.headers("inference")
    body = PICTURES[0][0]
    answer = requests.post(url(demo_server, "predictions/demo-fcn"), data=body, timeout=120,
                           headers={**auth, "Content-Type": "image/jpeg", "X-Heatmap": "true"})
    assert answer.status_code == 200, answer.text
    heatmap = answer.json()["heatmap"]
    assert [view["size"] for view in heatmap["views"]] == answer.json()["scales"]
    invoked = requests.post(url(demo_server, "models/demo-fcn/invoke?heatmap=true"), data=body, timeout=120,
                            headers={**auth, "Content-Type": "image/jpeg"})
    assert invoked.json()["heatmap"] == heatmap
    document = {"parameters": {"heatmap": True}, "inputs": [
        {"name": "x", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(body).decode()]}]}
    oip = requests.post(url(demo_server, "v2/models/demo-fcn/infer"), json=document, headers=auth, timeout=120)
    outputs = {o["name"]: o for o in oip.json()["outputs"]}
    assert json.loads(outputs["heatmap"]["data"][0]) == heatmap
    refused = requests.post(url(demo_server, "predictions/demo-adaptive"), data=body, timeout=120,
                            headers={**auth, "Content-Type": "image/jpeg", "X-Heatmap": "true"})
    assert refused.status_code == 400 and refused.json()["option"] == "heatmap"


def test_requests_over_the_limits_get_413_before_any_image_is_decoded(demo_server):
    auth = demo_server.headers("inference")
    small = base64.b64encode(encode(make_photo(40, 30, seed=8), "PNG")).decode()
    too_many = {"instances": [{"b64": small}] * 17}  # the archives take 16 per request
    answer = requests.post(url(demo_server, "predictions/demo-fcn"), json=too_many, headers=auth, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"] == "too_many_images"
    # five headers declaring 12 MP each: 60 MP in all, over the 50 MP limit; their pixels do not exist
    declared = png_with_header(4000, 3000)
    blob = b"".join(struct.pack("<I", len(declared)) + declared for _ in range(5))
    header = json.dumps({"inputs": [{"name": "x", "shape": [5], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    answer = requests.post(url(demo_server, "v2/models/demo-fcn/infer"), data=header + blob, timeout=60,
                           headers={**auth, "Inference-Header-Content-Length": str(len(header)),
                                    "Content-Type": "application/octet-stream"})
    assert answer.status_code == 413 and answer.json()["error"].startswith("too_many_pixels")


def test_a_grpc_predictions_call_gets_the_rest_answer(demo_server):
    """TorchServe's inference gRPC API (stubs generated from the proto in its jar) reaches the same handler: the
    map entry ``data`` is the image, other entries are options; the key travels as ``authorization`` metadata."""
    import grpc

    from anysize_tools.grpc_client import predict

    address = f"127.0.0.1:{demo_server.properties['grpc_inference_port']}"
    key = demo_server.keys()["inference"]
    raw = raw_answers(demo_server, "demo-fcn")
    for (body, _), expected in zip(PICTURES, raw):
        assert_same_answers([json.loads(predict(address, "demo-fcn", {"data": body}, key))], [expected])
    answer = json.loads(predict(address, "demo-fcn", {"data": PICTURES[0][0], "topk": b"2"}, key))
    assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in raw[0]["predictions"][:2]]
    with pytest.raises(grpc.RpcError) as refused:
        predict(address, "demo-fcn", {"data": PICTURES[0][0]}, "wrong-key")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
