"""Bare-model timing: the handler's forward pass with no server, the decoders compared, the GPU's name."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import List, Optional

from ..workloads import load_images
from .plan import IDLE_PAUSE, WARMUP_SIZES, variant, weights_for


# ------------------------------------------------------------------------------------------------ bare model
def seconds_per_call(function, min_seconds: float, min_calls: int = 3, pause: float = 0.0) -> float:
    """Median seconds of ``function()`` over at least ``min_calls`` calls and ``min_seconds``; ``pause`` sleeps
    before each call, as a server's forward pass follows idle time (threads asleep, caches cold)."""
    function()  # warm-up: first-call allocations and kernel selection
    times: List[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        time.sleep(pause)
        call_started = time.perf_counter()
        function()
        times.append(time.perf_counter() - call_started)
    return statistics.median(times)


def bare_model(model: str, head: str, workload: str, batches: List[int], scratch: Path, precision: str = "fp32",
               channels_last: bool = False, min_seconds: float = 3.0, images_per_kind: Optional[int] = None,
               compile: bool = False) -> dict:
    """Decode and model milliseconds per image for each request name, and images/s of the whole workload
    (uniform over request names, as the locustfile draws them) at each batch size. On a GPU the decoded pixels
    are placed on it beforehand: the bare figure is the model's ceiling, without any transfer. ``compile``: the
    model compiled as a compiled archive compiles it, at the workload's warm-up size and the largest batch."""
    import torch

    from anysize.classifier import ImageClassifier, images_per_pass
    from anysize.handler_config import HandlerOptions
    from anysize.image_decoding import decode_image, normalize
    from anysize.vgg_models import load_model
    from anysize.weights import read_state_dict

    source = weights_for(model, scratch)
    options = HandlerOptions(arch=source["arch"], head=head, precision=precision, channels_last=channels_last,
                             compile=compile, warmup_sizes=WARMUP_SIZES.get(workload, "") if compile else "")
    network = load_model(source["arch"], head, read_state_dict(Path(source["weights"])))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier = ImageClassifier(network, options, [str(i) for i in range(1000)], "bare", device)
    if compile:
        classifier.warm_up(max(batches))  # compiles, then seals: other sizes run eagerly, as when served
    kinds = {}
    for kind, images in load_images(workload).items():
        images = images[:images_per_kind] if images_per_kind else images
        pixels = [decode_image(body, options.max_pixels, options.min_side, options.bomb_factor).to(device)
                  for _, body in images]
        decode_ms = 1000 * statistics.mean(
            seconds_per_call(lambda body=body: decode_image(body, options.max_pixels, options.min_side,
                                                            options.bomb_factor), 0.2, 3) for _, body in images)
        # The preprocessing inside the forward pass (uint8 HWC -> normalised float NCHW), timed on its own.
        normalize_ms = 1000 * statistics.mean(seconds_per_call(lambda p=p: normalize(p.unsqueeze(0)), 0.1, 3)
                                              for p in pixels)
        model_ms = {}
        for batch in batches:
            # A batch of one image size, as the handler forms them: each image repeated up to ``batch`` times, but
            # never more than the handler puts in one pass (max_pixels input pixels, e.g. 2 at 1920x1080).
            def per_pass(p):
                return min(batch, images_per_pass(options.max_pixels, p.shape[0], p.shape[1]))

            per_image = [seconds_per_call(lambda p=p: classifier.forward(torch.stack([p] * per_pass(p))),
                                          min_seconds / len(pixels), 2) / per_pass(p) for p in pixels]
            model_ms[batch] = 1000 * statistics.mean(per_image)
        after_pause_ms = 1000 * statistics.mean(
            seconds_per_call(lambda p=p: classifier.forward(p.unsqueeze(0)), 0, 3, pause=IDLE_PAUSE)
            for p in pixels)
        kinds[kind] = {"decode_ms": decode_ms, "normalize_ms": normalize_ms, "model_ms": model_ms,
                       "model_ms_after_pause": after_pause_ms, "images": len(images)}
        print(f"[bare] {model}-{head} {variant(options.to_mapping())} {kind}: decode {decode_ms:.1f} ms, normalize {normalize_ms:.2f} ms, model "
              + ", ".join(f"b{b} {ms:.1f} ms" for b, ms in model_ms.items())
              + f" per image; b1 after {IDLE_PAUSE * 1000:.0f} ms idle {after_pause_ms:.1f} ms", flush=True)
    throughput = {batch: 1000 / statistics.mean(k["model_ms"][batch] for k in kinds.values()) for batch in batches}
    return {"model": model, "head": head, "workload": workload, "precision": precision,
            "channels_last": channels_last, "compile": compile, "kinds": kinds,
            "model_images_per_s": throughput,
            "threads": torch.get_num_threads()}


def gpu_description() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"


# ---------------------------------------------------------------------------------------------------- decoding
def decode_comparison(seconds: float = 0.5) -> List[dict]:
    """Milliseconds per image, one thread: Pillow (to RGB) against torchvision.io, on the workloads' images."""
    import io

    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png, decode_webp

    decoders = {"jpeg": decode_jpeg, "png": decode_png, "webp": decode_webp}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for workload in ("fixed", "formats", "1080p"):
            for kind, images in load_images(workload).items():
                body = images[0][1]
                fmt_name = kind.split()[0]
                data = torch.frombuffer(bytearray(body), dtype=torch.uint8)
                pil_ms = 1000 * seconds_per_call(lambda: Image.open(io.BytesIO(body)).convert("RGB").load(),
                                                 seconds)
                tv_ms = 1000 * seconds_per_call(lambda: decoders[fmt_name](data, mode=ImageReadMode.RGB), seconds)
                rows.append({"image": kind, "pillow_ms": pil_ms, "torchvision_ms": tv_ms})
                print(f"[decode] {kind}: Pillow {pil_ms:.2f} ms, torchvision {tv_ms:.2f} ms", flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows
