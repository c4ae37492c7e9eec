"""Locust load test for /predictions/<model> (or the other request forms): closed-loop users POST cached images of
one workload profile.

Run through `make loadtest` (loadtests/loadtest.py adds the report), or directly, e.g.

    locust -f loadtests/locustfile.py --headless -u 4 -r 2 -t 30s --host http://127.0.0.1:8080 \
        --model demo-fcn --workload mixed
    ... --request-form oip-binary --images-per-request 4     # the same images through OIP v2, four per request

Each resolution class is its own request name, so Locust's statistics give latency per resolution. A request
counts as failed unless it gets 200 with a JSON body holding predictions. With --bad-share P, a request is with
probability P a case of the hostile corpus (anysize_tools/hostile_corpus.py) instead, and fails unless it gets the
answer documented for that case (the soak, loadtests/soak.py, uses this). With token authorization on, the key is
read from --key-file (TorchServe's key_file.json; `make serve` writes .serve/key_file.json) or TS_INFERENCE_KEY.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from pathlib import Path
from typing import Dict, List, Tuple

from locust import FastHttpUser, constant, events, task

from anysize_tools.auth import bearer, inference_key
from anysize_tools.hostile_corpus import Case, cases
from anysize_tools.paths import SERVE_DIR
from anysize_tools.workloads import DEFAULT_CACHE, PROFILES, CachedImage, load_images

DEFAULT_KEY_FILE = SERVE_DIR / "key_file.json"


def raw_request(bodies: List[bytes], content_type: str) -> Tuple[bytes, Dict[str, str]]:
    return bodies[0], {"Content-Type": content_type}


def oip_json_request(bodies: List[bytes], content_type: str) -> Tuple[bytes, Dict[str, str]]:
    document = {"inputs": [{"name": "images", "shape": [len(bodies)], "datatype": "BYTES",
                            "data": [base64.b64encode(body).decode() for body in bodies]}]}
    return json.dumps(document).encode(), {"Content-Type": "application/json"}


def oip_binary_request(bodies: List[bytes], content_type: str) -> Tuple[bytes, Dict[str, str]]:
    blob = b"".join(struct.pack("<I", len(body)) + body for body in bodies)
    header = json.dumps({"inputs": [{"name": "images", "shape": [len(bodies)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return header + blob, {"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(len(header))}


def instances_request(bodies: List[bytes], content_type: str) -> Tuple[bytes, Dict[str, str]]:
    document = {"instances": [{"b64": base64.b64encode(body).decode()} for body in bodies]}
    return json.dumps(document).encode(), {"Content-Type": "application/json"}


# form -> (path under the model, body builder): the body and headers are built per request, as a client would
FORMS = {"raw": ("/predictions/{model}", raw_request), "oip-json": ("/v2/models/{model}/infer", oip_json_request),
         "oip-binary": ("/v2/models/{model}/infer", oip_binary_request),
         "instances": ("/predictions/{model}", instances_request)}


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--model", default="demo-fcn", help="model name in /predictions/<model>")
    parser.add_argument("--bad-share", type=float, default=0.0,
                        help="probability that a request is a hostile-corpus case instead of a workload image")
    parser.add_argument("--workload", default="mixed", choices=sorted(PROFILES),
                        help="workload profile (Locust's own --profile only tags a run)")
    parser.add_argument("--request-form", default="raw", choices=sorted(FORMS),
                        help="how images travel (request_formats.py): raw body on /predictions; oip-json (base64) "
                             "or oip-binary (binary extension) on /v2/models/<model>/infer; instances (a JSON list "
                             "of base64 images on /predictions, --images-per-request of them)")
    parser.add_argument("--images-per-request", type=int, default=1,
                        help="images in one request of the oip-* and instances forms")
    # Empty defaults resolve on the machine that runs the users: in distributed mode the master sends its option
    # values to every worker, and its absolute paths need not exist on another machine.
    parser.add_argument("--image-cache", default="",
                        help=f"directory of the generated images (default: {DEFAULT_CACHE.name} beside this file)")
    parser.add_argument("--key-file", default="",
                        help="TorchServe's key_file.json (default: .serve/key_file.json of this checkout; "
                             "none there means authorization off)")


_images: Dict[Tuple[str, str], Dict[str, List[Tuple[CachedImage, bytes]]]] = {}


def images_for(profile: str, cache_dir: str) -> Dict[str, List[Tuple[CachedImage, bytes]]]:
    """Read once per process; gevent users share it."""
    if (profile, cache_dir) not in _images:
        _images[(profile, cache_dir)] = load_images(profile, Path(cache_dir))
    return _images[(profile, cache_dir)]


def check(response) -> None:
    """Mark the request failed unless the service answered it with predictions: our handler's
    {"predictions": [...]} or, for the benchmark's stock-handler comparison, TorchServe's {label: probability}."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
        return
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, list):  # several images: every item answered
        good = bool(answer) and all(isinstance(item, dict) and item.get("predictions") for item in answer)
    elif isinstance(answer, dict) and "outputs" in answer:  # OIP v2
        good = any(output.get("name") == "probabilities" and output.get("data") for output in answer["outputs"])
    elif isinstance(answer, dict) and "predictions" in answer:
        good = isinstance(answer["predictions"], list) and bool(answer["predictions"])
    else:
        good = isinstance(answer, dict) and bool(answer) and all(isinstance(v, float) for v in answer.values())
    if not good:
        response.failure(f"200 without predictions: {(response.text or '')[:200]}")


