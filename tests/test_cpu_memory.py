"""The CPU worker's allocator setting: forward passes reuse the buffers earlier passes freed instead of faulting
fresh pages in, and the handler applies the setting when (and only when) its archive asks for it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import anysize.handler
from anysize import cpu_memory


FAULTS_PER_PASS = """
import resource, sys, torch
from anysize import cpu_memory
from anysize.classifier import ImageClassifier
from anysize.handler_config import HandlerOptions
from anysize.vgg_models import load_model
from anysize.weights import read_state_dict
from anysize_tools.paths import DEMO
if sys.argv[1] == "initial":
    assert cpu_memory.set_thresholds(*cpu_memory.GLIBC_DEFAULTS)
else:
    assert cpu_memory.keep_freed_buffers()
model = load_model("demo", "fcn", read_state_dict(DEMO / "demo-vgg.pth"))
classifier = ImageClassifier(model, HandlerOptions(arch="demo", head="fcn"), [str(i) for i in range(10)], "t",
                             torch.device("cpu"))
pixels = torch.zeros(1, 448, 448, 3, dtype=torch.uint8)
classifier.forward(pixels)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    classifier.forward(pixels)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_pass(setting: str) -> float:
    """Minor page faults per forward pass of the demo model at 448x448 after a first pass, in a fresh process (the
    allocator's state depends on the process's history), under glibc's initial thresholds or the worker's."""
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_PASS, setting], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


def test_a_workers_forward_passes_reuse_freed_buffers_instead_of_faulting_pages_in_again():
    if not cpu_memory.set_thresholds(*cpu_memory.GLIBC_DEFAULTS):
        pytest.skip("the C library is not glibc")
    cpu_memory.keep_freed_buffers()  # this process back to the worker's setting
    initial, kept = faults_per_pass("initial"), faults_per_pass("worker")
    # Each pass's buffers above 128 KB come as fresh mappings: thousands of pages faulted in (and zeroed) per pass.
    assert initial >= 5000, initial
    assert kept <= initial / 10, (kept, initial)


@pytest.mark.parametrize("keep", [True, False])
def test_the_handler_applies_the_setting_on_a_cpu_only_when_the_archive_asks(demo_handler, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(anysize.handler, "keep_freed_buffers", lambda: calls.append(True) or True)
    demo_handler(keep_cpu_buffers=keep)
    assert calls == ([True] if keep else [])


def test_bf16_passes_stack_past_the_kept_size_only_for_weights_worth_amortising():
    if not cpu_memory.keep_freed_buffers():
        pytest.skip("needs glibc")
    kept = cpu_memory.kept_pass_pixels(64)
    large, small = 553 * 2**20, 5 * 2**20  # vgg16's fp32 weights; the demo model's
    assert cpu_memory.kept_pass_limit(4_194_304, 64, autocast=True, weight_bytes=large) == 4_194_304
    assert cpu_memory.kept_pass_limit(4_194_304, 64, autocast=True, weight_bytes=small) == kept
    assert cpu_memory.kept_pass_limit(4_194_304, 64, autocast=False, weight_bytes=large) == kept
    assert cpu_memory.kept_pass_limit(100_000, 64, autocast=False, weight_bytes=large) == 100_000 < kept


@pytest.mark.parametrize("precision, keep, capped", [("fp32", True, True), ("bf16", True, True),
                                                     ("fp32", False, False), ("bf16", False, False)])
def test_cpu_passes_of_the_small_demo_model_stack_only_as_many_images_as_keep_their_buffers_reusable(
        demo_handler, precision, keep, capped):
    handler = demo_handler(precision=precision, keep_cpu_buffers=keep)
    classifier = handler.classifier
    views = [torch.zeros(448, 448, 3, dtype=torch.uint8)] * 8 + [torch.zeros(112, 112, 3, dtype=torch.uint8)] * 8
    chunks = classifier.group(views)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(16))  # every view in exactly one pass
    largest_448 = max(len(chunk) for chunk in chunks if chunk[0] < 8)
    if not capped:  # only max_pixels (4 MP) limits a pass: all eight 448x448 views (1.6 MP) share one
        assert classifier.pass_pixels == classifier.options.max_pixels and largest_448 == 8
        return
    # The largest buffer of a pass, the first layer's output, stays within the threshold glibc keeps.
    outputs = []
    hook = classifier.model.features[0].register_forward_hook(
        lambda module, args, out: outputs.append(out.numel() * out.element_size()))
    try:
        for chunk in chunks:
            classifier.forward(torch.stack([views[i] for i in chunk]))
    finally:
        hook.remove()
    assert max(outputs) + cpu_memory.ALLOCATION_SLACK <= cpu_memory.MMAP_THRESHOLD, outputs
    # Exactly at the threshold glibc maps it already: two 512x512 views (16 x 4 x 512 x 512 = 32 MiB) go one by one;
    # bf16 keeps the same pixel limit (cpu_memory.kept_pass_limit says why).
    assert classifier.images_per_pass(512, 512) == 1
    # 448x448 views in the demo's first layer: 16 channels x 4 bytes x 448 x 448 = 12.8 MB each, two per pass.
    assert largest_448 == 2 and min(len(c) for c in chunks if c[0] >= 8) == 8  # small views still stack
