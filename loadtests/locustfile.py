"""Locust load test for /predictions/<model>: closed-loop users POST cached images of one workload profile.

Run through `make loadtest` (loadtests/loadtest.py adds the report), or directly, e.g.

    locust -f loadtests/locustfile.py --headless -u 4 -r 2 -t 30s --host http://127.0.0.1:8080 \
        --model demo-fcn --workload mixed

Each resolution class is its own request name, so Locust's statistics give latency per resolution. A request
counts as failed unless it gets 200 with a JSON body holding predictions. With --bad-share P, a request is with
probability P a case of the hostile corpus (anysize_tools/hostile_corpus.py) instead, and fails unless it gets the
answer documented for that case (the soak, loadtests/soak.py, uses this). With token authorization on, the key is
read from --key-file (TorchServe's key_file.json; `make serve` writes .serve/key_file.json) or TS_INFERENCE_KEY.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Tuple

from locust import FastHttpUser, constant, events, task

from anysize_tools.auth import bearer, inference_key
from anysize_tools.hostile_corpus import Case, cases
from anysize_tools.paths import SERVE_DIR
from anysize_tools.workloads import DEFAULT_CACHE, PROFILES, CachedImage, load_images

DEFAULT_KEY_FILE = SERVE_DIR / "key_file.json"


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--model", default="demo-fcn", help="model name in /predictions/<model>")
    parser.add_argument("--bad-share", type=float, default=0.0,
                        help="probability that a request is a hostile-corpus case instead of a workload image")
    parser.add_argument("--workload", default="mixed", choices=sorted(PROFILES),
                        help="workload profile (Locust's own --profile only tags a run)")
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
    if isinstance(answer, dict) and "predictions" in answer:
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
        self.path = f"/predictions/{options.model}"
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
        entry, body = random.choice(self.images[kind])
        headers = {"Content-Type": entry.content_type, **self.auth}
        with self.client.post(self.path, data=body, headers=headers, name=kind, catch_response=True) as response:
            check(response)
