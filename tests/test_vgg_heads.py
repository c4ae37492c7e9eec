"""Both heads of every VGG variant: equal to torchvision at 224, valid at any size, dense evaluation done right."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import reference_logits, seeded_state_dict, torchvision_model

from anysize.vgg_models import (ARCHS, HEADS, TORCHVISION_ARCHS, DenseEvalVGG, build_model, fc_to_conv_state_dict,
                                load_model, pool_up_to)
from anysize_tools.paths import REPO

SIZES = [(32, 32), (97, 211), (224, 224), (225, 225), (480, 640)]  # from below 7x7 features to 15x20


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_both_heads_equal_torchvision_at_224(arch):
    state_dict = seeded_state_dict(arch, seed=3)
    reference = torchvision_model(arch, state_dict)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 1.0  # the test weights spread the logits, so 1e-4 is a tight bound
        for head in HEADS:
            logits = load_model(arch, head, state_dict)(x)
            assert logits.shape == (2, 1000)
            assert (logits - expected).abs().max() <= 1e-4, head


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_heads_accept_any_size(vgg11_state_dict, vgg11_reference, size):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
    with torch.no_grad():
        outputs = {head: load_model("vgg11", head, vgg11_state_dict)(x) for head in HEADS}
        for head, logits in outputs.items():
            assert logits.shape == (1, 1000)
            assert torch.isfinite(logits).all()
            assert (logits - reference_logits(vgg11_reference, head, x)).abs().max() <= 1e-4, head
    if max(size) <= 225:  # feature map at most 7x7: both heads see the same pooled 7x7 map
        assert (outputs["fcn"] - outputs["adaptive"]).abs().max() <= 1e-4


def test_fcn_averages_the_class_score_map_over_positions(vgg11_state_dict):
    model = load_model("vgg11", "fcn", vgg11_state_dict)
    x = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        score_map = model.class_score_map(x)
        assert score_map.shape == (1, 1000, 8, 8)  # 14x14 features, 7x7 kernel: 8x8 positions
        assert torch.allclose(model(x), score_map.mean(dim=(2, 3)), atol=1e-5)


def test_averaging_after_fc8_equals_timm_averaging_after_fc7(vgg11_state_dict):
    """fc8 is linear, so averaging its score map equals applying fc8 to fc7's averaged map (timm's ConvMlp)."""
    model = load_model("vgg11", "fcn", vgg11_state_dict)
    x = torch.randn(1, 3, 320, 416, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fc7_map = model.classifier[:6](pool_up_to(model.features(x), 7))
        fc8 = model.classifier[6]
        timm_style = F.linear(fc7_map.mean(dim=(2, 3)), fc8.weight.flatten(1), fc8.bias)
        assert (model(x) - timm_style).abs().max() <= 1e-4


def test_small_feature_maps_are_pooled_up_only_where_smaller_than_7():
    features = torch.randn(1, 512, 2, 15)
    pooled = pool_up_to(features, 7)
    assert pooled.shape == (1, 512, 7, 15)
    assert torch.equal(pool_up_to(torch.ones(1, 2, 9, 8), 7), torch.ones(1, 2, 9, 8))
    with torch.device("meta"):
        model = build_model("vgg11", "fcn")
    assert model.class_score_map(torch.empty(1, 3, 64, 480, device="meta")).shape == (1, 1000, 1, 9)


def test_fc_to_conv_conversion_reshapes_without_copying(vgg11_state_dict):
    converted = fc_to_conv_state_dict(vgg11_state_dict, ARCHS["vgg11"])
    assert converted.keys() == vgg11_state_dict.keys()
    assert converted["classifier.0.weight"].shape == (4096, 512, 7, 7)
    assert converted["classifier.3.weight"].shape == (4096, 4096, 1, 1)
    assert converted["classifier.6.weight"].shape == (1000, 4096, 1, 1)
    assert converted["classifier.0.weight"].data_ptr() == vgg11_state_dict["classifier.0.weight"].data_ptr()
    assert converted["features.0.weight"] is vgg11_state_dict["features.0.weight"]


def test_dropout_is_inert_at_eval(vgg11_state_dict):
    model = load_model("vgg11", "fcn", vgg11_state_dict)
    assert isinstance(model, DenseEvalVGG) and not model.training
    x = torch.randn(1, 3, 288, 288)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_parameter_count_is_the_same_for_both_heads_and_torchvision(arch):
    import torchvision

    with torch.device("meta"):
        counts = {head: sum(p.numel() for p in build_model(arch, head).parameters()) for head in HEADS}
        expected = sum(p.numel() for p in torchvision.models.get_model(arch).parameters())
    assert counts == {"adaptive": expected, "fcn": expected}


def test_parameter_table_script_shows_counts_independent_of_input_size():
    out = subprocess.run([sys.executable, str(REPO / "scripts/research/param_table.py"), "--arch", "vgg16", "--sizes",
                          "224", "448", "97x211"], capture_output=True, text=True, check=True).stdout
    assert "| classifier.0.weight | 4096x25088 | 4096x512x7x7 | 102,760,448 |" in out
    assert "**138,357,544**" in out
    size_rows = [line for line in out.splitlines() if line.startswith(("| 224x224", "| 448x448", "| 97x211"))]
    assert len(size_rows) == 3
    assert all(row.count("138,357,544") == 2 for row in size_rows)
    assert "[1, 1000, 8, 8]" in out and "shape error" in out  # dense map at 448; the plain FC head breaks


@pytest.mark.parametrize("size", [(7, 7), (9, 16), (1, 7)], ids=["7x7", "9x16", "1x7"])
def test_im2col_fc6_equals_a_plain_convolution(size):
    from anysize.vgg_models import Im2colConv2d

    torch.manual_seed(0)
    fc6 = Im2colConv2d(32, 64, kernel_size=(1, 7) if size[0] == 1 else 7)
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        expected = F.conv2d(x, fc6.weight, fc6.bias)
        assert fc6(x).shape == expected.shape
        assert (fc6(x) - expected).abs().max() <= 1e-4
