"""Bare-model timing: the handler's forward pass with no server, the decoders compared, the GPU's name."""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..workloads import load_images
from .plan import IDLE_PAUSE, SAME_SIZE_WORKLOADS, variant


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


def in_turn_ms(forward: Callable, groups_by_kind: Dict[str, list], min_seconds: float) -> Dict[str, float]:
    """Milliseconds per image of each request name when the workload's images are classified in turn, one of each
    name after another, as a worker meets a mixed workload: the median over at least two rounds (and
    ``min_seconds``) per image, averaged over a name's images. ``groups_by_kind``: per name, per image, its passes
    (lists of same-size views), as ImageClassifier.group forms them."""
    import torch

    queue = [item for row in itertools.zip_longest(*[[(kind, index, groups) for index, groups in enumerate(images)]
                                                     for kind, images in groups_by_kind.items()]) for item in row if item]
    times: Dict[tuple, List[float]] = {}

    def one_round(record: bool) -> None:
        for kind, index, groups in queue:
            started = time.perf_counter()
            for views in groups:
                forward(torch.stack(views))
            if record:
                times.setdefault((kind, index), []).append(time.perf_counter() - started)

    one_round(False)  # warm-up: every size once
    started = time.perf_counter()
    while len(next(iter(times.values()), [])) < 2 or time.perf_counter() - started < min_seconds:
        one_round(True)
    return {kind: 1000 * statistics.mean(statistics.median(times[(kind, index)]) for index in range(len(images)))
            for kind, images in groups_by_kind.items()}


def bare_model(model: str, head: str, workload: str, batches: List[int], scratch: Path, precision: str = "fp32",
               channels_last: bool = False, min_seconds: float = 3.0, images_per_kind: Optional[int] = None,
               compile: bool = False) -> dict:
    """Decode and model milliseconds per image for each request name, and images/s of the whole workload
    (uniform over request names, as the locustfile draws them) at each batch size. The classifier is built with
    the served archive's own HandlerOptions, so an image costs what it costs served: every view the archive feeds
    (the demo's scales and mirrors), same-size views in one pass. On a GPU the decoded views are placed on it
    beforehand: the bare figure is the model's ceiling, without any transfer. ``compile``: the model compiled as a
    compiled archive compiles it, at the workload's warm-up size and the largest batch."""
    import torch

    from anysize.classifier import ImageClassifier
    from anysize.cpu_memory import keep_freed_buffers
    from anysize.image_decoding import normalize
    from anysize.vgg_models import load_model
    from anysize.weights import file_weights, read_state_dict

    from .plan import Served
    from .served import archive_spec

    config = Served(model, head, workload, max(batches), 5, 1, 1, precision=precision, channels_last=channels_last,
                    compile=compile)
    spec = archive_spec(config, scratch, scratch)
    options = spec.handler_options(file_weights(Path(spec.weights)))
    network = load_model(spec.arch, head, read_state_dict(Path(spec.weights)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and options.keep_cpu_buffers:
        keep_freed_buffers()  # the allocator settings the served worker runs with (process-wide)
    classifier = ImageClassifier(network, options, [str(i) for i in range(1000)], "bare", device)
    if compile:
        classifier.warm_up(max(batches))  # compiles, then seals: other sizes run eagerly, as when served
    defaults = classifier.defaults

    def view_groups(body: bytes) -> List[List["torch.Tensor"]]:
        """The image's views as the handler forms its passes: same-size views together."""
        decoded = [classifier.decode(body, defaults)]
        views = [view.pixels.to(device) for view in classifier.expand(decoded, [defaults])]
        return [[views[i] for i in chunk] for chunk in classifier.group(views)]

    def image_seconds(groups, batch: int, seconds_each: float, pause: float = 0.0) -> float:
        """Seconds per image when ``batch`` such images share passes: each group's views repeated for the batch's
        images, never more per pass than the handler allows (max_pixels input pixels)."""
        total = 0.0
        for views in groups:
            height, width = views[0].shape[:2]
            copies = max(1, min(batch, classifier.images_per_pass(height, width) // len(views)))
            stacked = torch.stack(views * copies)
            total += seconds_per_call(lambda: classifier.forward(stacked), seconds_each, 2 if not pause else 3,
                                      pause=pause) / copies
        return total

    kinds, groups_by_kind = {}, {}
    for kind, images in load_images(workload).items():
        images = images[:images_per_kind] if images_per_kind else images
        groups = groups_by_kind[kind] = [view_groups(body) for _, body in images]
        decode_ms = 1000 * statistics.mean(
            seconds_per_call(lambda body=body: classifier.decode(body, defaults), 0.2, 3) for _, body in images)
        # The preprocessing inside the forward pass (uint8 HWC -> normalised float NCHW), timed on its own.
        normalize_ms = 1000 * statistics.mean(
            seconds_per_call(lambda g=g: [normalize(torch.stack(views)) for views in g], 0.1, 3) for g in groups)
        model_ms = {batch: 1000 * statistics.mean(image_seconds(g, batch, min_seconds / len(groups) / len(g))
                                                  for g in groups) for batch in batches}
        after_pause_ms = 1000 * statistics.mean(image_seconds(g, 1, 0, pause=IDLE_PAUSE) for g in groups)
        kinds[kind] = {"decode_ms": decode_ms, "normalize_ms": normalize_ms, "model_ms": model_ms,
                       "model_ms_after_pause": after_pause_ms, "images": len(images),
                       "views_per_image": statistics.mean(sum(map(len, g)) for g in groups)}
        print(f"[bare] {model}-{head} {variant(options.to_mapping())} {kind}: decode {decode_ms:.1f} ms, "
              f"normalize {normalize_ms:.2f} ms, model "
              + ", ".join(f"b{b} {ms:.1f} ms" for b, ms in model_ms.items())
              + f" per image ({kinds[kind]['views_per_image']:.1f} views); b1 after {IDLE_PAUSE * 1000:.0f} ms idle "
              f"{after_pause_ms:.1f} ms", flush=True)
    in_turn = workload not in SAME_SIZE_WORKLOADS and 1 in batches
    if in_turn:
        # A worker meets a mixed workload's images in turn, their sizes alternating, where the figures above repeat
        # one image's passes back to back with its kernels and buffers warm (on a CPU measurably faster per image
        # in bf16, not in fp32). The batch-1 figure the served runs are divided by is the one timed in turn; the
        # repeated one stays beside it.
        for kind, ms in in_turn_ms(classifier.forward, groups_by_kind, min_seconds * len(kinds)).items():
            kinds[kind]["model_ms_repeated"] = kinds[kind]["model_ms"][1]
            kinds[kind]["model_ms"][1] = ms
            print(f"[bare] {model}-{head} {variant(options.to_mapping())} {kind}: model b1 in turn {ms:.1f} ms per "
                  f"image (repeated: {kinds[kind]['model_ms_repeated']:.1f} ms)", flush=True)
    throughput = {batch: 1000 / statistics.mean(k["model_ms"][batch] for k in kinds.values()) for batch in batches}
    return {"model": model, "head": head, "workload": workload, "precision": precision, "in_turn": in_turn,
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
