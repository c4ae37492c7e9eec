"""Hardening, against a real TorchServe serving the shipped demo model: the hostile corpus alone and mixed into
batches, token authorization and key rotation, a worker killed under load, and out-of-memory in a worker.

Every answer is checked for its documented status and JSON error, and a normal request right after each bad one
must get exactly the answer it got before any bad input arrived.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from anysize.stage_metrics import batch_records
from anysize_tools.archive import build, demo_spec
from anysize_tools.auth import bearer
from anysize_tools.hostile_corpus import cases, picture, saved
from anysize_tools.kill_worker import kill_under_load
from anysize_tools.torchserve import TorchServe

pytestmark = pytest.mark.integration


RESPONSE_TIMEOUT = 60  # seconds, the archives' responseTimeout: every answer must come within it
CASES = cases()
GOOD = saved(picture(112, 112, 21), "PNG")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """demo-fcn batches up to 4 requests within 100 ms; demo-adaptive is the one the memory test starves."""
    store = tmp_path_factory.mktemp("hardening_store")
    for head, batch, delay in (("fcn", 4, 100), ("adaptive", 1, 1)):
        build(demo_spec(head, store, batch_size=batch, max_batch_delay=delay, response_timeout=RESPONSE_TIMEOUT,
                        handler={"scale_policy": "native", "scales": "", "flip": False}))  # the corpus's sizes as sent
    instance = TorchServe(tmp_path_factory.mktemp("hardening_ts"), store,
                          ["demo-fcn=demo-fcn.mar", "demo-adaptive=demo-adaptive.mar"], free_ports=True).start()
    try:
        instance.wait_ready(["demo-fcn", "demo-adaptive"], timeout=300)
        yield instance
    finally:
        instance.stop()


def post(server, model="demo-fcn", headers=None, timeout=RESPONSE_TIMEOUT + 10, **kwargs):
    headers = {**server.headers("inference"), **(headers or {})}
    return requests.post(f"{server.url('inference')}/predictions/{model}", headers=headers, timeout=timeout,
                         **kwargs)


def same_answer(got: dict, expected: dict) -> bool:
    """Equal labels and order; probabilities within 1e-5 (a batch of several images may run other kernels)."""
    pairs = list(zip(got["predictions"], expected["predictions"]))
    return ({k: v for k, v in got.items() if k != "predictions"} == {k: v for k, v in expected.items()
                                                                      if k != "predictions"}
            and len(pairs) == len(expected["predictions"])
            and all(a["index"] == b["index"] and abs(a["probability"] - b["probability"]) <= 1e-5 for a, b in pairs))


def good_answer(server, model="demo-fcn"):
    answer = post(server, model, data=GOOD, headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def reference(server):
    """The good image's answer before any bad input: every later answer to it must be identical."""
    return good_answer(server)


def check_case(case, answer, elapsed):
    assert elapsed < RESPONSE_TIMEOUT, f"{case.name} took {elapsed:.1f} s"
    assert answer.status_code == case.status, f"{case.name}: {answer.status_code} {answer.text[:300]}"
    if case.status == 200:
        body = answer.json()
        assert body["predictions"] and body["model"] == "demo-fcn"
        if case.input_size:
            assert tuple(body["input_size"]) == case.input_size, case.name
    elif case.error is not None:
        body = answer.json()
        assert body["error"] == case.error and body["message"], f"{case.name}: {body}"
    else:  # TorchServe's frontend answered before any worker: its 413 for an oversized body has an empty body
        assert answer.content == b"" or json.loads(answer.text)["code"] == case.status, case.name


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 30 and len({case.name for case in CASES}) == len(CASES)
    assert {case.status for case in CASES} >= {200, 400, 413, 415}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_input_gets_its_documented_answer_and_the_server_answers_the_next_one(server, reference, case):
    started = time.monotonic()
    answer = post(server, **case.request_kwargs())
    check_case(case, answer, time.monotonic() - started)
    assert same_answer(good_answer(server), reference)


def test_the_corpus_sent_with_every_option_gets_the_same_answers(server, reference):
    """The per-request options path (working range, multi-scale views, mirrors, another aggregation) meets the
    same bad inputs: every case keeps its documented status and error, and the good image's answer is unchanged."""
    options = {"X-Scale-Policy": "working", "X-Scales": "64,96", "X-Flip": "true", "X-Aggregation": "max",
               "X-View-Aggregation": "max", "X-Topk": "3"}
    for case in CASES:
        kwargs = case.request_kwargs()
        started = time.monotonic()
        answer = post(server, **{**kwargs, "headers": {**kwargs["headers"], **options}})
        check_case(dataclasses.replace(case, input_size=None), answer, time.monotonic() - started)
        if case.status == 200:
            assert answer.json()["scale_policy"] == "multi-scale" and len(answer.json()["predictions"]) == 3
    assert same_answer(good_answer(server), reference)


