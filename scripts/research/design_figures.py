#!/usr/bin/env python3
"""The measurements behind docs/design.md's choices, written to docs/design-figures.json (one key per part, each
with the machine, versions and date), which the page quotes.

    .venv/bin/python scripts/research/design_figures.py                 # every part, about 8 minutes on 2 cores
    .venv/bin/python scripts/research/design_figures.py --parts fuzz    # one part; the others are kept

Parts:
- fuzz: 3,000 damaged JPEGs, PNGs and WebPs each (truncated, bytes overwritten or bytes inserted; seeded): whether
  torchvision.io's decoder and the handler's Pillow path accept each, and whether their pixels agree. torchvision's
  decode_png runs in a child process, restarted after each crash, since a crash there kills the process.
- im2col: the fcn head's fc6 and fc7 as PyTorch's convolution against the matrix product over unfolded windows
  (`Im2colConv2d`), and fc6's product in bf16 from a strided 3-D input against a 2-D one.
- compile: vgg16-fcn bf16 + channels_last, batch 4, at four sizes: eager; one compiled graph per size (what
  `compiled_model.py` does); one dynamic-shape graph; and, at 224x224 batch 8, per-size graphs with and without
  inductor's freezing.
- sizes: the served fp32 forward pass (ImageClassifier.forward) of vgg16 with both heads at 224x224 to 2048x1536.
- malloc: vgg16-fcn's fp32 forward pass at 224x224 (NCHW and channels_last) and 640x640 under glibc's initial
  allocator thresholds and under the worker's (`cpu_memory.py`), alternating in one process, with the page faults
  per pass; and each pass from the first in a fresh process that never set a threshold (glibc's own rule).
- stacking: on a CPU, the demo model's views and vgg16's 224x224 images, fp32 and bf16, in passes kept under the
  allocator's threshold (kept_pass_pixels) against passes limited by max_pixels only, and which the handler picks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from anysize.classifier import ImageClassifier
from anysize.handler_config import HandlerOptions
from anysize.image_decoding import decode_pixels, open_image, to_rgb
from anysize.vgg_models import Im2colConv2d, load_model
from anysize.weights import random_weights, read_state_dict
from anysize_tools.hostile_corpus import picture, saved
from anysize_tools.paths import DOCS

OUT = DOCS / "design-figures.json"
FUZZ_CASES = 3000
COMPILE_SIZES = ((224, 224), (192, 256), (256, 192), (224, 288))  # (height, width)
PROBE_SIZES = ((224, 224), (480, 640), (768, 1024), (1536, 2048))


def seconds(function: Callable[[], object], calls: int = 5) -> float:
    """Median seconds per call after one warm-up call."""
    function()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------------ fuzz
def damaged(body: bytes, rng: np.random.Generator) -> bytes:
    """One of three kinds of damage, drawn evenly: truncated at a random point, 1-11 bytes overwritten, or 1-64
    random bytes inserted at a random point."""
    out = bytearray(body)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return bytes(out[: int(rng.integers(100, len(out)))])
    if kind == 1:
        for _ in range(int(rng.integers(1, 12))):
            out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
        return bytes(out)
    at = int(rng.integers(0, len(out)))
    return bytes(out[:at]) + rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes() + bytes(out[at:])


def pillow_pixels(body: bytes):
    try:
        return np.asarray(to_rgb(decode_pixels(open_image(body, 16 * 4_194_304))))
    except Exception:  # a RequestError or whatever Pillow raised: refused
        return None


def torchvision_pixels(fmt: str, body: bytes):
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png, decode_webp

    decoder = {"jpeg": decode_jpeg, "png": decode_png, "webp": decode_webp}[fmt]
    try:
        return decoder(torch.frombuffer(bytearray(body), dtype=torch.uint8), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
    except Exception:
        return None


def _torchvision_worker(fmt: str, bodies: List[bytes], start: int, results) -> None:
    """Child process: torchvision's verdict for bodies[start:], appended one by one (a crash ends the list there)."""
    for body in bodies[start:]:
        pixels = torchvision_pixels(fmt, body)
        results.append(None if pixels is None else hashlib.sha256(pixels.tobytes()).hexdigest())


def torchvision_verdicts(fmt: str, bodies: List[bytes]):
    """Per body: the decoded pixels' SHA-256, None (refused) or "crash" (the process died on it)."""
    verdicts: List[object] = []
    with multiprocessing.Manager() as manager:
        while len(verdicts) < len(bodies):
            results = manager.list()
            # fork: a restart after a crash costs milliseconds (spawn would import torch again each time)
            child = multiprocessing.get_context("fork").Process(
                target=_torchvision_worker, args=(fmt, bodies, len(verdicts), results))
            child.start()
            child.join()
            verdicts += list(results)
            if child.exitcode != 0 and len(verdicts) < len(bodies):
                verdicts.append("crash")
    return verdicts


