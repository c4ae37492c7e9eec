"""Real TorchServe on free loopback ports, token authorization on, archives built by the builder from a test
weights file: every served probability is checked against a direct PyTorch computation on the same pixels."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from helpers import decode_rgb, encode, make_photo, reference_probabilities

from anysize.stage_metrics import batch_records
from anysize_tools.archive import ArchiveSpec, build
from anysize_tools.paths import HANDLERS
from anysize_tools.torchserve import TorchServe

pytestmark = pytest.mark.integration
HEADS = ("adaptive", "fcn")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def server(vgg11_weights_file, tmp_path_factory):
    store = tmp_path_factory.mktemp("model_store")
    for head in HEADS:
        # a long batch delay so that concurrent requests reliably meet in one batch
        build(ArchiveSpec(arch="vgg11", head=head, weights=str(vgg11_weights_file), name=f"test-{head}",
                          export_path=store, batch_size=4, max_batch_delay=400))
    instance = TorchServe(tmp_path_factory.mktemp("torchserve"), store,
                          [f"test-{head}=test-{head}.mar" for head in HEADS], free_ports=True).start()
    try:
        instance.wait_ready([f"test-{head}" for head in HEADS], timeout=300)
        yield instance
    finally:
        instance.stop()


def predict(server, head, body, **kwargs):
    headers = {**server.headers("inference"), **kwargs.pop("headers", {})}
    return requests.post(f"{server.url('inference')}/predictions/test-{head}", data=body, headers=headers,
                         timeout=120, **kwargs)


def assert_matches_reference(answer: dict, body: bytes, head: str, reference_model) -> None:
    pixels = decode_rgb(body)
    expected = reference_probabilities(reference_model, head, pixels)
    assert answer["input_size"] == list(pixels.shape[:2])
    assert answer["head"] == head and answer["arch"] == "vgg11"
    assert [p["index"] for p in answer["predictions"]] == torch.topk(expected, 5).indices.tolist()
    for prediction in answer["predictions"]:
        assert abs(prediction["probability"] - expected[prediction["index"]].item()) <= TOLERANCE


CASES = [  # (width, height, format, options): sizes around every boundary of the heads, every accepted format
    (32, 32, "PNG", {}), (211, 97, "JPEG", {"quality": 90}), (224, 224, "PNG", {}), (225, 225, "WEBP",
    {"lossless": True}), (640, 480, "JPEG", {"quality": 85}), (120, 90, "BMP", {}), (100, 100, "TIFF", {}),
    (150, 70, "GIF", {}),
]


@pytest.mark.parametrize("head", HEADS)
def test_served_probabilities_equal_direct_pytorch(server, vgg11_reference, head):
    for seed, (width, height, image_format, options) in enumerate(CASES):
        image = make_photo(width, height, seed=seed)
        body = encode(image.convert("P") if image_format == "GIF" else image, image_format, **options)
        answer = predict(server, head, body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith("application/json")
        assert_matches_reference(answer.json(), body, head, vgg11_reference)


def test_the_worker_runs_the_package_copied_into_the_archive(server):
    """Each worker imports the archive's own anysize/ folder (unpacked by TorchServe beside MAR-INF), not the
    checkout's, although the project is installed in editable mode in the same environment."""
    log = (server.workdir / "logs" / "model_log.log").read_text(errors="replace")
    found = {Path(line.split("worker code from ", 1)[1].strip()) for line in log.splitlines()
             if "worker code from " in line}
    assert len(found) == len(HEADS), found  # one unpacked archive per model
    for package in found:
        assert package.name == "anysize" and (package.parent / "MAR-INF" / "MANIFEST.json").is_file(), package
        assert HANDLERS not in package.parents, package


