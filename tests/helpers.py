"""Test helpers: generated images, deterministic test weights, and an independent reference computation.

The reference deliberately does not use the project's model code: it runs torchvision's VGG directly (adaptive
head) or re-derives dense evaluation with ``F.conv2d`` on torchvision's own weights (fcn head).
"""

from __future__ import annotations

import io
import json
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def make_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A structured RGB picture (gradients, shapes, noise): varied enough that classes differ between images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([
        127 + 120 * np.sin(x / (7 + seed % 11) + seed),
        127 + 120 * np.cos(y / (5 + seed % 7)),
        (x * 255 // max(1, width - 1) + y * 255 // max(1, height - 1)) // 2,
    ], axis=-1)
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x0, y0, x0 + width // 3, y0 + height // 3), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def decode_rgb(body: bytes) -> np.ndarray:
    """What any careful client expects the service to see: the first frame, as 8-bit RGB."""
    with Image.open(io.BytesIO(body)) as image:
        return np.asarray(image.convert("RGB"))


def seeded_state_dict(arch: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """torchvision-format weights with real structure: random init, random BatchNorm statistics, and an fc8
    scaled up so class probabilities spread out (a freshly initialised VGG is nearly uniform over 1000 classes)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    with torch.no_grad():
        model.classifier[6].weight.mul_(60.0)
    return model.state_dict()




def to_input(pixels_hwc: np.ndarray) -> torch.Tensor:
    """The preprocessing contract written out: x / 255, minus ImageNet mean, over ImageNet std."""
    x = torch.from_numpy(np.array(pixels_hwc, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    return (x - MEAN) / STD


def torchvision_model(arch: str, state_dict: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """torchvision's own model holding ``state_dict`` (built on the meta device: its random init is overwritten)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


@torch.no_grad()
def reference_logits(model: torch.nn.Module, head: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of torchvision's VGG (``adaptive``) or of the VGG paper's dense evaluation of it (``fcn``)."""
    if head == "adaptive":
        return model(x)
    features = model.features(x)
    height, width = features.shape[-2:]
    if height < 7 or width < 7:
        features = F.adaptive_avg_pool2d(features, (max(height, 7), max(width, 7)))
    fc6, fc7, fc8 = model.classifier[0], model.classifier[3], model.classifier[6]
    y = F.relu(F.conv2d(features, fc6.weight.view(fc6.out_features, -1, 7, 7), fc6.bias))
    y = F.relu(F.conv2d(y, fc7.weight[:, :, None, None], fc7.bias))
    return F.conv2d(y, fc8.weight[:, :, None, None], fc8.bias).mean(dim=(2, 3))


def reference_probabilities(model: torch.nn.Module, head: str, pixels_hwc: np.ndarray) -> torch.Tensor:
    return torch.softmax(reference_logits(model, head, to_input(pixels_hwc)), dim=1)[0]


def demo_model_dir(directory):
    """The shipped demo model laid out in ``directory`` as an unpacked archive (weights and index_to_name.json)."""
    from anysize_tools.paths import DEMO as demo

    (directory / "demo-vgg.pth").symlink_to(demo / "demo-vgg.pth")
    labels = json.loads((demo / "labels.json").read_text())
    (directory / "index_to_name.json").write_text(json.dumps({str(i): name for i, name in enumerate(labels)}))
    return directory


class MetricsRecorder:
    """Records what a handler adds to TorchServe's metrics (``context.metrics.add_metric``)."""

    def __init__(self):
        self.added = []

    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None):
        self.added.append((name, value, unit, getattr(metric_type, "name", metric_type)))


class MockContext:
    """The parts of ts.context.Context the handler uses."""

    def __init__(self, model_dir, config, model_name="vgg11-test", headers=None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.headers = headers or {}  # request index -> its HTTP headers
        self.model_yaml_config = config
        self.model_name = model_name
        self.statuses, self.content_types = {}, {}
        self.metrics = MetricsRecorder()

    def get_all_request_header(self, idx):
        return self.headers.get(idx, {})

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value


def run_handler(handler, bodies):
    """Handle one batch of raw bodies; (decoded JSON answers, the MockContext with statuses and metrics)."""
    context = MockContext(None, None, model_name="demo-test")
    outputs = [json.loads(out) for out in handler.handle([{"body": b} for b in bodies], context)]
    return outputs, context

def count_passes(handler):
    """The input shapes of every forward pass the handler's model runs from now on."""
    shapes = []
    handler.classifier.model.features.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes
