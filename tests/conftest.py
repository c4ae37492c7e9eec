"""Shared fixtures: one set of deterministic vgg11 test weights (in memory and as a file) for the whole session,
one TorchServe serving the shipped demo model with both heads (accuracy tests and the Locust smoke test), and
handlers of the demo model initialised from a mock TorchServe context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import MockContext, demo_model_dir, seeded_state_dict, torchvision_model

from anysize.handler import SizeAgnosticVGGHandler
from anysize.vgg_models import HEADS
from anysize_tools.archive import build, demo_spec
from anysize_tools.torchserve import TorchServe

TEST_ARCH = "vgg11"  # the smallest VGG keeps CPU inference in the tests fast


@pytest.fixture(scope="session")
def vgg11_state_dict():
    return seeded_state_dict(TEST_ARCH)


@pytest.fixture(scope="session")
def vgg11_weights_file(vgg11_state_dict, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg11-test.pth"
    torch.save(vgg11_state_dict, path)
    return path


@pytest.fixture(scope="session")
def vgg11_reference(vgg11_state_dict):
    """torchvision's own vgg11 holding the test weights: the reference every served answer is compared with."""
    return torchvision_model(TEST_ARCH, vgg11_state_dict)


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo_store")
    for head in HEADS:
        build(demo_spec(head, store))
    server = TorchServe(tmp_path_factory.mktemp("demo_ts"), store, [f"demo-{h}=demo-{h}.mar" for h in HEADS],
                        free_ports=True).start()
    try:
        server.wait_ready([f"demo-{h}" for h in HEADS], timeout=300)
        yield server
    finally:
        server.stop()


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
