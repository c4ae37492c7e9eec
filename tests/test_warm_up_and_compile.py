"""Start-up work stays out of requests: warm-up passes at the configured sizes, and torch.compile bounded to the
warm-up sizes (traffic at any other size runs eagerly, never compiling inside a request)."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import count_passes

def test_warm_up_runs_the_configured_sizes_at_batch_one_and_batch_size(demo_handler):
    handler = demo_handler()
    shapes = count_passes(handler)
    handler.classifier.options = handler.classifier.options.__class__(
        **{**handler.classifier.options.to_mapping(), "warmup_sizes": "112x112,160x96"})
    handler.classifier.warm_up(batch_size=4)
    assert shapes == [(1, 3, 112, 112), (4, 3, 112, 112), (1, 3, 96, 160), (4, 3, 96, 160)]
    assert handler.classifier.clock.counts["passes"] == 0  # warm-up is not counted as traffic

@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="inductor needs a C++ compiler")
def test_compiled_model_answers_like_eager_and_compiles_only_warm_up_sizes_within_the_bound(demo_handler):
    """The slowest test here (tens of seconds): torch.compile for real, on the demo model."""
    from anysize.compiled_model import SizeBoundedCompile
    from anysize.vgg_models import ScoreMap

    model = demo_handler().classifier.model
    compiled = SizeBoundedCompile(ScoreMap(model), max_sizes=1)  # what an fcn archive compiles and serves

    def check(batch, height, width):
        x = torch.randn(batch, 3, height, width)
        with torch.inference_mode():
            assert torch.allclose(compiled(x), model.class_score_map(x), atol=1e-4, rtol=1e-4)

    check(2, 112, 112)  # warm-up: compiled
    check(2, 96, 128)  # warm-up, but over max_sizes: eager
    compiled.seal()
    check(3, 112, 112)  # traffic at a compiled size, another batch size: the same graph
    check(2, 128, 96)  # traffic at a new size after warm-up: eager, never a compile inside a request
    assert compiled.compiled_sizes == {(112, 112)}
    assert compiled.eager_calls == 2