_corpus: List[Tuple[Case, bytes, Dict[str, str]]] = []


def hostile_corpus() -> List[Tuple[Case, bytes, Dict[str, str]]]:
    """Every case's request, built once per process (some bodies take a moment to make)."""
    if not _corpus:
        _corpus.extend((case, *case.request()) for case in cases())
    return _corpus


def check_case(response, case: Case) -> None:
    """A hostile case succeeds when it gets its documented status, and, from the handler, its error code."""
    if response.status_code != case.status:
        response.failure(f"{case.name}: HTTP {response.status_code}, expected {case.status}: "
                         f"{(response.text or '')[:160]}")
        return
    if case.error is not None:
        try:
            code = response.json().get("error")
        except (ValueError, AttributeError):
            code = None
        if code != case.error:
            response.failure(f"{case.name}: error {code!r}, expected {case.error!r}")
            return
    response.success()  # an expected 4xx is a success here (Locust counts every 4xx as a failure by default)


class ClassifierUser(FastHttpUser):
    """One client that sends its next image as soon as the previous answer arrives."""
    wait_time = constant(0)
    network_timeout = 600.0  # a 2048 px image on a busy 2-core CPU can take long; the server's own timeout rules
    connection_timeout = 10.0

    def on_start(self):
        options = self.environment.parsed_options
        self.path = f"/predictions/{options.model}"  # the hostile corpus always goes here, as raw bodies
        form_path, self.build = FORMS[options.request_form]
        self.form_path = form_path.format(model=options.model)
        self.per_request = max(1, options.images_per_request) if options.request_form != "raw" else 1
        self.images = images_for(options.workload, options.image_cache or str(DEFAULT_CACHE))
        self.kinds = sorted(self.images)
        self.bad_share = options.bad_share
        key = inference_key(Path(options.key_file) if options.key_file else DEFAULT_KEY_FILE)
        self.auth = bearer(key)

    @task
    def classify(self):
        if self.bad_share and random.random() < self.bad_share:
            case, body, headers = random.choice(hostile_corpus())
            with self.client.post(self.path, data=body, headers={**headers, **self.auth},
                                  name=f"corpus {case.status}", catch_response=True) as response:
                check_case(response, case)
            return
        kind = random.choice(self.kinds)
        chosen = [random.choice(self.images[kind]) for _ in range(self.per_request)]
        body, headers = self.build([body for _, body in chosen], chosen[0][0].content_type)
        with self.client.post(self.form_path, data=body, headers={**headers, **self.auth}, name=kind,
                              catch_response=True) as response:
            check(response)