def test_the_corpus_inside_every_several_image_form_fails_only_its_own_image(server, reference):
    """Each case whose point is its bytes travels as the second image of a request beside the good one: in JSON
    instances, in multipart files and through OIP v2 (base64 and binary). The case's image gets its documented
    status and error (OIP, which has no per-image error, refuses the request with it); the good image keeps its
    answer; and the server answers the next plain request as before."""
    good64 = base64.b64encode(GOOD).decode()
    inference = server.url("inference")
    for case in [case for case in CASES if case.travels_as_image]:
        status, error = case.as_image
        body = case.body()
        started = time.monotonic()
        listed = post(server, json={"instances": [{"b64": good64}, {"b64": base64.b64encode(body).decode()}]})
        files = post(server, files={"first": ("good.png", GOOD, "image/png"),
                                    "second": ("case.bin", body, "application/octet-stream")})
        for answer in (listed, files):
            assert answer.status_code == 200, (case.name, answer.text[:300])
            items = answer.json()
            assert same_answer(items[0], reference), case.name
            if status == 200:
                assert items[1]["predictions"], case.name
            else:
                assert (items[1]["status"], items[1]["error"]) == (status, error), (case.name, items[1])
        blob = b"".join(struct.pack("<I", len(image)) + image for image in (GOOD, body))
        header = json.dumps({"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(blob)}}]}).encode()
        binary = requests.post(f"{inference}/v2/models/demo-fcn/infer", data=header + blob, timeout=RESPONSE_TIMEOUT,
                               headers={**server.headers("inference"),
                                        "Inference-Header-Content-Length": str(len(header))})
        document = {"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES",
                                "data": [good64, base64.b64encode(body).decode()]}]}
        in_json = requests.post(f"{inference}/v2/models/demo-fcn/infer", json=document, timeout=RESPONSE_TIMEOUT,
                                headers=server.headers("inference"))
        for answer in (binary, in_json):
            assert answer.status_code == status, (case.name, answer.text[:300])
            if status == 200:
                assert answer.json()["outputs"][0]["shape"][0] == 2, case.name
            else:
                assert answer.json()["error"].startswith(f"{error}: image 1 of 2"), (case.name, answer.text[:300])
        assert time.monotonic() - started < 4 * RESPONSE_TIMEOUT, case.name
        assert same_answer(good_answer(server), reference), case.name


def test_bad_inputs_mixed_into_batches_leave_the_good_ones_alone(server, reference):
    """Every case travels with good images in batches of up to four; each gets its own answer."""
    model_log = server.workdir / "logs" / "model_log.log"
    offset = model_log.stat().st_size
    small = [case for case in CASES if case.name != "over-max-request-size"]
    jobs = [("good", None)] * len(small) + [("case", case) for case in small]
    jobs = [job for pair in zip(jobs[:len(small)], jobs[len(small):]) for job in pair]  # good, bad, good, bad...

    def send(job):
        kind, case = job
        started = time.monotonic()
        if kind == "good":
            return job, post(server, data=GOOD, headers={"Content-Type": "image/png"}), time.monotonic() - started
        return job, post(server, **case.request_kwargs()), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, jobs))
    for (kind, case), answer, elapsed in results:
        if kind == "good":
            assert answer.status_code == 200 and same_answer(answer.json(), reference)
        else:
            check_case(case, answer, elapsed)
    mixed = [batch for batch in batch_records(model_log.read_text(errors="replace")[offset:])
             if batch.answered and batch.refused]
    assert mixed, "no batch held both answered and refused requests"


def batches_after_a_marker(server, deadline_s: float = 30) -> int:
    """Batch lines in the model log once one more authorised request's line has landed there. The frontend copies
    worker output to the log asynchronously but in order, so every earlier request's line has landed too."""
    model_log = server.workdir / "logs" / "model_log.log"
    seen = len(batch_records(model_log.read_text(errors="replace")))
    assert post(server, data=GOOD, headers={"Content-Type": "image/png"}).status_code == 200
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        count = len(batch_records(model_log.read_text(errors="replace")))
        if count > seen:
            return count
        time.sleep(0.05)
    raise AssertionError(f"the marker request's batch line never reached the log within {deadline_s} s")


def test_requests_without_or_with_a_wrong_key_run_nothing(server):
    before = batches_after_a_marker(server)
    assert oct((server.workdir / "key_file.json").stat().st_mode & 0o777) == "0o600"  # keys readable by owner only
    inference, management = server.url("inference"), server.url("management")
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "wrong-key"}):
        for method, url in (("POST", f"{inference}/predictions/demo-fcn"), ("GET", f"{inference}/ping"),
                            ("GET", f"{management}/models"), ("PUT", f"{management}/models/demo-fcn?min_worker=3"),
                            ("POST", f"{management}/token?type=inference")):
            answer = requests.request(method, url, data=GOOD, headers=headers, timeout=30)
            # TorchServe words it "Token Authorization failed", or "Token Authentication failed" on the token API
            assert answer.status_code == 400 and "Token Auth" in answer.text, (method, url, answer.text)
    assert batches_after_a_marker(server) == before + 1  # only the marker's batch: no refused image reached it
    assert len(server.workers("demo-fcn")) == 1  # the refused scale-up changed nothing


