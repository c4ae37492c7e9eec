"""Shared fixtures: one set of deterministic vgg11 test weights (in memory and as a file) for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import test_state_dict, torchvision_model

TEST_ARCH = "vgg11"  # the smallest VGG keeps CPU inference in the tests fast


@pytest.fixture(scope="session")
def vgg11_state_dict():
    return test_state_dict(TEST_ARCH)


@pytest.fixture(scope="session")
def vgg11_weights_file(vgg11_state_dict, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg11-test.pth"
    torch.save(vgg11_state_dict, path)
    return path


@pytest.fixture(scope="session")
def vgg11_reference(vgg11_state_dict):
    """torchvision's own vgg11 holding the test weights: the reference every served answer is compared with."""
    return torchvision_model(TEST_ARCH, vgg11_state_dict)