def fuzz() -> Dict[str, dict]:
    import torchvision

    source = picture(160, 120, seed=8)
    originals = {"jpeg": saved(source, "JPEG", quality=90), "png": saved(source, "PNG"),
                 "webp": saved(source, "WEBP", quality=90)}
    figures = {"cases_per_format": FUZZ_CASES, "torchvision": torchvision.__version__}
    for fmt, body in originals.items():
        rng = np.random.default_rng({"jpeg": 7, "png": 11, "webp": 13}[fmt])
        bodies = [damaged(body, rng) for _ in range(FUZZ_CASES)]
        verdicts = torchvision_verdicts(fmt, bodies)
        counts = dict.fromkeys(("both_same", "both_different", "only_pillow", "only_torchvision", "neither",
                                "torchvision_crashed"), 0)
        for damaged_body, verdict in zip(bodies, verdicts):
            ours = pillow_pixels(damaged_body)
            if verdict == "crash":
                counts["torchvision_crashed"] += 1
            elif verdict is None:
                counts["only_pillow" if ours is not None else "neither"] += 1
            elif ours is None:
                counts["only_torchvision"] += 1
            else:
                same = hashlib.sha256(np.ascontiguousarray(ours).tobytes()).hexdigest() == verdict
                counts["both_same" if same else "both_different"] += 1
        figures[fmt] = counts
        print(f"[fuzz] {fmt}: {counts}", flush=True)
    return figures


# ---------------------------------------------------------------------------------------------------- im2col
def im2col() -> dict:
    torch.manual_seed(0)
    figures = {}
    with torch.inference_mode():
        for name, (cin, cout, k), shape in (("fc6_7x7", (512, 4096, 7), (1, 512, 7, 7)),
                                             ("fc6_14x14", (512, 4096, 7), (1, 512, 14, 14)),
                                             ("fc7_batch4_2_positions", (4096, 4096, 1), (4, 4096, 1, 2))):
            conv = torch.nn.Conv2d(cin, cout, k).eval()
            product = Im2colConv2d(cin, cout, k).eval()
            product.load_state_dict(conv.state_dict())
            x = torch.randn(shape)
            assert torch.allclose(conv(x), product(x), atol=1e-3, rtol=1e-3)
            figures[name] = {"conv_ms": 1000 * seconds(lambda: conv(x)), "product_ms": 1000 * seconds(lambda: product(x))}
        # fc6 at 256x192 (an 8x6 map, pooled up to 8x7: 2x1 windows), batch 4, bf16: the product from a strided 3-D view, and 2-D.
        weight = torch.randn(4096, 512 * 49)
        windows = F.unfold(torch.randn(4, 512, 8, 7), 7).transpose(1, 2)  # (4, 2, 25088), strided
        with torch.autocast("cpu", dtype=torch.bfloat16):
            figures["fc6_bf16_256x192_batch4"] = {
                "strided_3d_ms": 1000 * seconds(lambda: F.linear(windows, weight), 3),
                "two_d_ms": 1000 * seconds(lambda: F.linear(windows.reshape(-1, windows.shape[-1]), weight), 3)}
    for name, row in figures.items():
        print(f"[im2col] {name}: {row}", flush=True)
    return figures


# --------------------------------------------------------------------------------------------------- compile
def vgg16(head: str, scratch: Path, keep_buffers: bool = True, **options) -> ImageClassifier:
    """Seeded random vgg16 weights (speed does not depend on them), with a served worker's allocator settings
    (``keep_buffers``; False: the process's allocator as it is)."""
    from anysize.cpu_memory import keep_freed_buffers

    if keep_buffers:
        keep_freed_buffers()
    path = scratch / "vgg16-random-seed0.pth"
    if not path.is_file():
        random_weights("vgg16", 0, scratch)
    model = load_model("vgg16", head, read_state_dict(path))
    return ImageClassifier(model, HandlerOptions(arch="vgg16", head=head, **options), [str(i) for i in range(1000)],
                           "figures", torch.device("cpu"))


def images_per_s(classifier: ImageClassifier, batch: int, sizes) -> Dict[str, float]:
    return {f"{w}x{h}": batch / seconds(lambda h=h, w=w: classifier.forward(torch.zeros(batch, h, w, 3, dtype=torch.uint8)), 3)
            for h, w in sizes}