def test_inference_key_rotation(server, reference):
    old = server.keys()["inference"]
    # The token API takes the third key of key_file.json, "API", not the management key.
    api_key = server.keys()["API"]
    with_management_key = requests.post(f"{server.url('management')}/token", params={"type": "inference"},
                                        headers=server.headers("management"), timeout=30)
    assert with_management_key.status_code == 400 and server.keys()["inference"] == old
    rotated = requests.post(f"{server.url('management')}/token", params={"type": "inference"},
                            headers=bearer(api_key), timeout=30)
    assert rotated.status_code == 200, rotated.text
    new = server.keys()["inference"]  # TorchServe rewrites key_file.json
    assert new != old
    url = f"{server.url('inference')}/predictions/demo-fcn"
    stale = requests.post(url, data=GOOD, headers=bearer(old), timeout=30)
    assert stale.status_code == 400
    fresh = requests.post(url, data=GOOD, headers=bearer(new), timeout=30)
    assert fresh.status_code == 200 and same_answer(fresh.json(), reference)


def test_a_killed_worker_is_restarted_and_then_every_request_succeeds(server, reference):
    """Three clients keep sending while the worker is SIGKILLed. Only the requests the worker held can fail: TorchServe
    answers those it was computing (or handed it as it died) with "Worker died." as 507 or 500 (a race in its
    frontend, docs/reliability.md) and, in 0.12, drops the ones its worker thread had already taken for the next batch
    (no answer: the client's timeout ends them). Every request after the restart succeeds."""
    clients = 3
    (worker,) = server.workers("demo-fcn")
    run = kill_under_load(lambda timeout: post(server, data=GOOD, headers={"Content-Type": "image/png"},
                                               timeout=timeout), int(worker["pid"]), clients=clients)
    print(f"worker killed: {run.summary()}")
    assert run.recovered_at is not None, "no answer within 60 s of the kill"
    # WorkerThread.run's finally answers the held batch with 500, or 413 (which RestJob.sendError sends as 507) when
    # the JVM has already reaped the worker and reads its exit value 137; nothing else is a worker death.
    assert all(o[2] in ("507 Worker died.", "500 Worker died.", "timeout") for o in run.failed), run.failed
    # Only requests sent before the service was back can fail, and few: those the dying worker held or was given.
    assert all(sent < run.recovered_at for sent, *_ in run.failed)
    assert len(run.failed) <= 2 * clients
    (restarted,) = server.workers("demo-fcn")
    assert restarted["pid"] != worker["pid"] and restarted["status"] == "READY"
    answers = [post(server, data=GOOD, headers={"Content-Type": "image/png"}) for _ in range(5)]
    assert all(answer.status_code == 200 and same_answer(answer.json(), reference) for answer in answers)


def test_out_of_memory_in_the_worker_answers_507_and_the_worker_keeps_serving(server):
    small = saved(picture(96, 96, 22), "PNG")
    large = saved(picture(1600, 1600, 23), "PNG")
    before = good_answer(server, "demo-adaptive")
    (worker,) = server.workers("demo-adaptive")
    process = psutil.Process(int(worker["pid"]))
    limits = process.rlimit(psutil.RLIMIT_AS)
    # Room for the small image's forward pass, not for the large one's (its first feature map alone is 80 MB).
    process.rlimit(psutil.RLIMIT_AS, (process.memory_info().vms + 48 * 2**20, limits[1]))
    try:
        starved = post(server, "demo-adaptive", data=large, headers={"Content-Type": "image/png"})
        assert starved.status_code == 507, starved.text
        assert starved.json()["error"] == "out_of_memory"
        assert "classify this image" in starved.json()["message"]  # it was the forward pass, not the decoding
        assert post(server, "demo-adaptive", data=GOOD).json() == before
    finally:
        process.rlimit(psutil.RLIMIT_AS, limits)
    assert post(server, "demo-adaptive", data=large).status_code == 200  # with its memory back, it fits
    assert post(server, "demo-adaptive", data=small).status_code == 200
    assert server.workers("demo-adaptive")[0]["pid"] == worker["pid"]  # the same worker throughout


def test_the_shipped_configuration_binds_loopback_and_keeps_authorization_on():
    """The tests start TorchServe on free loopback ports; this checks what `make serve` and deployments get."""
    from anysize_tools.torchserve import REPO, read_properties

    properties = read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert properties[key].startswith("http://127.0.0.1:"), key
    assert "grpc_inference_address" not in properties and "grpc_management_address" not in properties  # 127.0.0.1
    assert properties["disable_token_authorization"] == "false" and properties["enable_model_api"] == "false"
