"""VGG networks whose classifier head accepts any input size.

The family is one table of conv layouts plus small builders, as in torchvision's ``models/vgg.py``. Two heads
share one torchvision-format state dict (same keys; the ``fcn`` head only reshapes the classifier's tensors):

* ``adaptive`` - torchvision's own layout: ``AdaptiveAvgPool2d(7)`` squeezes any feature map to 7x7 before the
  fully connected classifier.
* ``fcn`` - the VGG paper's dense evaluation: fc6 is a 7x7 conv, fc7 and fc8 are 1x1 convs, and the class-score map
  is averaged over positions. A feature map smaller than 7 in a dimension is first pooled *up* to 7 there
  (as timm's ``ConvMlp`` does), so inputs under 224 px still work.

At 224x224 the feature map is exactly 7x7, both heads see the same numbers, and both equal torchvision's VGG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Union

import torch
import torch.nn.functional as F
from torch import nn

# How the fcn head turns its class-score map (N, classes, H', W') into one score per class:
# mean - the VGG paper's dense evaluation; max - each class scored by its best window (a small object on a large
# background); lse - log-mean-exp over positions, between the two (mean for flat maps, max for one strong window).
# Top-k means, colder log-sum-exps and the best position's probability were measured too and beat max by no more
# than noise (docs/aggregation-choice.json), so they are not offered.
AGGREGATIONS = ("mean", "max", "lse")

# Conv layouts from the VGG paper (configurations A, B, D, E); "M" is a 2x2 max pool.
CONV_LAYOUTS: Dict[str, List[Union[int, str]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    # The shipped demo model: VGG's pattern with its five pool levels (a 7x7 map at 224 px, fc6 windows of 224 px
    # like a real VGG's), 4 times narrower so it trains on two CPU cores at many scales. Channel counts are
    # multiples of 16: oneDNN's bf16 kernels, which train it, run 12-, 24- and 48-channel layers slower than 16-wide ones.
    "demo": [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"],
}


@dataclass(frozen=True)
class VGGSpec:
    """Everything that fixes a VGG's shape. ``pool_size`` is the feature-map side the classifier was trained on."""

    layout: str
    batch_norm: bool
    hidden: int = 4096
    pool_size: int = 7

    @property
    def feature_channels(self) -> int:
        return [v for v in CONV_LAYOUTS[self.layout] if v != "M"][-1]


ARCHS: Dict[str, VGGSpec] = {
    "vgg11": VGGSpec("A", batch_norm=False),
    "vgg11_bn": VGGSpec("A", batch_norm=True),
    "vgg13": VGGSpec("B", batch_norm=False),
    "vgg13_bn": VGGSpec("B", batch_norm=True),
    "vgg16": VGGSpec("D", batch_norm=False),
    "vgg16_bn": VGGSpec("D", batch_norm=True),
    "vgg19": VGGSpec("E", batch_norm=False),
    "vgg19_bn": VGGSpec("E", batch_norm=True),
    "demo": VGGSpec("demo", batch_norm=True, hidden=128),
}
TORCHVISION_ARCHS = [name for name in ARCHS if name.startswith("vgg")]