def test_concurrent_requests_are_batched_and_answered_as_singles(server, vgg11_reference):
    bodies = [encode(make_photo(64, 64, seed=20 + i), "PNG") for i in range(4)]
    bodies += [encode(make_photo(96 + 16 * i, 64, seed=30 + i), "PNG") for i in range(4)]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        answers = list(pool.map(lambda b: predict(server, "fcn", b), bodies))
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        assert_matches_reference(answer.json(), body, "fcn", vgg11_reference)
    batch_sizes = [batch.requests for batch in batch_records((server.workdir / "logs" / "model_log.log").read_text())]
    assert max(batch_sizes) > 1, "no request was ever batched with another"


BAD_INPUTS = [  # (body, extra headers, status, error code)
    (b"", {}, 400, "empty_body"),
    (b"this is not an image", {"Content-Type": "text/plain"}, 400, "not_an_image"),
    (b'{"url": "http://example.com/cat.jpg"}', {"Content-Type": "application/json"}, 400, "bad_json_body"),
    (encode(make_photo(300, 200), "JPEG")[:2000], {}, 400, "corrupt_image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', {}, 415, "unsupported_format"),
]


@pytest.mark.parametrize("head", HEADS)
def test_bad_inputs_get_json_4xx_and_the_server_keeps_answering(server, vgg11_reference, head):
    from anysize_tools.hostile_corpus import png_with_header

    good = encode(make_photo(48, 48, seed=3), "PNG")
    for body, headers, status, code in BAD_INPUTS + [(png_with_header(100_000, 100_000), {}, 413, "image_too_large")]:
        answer = predict(server, head, body, headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
        assert answer.json()["message"]
        after = predict(server, head, good)
        assert after.status_code == 200
        assert_matches_reference(after.json(), good, head, vgg11_reference)


def test_a_batch_mixing_good_and_bad_images_answers_each_on_its_own(server, vgg11_reference):
    good = [encode(make_photo(72, 56, seed=40 + i), "PNG") for i in range(2)]
    requests_ = [(good[0], {}), (b"", {}), (good[1], {}), (b"garbage bytes", {})]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda item: predict(server, "adaptive", item[0], headers=item[1]), requests_))
    assert [a.status_code for a in answers] == [200, 400, 200, 400]
    for body, answer in ((good[0], answers[0]), (good[1], answers[2])):
        assert_matches_reference(answer.json(), body, "adaptive", vgg11_reference)


def test_multipart_fields_data_and_file_are_accepted(server, vgg11_reference):
    body = encode(make_photo(64, 80, seed=50), "JPEG")
    for field in ("data", "file"):
        answer = predict(server, "fcn", None, files={field: ("image.jpg", body, "image/jpeg")})
        assert answer.status_code == 200, answer.text
        assert_matches_reference(answer.json(), body, "fcn", vgg11_reference)
    wrong = predict(server, "fcn", None, files={"picture": ("image.jpg", body, "image/jpeg")})
    assert wrong.status_code == 400 and wrong.json()["error"] == "missing_field"


def test_bodies_over_max_request_size_are_refused_by_the_frontend(server):
    limit = int(server.properties["max_request_size"])
    answer = predict(server, "fcn", b"\0" * (limit + 1024))
    assert answer.status_code == 413


def test_requests_without_the_key_are_refused(server):
    body = encode(make_photo(40, 40), "PNG")
    url = f"{server.url('inference')}/predictions/test-fcn"
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        refused = requests.post(url, data=body, headers=headers, timeout=30)
        assert refused.status_code in (400, 401) and "Token Authorization failed" in refused.text
        listing = requests.get(f"{server.url('management')}/models", headers=headers, timeout=30)
        assert listing.status_code in (400, 401)
    assert requests.get(f"{server.url('management')}/models", headers=server.headers("management"),
                        timeout=30).status_code == 200


def test_model_registration_api_is_off(server):
    """With enable_model_api=false TorchServe refuses registering and unregistering as 405, even with the key."""
    management, headers = server.url("management"), server.headers("management")
    register = requests.post(f"{management}/models", params={"url": "test-fcn.mar"}, headers=headers, timeout=30)
    unregister = requests.delete(f"{management}/models/test-fcn", headers=headers, timeout=30)
    assert (register.status_code, unregister.status_code) == (405, 405)
    assert server.model_ready("test-fcn")