def compiled(scratch: Path, batch: int, sizes, dynamic: bool, freezing: bool = True) -> dict:
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    classifier = vgg16("fcn", scratch, precision="bf16", channels_last=True)
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = 64
    torch._inductor.config.freezing = freezing
    classifier.run_model = torch.compile(classifier.run_model, dynamic=dynamic)
    started = time.perf_counter()
    for h, w in sizes:  # the compilations, as a warm-up would run them
        classifier.forward(torch.zeros(batch, h, w, 3, dtype=torch.uint8))
    compile_s = time.perf_counter() - started
    return {"compile_s": compile_s, "images_per_s": images_per_s(classifier, batch, sizes)}


def compile_choice(scratch: Path) -> dict:
    figures = {"batch": 4, "eager": {"images_per_s": images_per_s(vgg16("fcn", scratch, precision="bf16",
                                                                         channels_last=True), 4, COMPILE_SIZES)}}
    print(f"[compile] eager: {figures['eager']}", flush=True)
    for name, dynamic in (("per_size", False), ("dynamic", True)):
        figures[name] = compiled(scratch, 4, COMPILE_SIZES, dynamic)
        print(f"[compile] {name}: {figures[name]}", flush=True)
    eager8 = images_per_s(vgg16("fcn", scratch, precision="bf16", channels_last=True), 8, COMPILE_SIZES[:1])
    figures["freezing_224_batch8"] = {
        "eager": eager8["224x224"],
        "without_freezing": compiled(scratch, 8, COMPILE_SIZES[:1], False, freezing=False)["images_per_s"]["224x224"],
        "with_freezing": compiled(scratch, 8, COMPILE_SIZES[:1], False, freezing=True)["images_per_s"]["224x224"]}
    print(f"[compile] freezing: {figures['freezing_224_batch8']}", flush=True)
    return figures