def first_layer_channels(model: torch.nn.Module) -> int:
    """Output channels of the model's first convolution: with the input's pixels, the size of a VGG pass's
    largest activation."""
    return next(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def training_size(spec: VGGSpec) -> int:
    """The input side at which the feature map is exactly pool_size: 2 ** (number of pools) * pool_size."""
    return 2 ** CONV_LAYOUTS[spec.layout].count("M") * spec.pool_size


def make_features(layout: List[Union[int, str]], batch_norm: bool) -> nn.Sequential:
    """The convolutional trunk, with module indices identical to torchvision's so state dicts load as they are."""
    layers: List[nn.Module] = []
    in_channels = 3
    for v in layout:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


def fc_classifier(spec: VGGSpec, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """fc6, fc7, fc8 as Linear layers, at torchvision's indices 0, 3 and 6."""
    flat = spec.feature_channels * spec.pool_size * spec.pool_size
    return nn.Sequential(
        nn.Linear(flat, spec.hidden), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(spec.hidden, spec.hidden), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(spec.hidden, num_classes),
    )


class Im2colConv2d(nn.Conv2d):
    """A stride-1, unpadded Conv2d computed as one matrix product over the unfolded input windows.

    Same parameters and result as ``nn.Conv2d``. For fc6 (4096 filters of 512x7x7) PyTorch's CPU convolution takes
    0.28 s even on a single 7x7 window, about 15x the matrix product (0.018 s), and 1.4-2.3x at larger maps.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, **kwargs):
        assert not kwargs, "only stride 1, no padding, no dilation, one group"
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width = x.shape[0], x.shape[-2] - self.kernel_size[0] + 1, x.shape[-1] - self.kernel_size[1] + 1
        windows = F.unfold(x, self.kernel_size).transpose(1, 2)  # (N, positions, C*kh*kw), c-major like flatten
        # One 2-D product over all windows: a strided 3-D input sends bf16 on the CPU to a kernel 10-50x slower.
        scores = F.linear(windows.reshape(batch * height * width, -1), self.weight.flatten(1), self.bias)
        return scores.view(batch, height * width, -1).transpose(1, 2).reshape(batch, -1, height, width)


def conv_classifier(spec: VGGSpec, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """fc6 as a pool_size x pool_size conv, fc7 and fc8 as 1x1 convs, at the same indices as ``fc_classifier``.
    All three are computed as matrix products (Im2colConv2d): for 4096-channel 1x1 convs too, PyTorch's CPU
    convolution is 2.5-7x slower than the product (vgg16 fc7, batch 4 at two positions: 40-48 ms against 7-15)."""
    return nn.Sequential(
        Im2colConv2d(spec.feature_channels, spec.hidden, kernel_size=spec.pool_size), nn.ReLU(True), nn.Dropout(dropout),
        Im2colConv2d(spec.hidden, spec.hidden, kernel_size=1), nn.ReLU(True), nn.Dropout(dropout),
        Im2colConv2d(spec.hidden, num_classes, kernel_size=1),
    )


def pool_up_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive-average-pool only the dimensions smaller than ``size`` up to ``size``; larger ones stay as they are."""
    height, width = x.shape[-2:]
    if height >= size and width >= size:
        return x
    return F.adaptive_avg_pool2d(x, (max(height, size), max(width, size)))


class AdaptivePoolVGG(nn.Module):
    """torchvision's VGG: any input size, because the feature map is average-pooled to 7x7 before fc6."""

    head = "adaptive"
    has_score_map = False  # one score per class straight from the pooled map: nothing to aggregate

    def __init__(self, spec: VGGSpec, num_classes: int = 1000):
        super().__init__()
        self.spec = spec
        self.features = make_features(CONV_LAYOUTS[spec.layout], spec.batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((spec.pool_size, spec.pool_size))
        self.classifier = fc_classifier(spec, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def served(self) -> nn.Module:
        """What one served forward pass computes: the logits."""
        return self


class DenseEvalVGG(nn.Module):
    """The VGG paper's dense evaluation: the classifier slides over the feature map and its class scores are averaged.

    Any input of at least 32x32 works (one 2x2 pool level per block leaves a 1x1 map at 32 px). Averaging the
    *logits* after fc8 (the paper's choice) equals timm's averaging after fc7 because fc8 is linear.
    """

    head = "fcn"
    has_score_map = True  # a class-score map per image, aggregated over positions per request

    def __init__(self, spec: VGGSpec, num_classes: int = 1000):
        super().__init__()
        self.spec = spec
        self.features = make_features(CONV_LAYOUTS[spec.layout], spec.batch_norm)
        self.classifier = conv_classifier(spec, num_classes)

    def class_score_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position logits, shape (N, classes, H', W') with H' = max(H/32, 7) - 6."""
        return self.classifier(pool_up_to(self.features(x), self.spec.pool_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_score_map(x).mean(dim=(2, 3))

    def served(self) -> nn.Module:
        """What one served forward pass computes: the class-score map, aggregated per request afterwards (so
        requests asking for different aggregations still share the pass)."""
        return ScoreMap(self)


# The heads by name (each class names itself): what archives, requests and the builder choose from.
HEAD_CLASSES: Dict[str, type] = {cls.head: cls for cls in (AdaptivePoolVGG, DenseEvalVGG)}
HEADS = tuple(HEAD_CLASSES)


def aggregate(score_map: torch.Tensor, how: str) -> torch.Tensor:
    """(N, classes, H', W') class-score map -> (N, classes) logits, aggregated over positions as ``how`` says."""
    if how == "mean":
        return score_map.mean(dim=(2, 3))
    if how == "max":
        return score_map.amax(dim=(2, 3))
    if how == "lse":
        flat = score_map.flatten(2)
        return torch.logsumexp(flat, dim=2) - math.log(flat.shape[2])
    raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")


class ScoreMap(nn.Module):
    """The fcn model's class-score map as a module's forward, so it can be compiled like the model itself."""

    def __init__(self, model: "DenseEvalVGG"):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.class_score_map(x)


def fc_to_conv_state_dict(state_dict: Dict[str, torch.Tensor], spec: VGGSpec) -> Dict[str, torch.Tensor]:
    """Turn a torchvision-format state dict into the ``fcn`` head's: same keys, classifier weights reshaped.

    torchvision flattens the (C, 7, 7) pooled map in C-major order (index c*49 + h*7 + w), which is exactly the
    memory order of a (out, C, 7, 7) conv kernel, so a reshape (a view, no copy) is the whole conversion.
    """
    converted = dict(state_dict)
    k = spec.pool_size
    fc6 = state_dict["classifier.0.weight"]
    converted["classifier.0.weight"] = fc6.reshape(fc6.shape[0], fc6.shape[1] // (k * k), k, k)
    for key in ("classifier.3.weight", "classifier.6.weight"):
        converted[key] = state_dict[key].reshape(*state_dict[key].shape, 1, 1)
    return converted


def num_classes_in(state_dict: Dict[str, torch.Tensor]) -> int:
    return state_dict["classifier.6.weight"].shape[0]


def build_model(arch: str, head: str, num_classes: int = 1000, spec: VGGSpec | None = None) -> nn.Module:
    """An untrained model of ``arch`` (or of an explicit ``spec``) with the given head, in eval mode.

    Build it under ``torch.device("meta")`` and load with ``assign=True`` to skip the random initialisation.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if spec is None:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        spec = ARCHS[arch]
    return HEAD_CLASSES[head](spec, num_classes).eval()


def load_model(arch: str, head: str, state_dict: Dict[str, torch.Tensor], spec: VGGSpec | None = None) -> nn.Module:
    """A model with the given head holding the weights of a torchvision-format state dict."""
    spec = spec or ARCHS[arch]
    with torch.device("meta"):
        model = build_model(arch, head, num_classes_in(state_dict), spec)
    if HEAD_CLASSES[head].has_score_map:  # the FC layers as convolutions: the same tensors, reshaped
        state_dict = fc_to_conv_state_dict(state_dict, spec)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()