# ----------------------------------------------------------------------------------------------------- sizes
def sizes(scratch: Path) -> dict:
    figures = {}
    for head in ("adaptive", "fcn"):
        classifier = vgg16(head, scratch)
        classifier.forward(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
        for h, w in PROBE_SIZES:
            pixels = torch.zeros(1, h, w, 3, dtype=torch.uint8)
            calls = 3 if h * w < 1_000_000 else 1
            figures.setdefault(f"{w}x{h}", {})[f"{head}_s"] = seconds(lambda: classifier.forward(pixels), calls)
            print(f"[sizes] vgg16-{head} {w}x{h}: {figures[f'{w}x{h}'][f'{head}_s']:.2f} s", flush=True)
    return figures


def malloc(scratch: Path) -> dict:
    import ctypes
    import ctypes.util
    import resource

    from anysize.cpu_memory import GLIBC_DEFAULTS, MMAP_THRESHOLD, TRIM_THRESHOLD, set_thresholds

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

    settings = {"glibc_initial": GLIBC_DEFAULTS, "worker": (MMAP_THRESHOLD, TRIM_THRESHOLD)}
    figures = {"settings": {name: {"mmap_threshold": m, "trim_threshold": t} for name, (m, t) in settings.items()},
               "rounds": 4}
    for memory_format, side in (("nchw", 224), ("channels_last", 224), ("nchw", 640)):
        classifier = vgg16("fcn", scratch, channels_last=memory_format == "channels_last")
        pixels = torch.zeros(1, side, side, 3, dtype=torch.uint8)
        runs = {name: [] for name in settings}
        for _ in range(figures["rounds"]):
            for name, (mmap_threshold, trim_threshold) in settings.items():
                assert set_thresholds(mmap_threshold, trim_threshold), "needs glibc"
                # Hand every free block back first: otherwise the blocks the other setting left in the heap serve
                # this one's requests, whatever its thresholds say.
                libc.malloc_trim(0)
                classifier.forward(pixels)  # the first pass under the new setting
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                calls = 3 if side < 400 else 1
                ms = 1000 * seconds(lambda: classifier.forward(pixels), calls)
                faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (calls + 1)
                runs[name].append({"ms": ms, "page_faults": faults})
        key = f"{memory_format}_{side}"
        figures[key] = {name: {"ms": statistics.median(r["ms"] for r in rows),
                               "page_faults": statistics.median(r["page_faults"] for r in rows), "rounds": rows}
                        for name, rows in runs.items()}
        figures[key]["speedup"] = figures[key]["glibc_initial"]["ms"] / figures[key]["worker"]["ms"]
        # Setting a threshold turns glibc's own rule off, so "glibc_initial" is not what an untouched process does:
        # measure that in a fresh process that never calls mallopt, its passes one after another from the first.
        with multiprocessing.Manager() as manager:
            passes = manager.list()
            child = multiprocessing.get_context("spawn").Process(
                target=_untouched_passes, args=(memory_format, side, str(scratch), 6 if side < 400 else 3, passes))
            child.start()
            child.join()
            figures[key]["untouched_process"] = {"passes": list(passes)}
        print(f"[malloc] {key}: " + ", ".join(f"{n} {v['ms']:.1f} ms, {v['page_faults']:.0f} faults"
                                             for n, v in figures[key].items() if n in settings)
              + "; untouched process: " + ", ".join(f"{p['ms']:.0f} ms/{p['page_faults']} faults"
                                                    for p in figures[key]["untouched_process"]["passes"]), flush=True)
    return figures


def _untouched_passes(memory_format: str, side: int, scratch: str, count: int, passes) -> None:
    """In a fresh process whose allocator nobody configured: ms and page faults of each pass, the first included."""
    import resource

    classifier = vgg16("fcn", Path(scratch), keep_buffers=False, channels_last=memory_format == "channels_last")
    pixels = torch.zeros(1, side, side, 3, dtype=torch.uint8)
    for _ in range(count):
        faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        classifier.forward(pixels)
        passes.append({"ms": 1000 * (time.perf_counter() - started),
                       "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})


def stacking(scratch: Path) -> dict:
    """On a CPU with the worker's allocator settings, channels-last as shipped: the demo model's views (four images'
    views and their mirrors at one size) and vgg16 at 224x224 (eight images), in fp32 and bf16, stacked only while a
    pass's buffers stay kept (kept_pass_pixels) against passes limited by max_pixels only; milliseconds per image,
    and which of the two the handler's rule (cpu_memory.kept_pass_limit) picks."""
    from anysize.cpu_memory import keep_freed_buffers, kept_pass_pixels
    from anysize.vgg_models import first_layer_channels
    from anysize_tools.paths import DEMO

    assert keep_freed_buffers(), "needs glibc"
    figures: dict = {"views": 8}
    cases = (("demo", 4, [(224, 299), (448, 597), (672, 896)]), ("vgg16", 8, [(224, 224)]))
    for arch, images, sizes in cases:
        for precision in ("fp32", "bf16"):
            if arch == "demo":
                model = load_model("demo", "fcn", read_state_dict(DEMO / "demo-vgg.pth"))
                classifier = ImageClassifier(model, HandlerOptions(arch="demo", head="fcn", channels_last=True,
                                                                   precision=precision),
                                             [str(i) for i in range(10)], "figures", torch.device("cpu"))
            else:
                classifier = vgg16("fcn", scratch, channels_last=True, precision=precision)
            chosen, limits = classifier.pass_pixels, {
                "kept_size": kept_pass_pixels(first_layer_channels(classifier.model)),
                "max_pixels_only": classifier.options.max_pixels}
            entry = figures.setdefault(arch, {"kept_pass_pixels": limits["kept_size"],
                                              "max_pixels": limits["max_pixels_only"], "images": images})
            for height, width in sizes:
                count = figures["views"] * images // 4 if arch == "demo" else images
                views = [torch.zeros(height, width, 3, dtype=torch.uint8)] * count
                row = {"handler": next(name for name, limit in limits.items() if limit == chosen)}
                for name, limit in limits.items():
                    classifier.pass_pixels = limit
                    chunks = classifier.group(views)
                    run = lambda chunks=chunks: [classifier.forward(torch.stack([views[i] for i in c]))  # noqa: E731
                                                 for c in chunks]
                    row[name] = {"passes": [len(c) for c in chunks], "ms_per_image": 1000 * seconds(run, 3) / images}
                classifier.pass_pixels = chosen
                entry.setdefault(precision, {})[f"{width}x{height}"] = row
                print(f"[stacking] {arch} {precision} {width}x{height}: handler {row['handler']}; " + ", ".join(
                    f"{n} {row[n]['passes']} {row[n]['ms_per_image']:.1f} ms/image" for n in limits), flush=True)
    return figures


PARTS = {"fuzz": lambda scratch: fuzz(), "im2col": lambda scratch: im2col(), "compile": compile_choice,
         "sizes": sizes, "malloc": malloc, "stacking": stacking}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    args = parser.parse_args()
    from anysize_tools.loadtest import machine_description

    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="design-figures-") as scratch:
        for part in args.parts:
            started = time.time()
            figures = PARTS[part](Path(scratch))
            results[part] = {"meta": {"machine": machine_description(), "python": platform.python_version(),
                                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                                      "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - started, 1),
                                      "command": f"python scripts/research/design_figures.py --parts {part}"},
                             **figures}
            OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"[design-figures] wrote {OUT}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
