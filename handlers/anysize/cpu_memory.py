"""glibc's allocator settings for a CPU worker: keep the forward pass's freed buffers for the next pass.

oneDNN allocates fresh buffers on every CPU forward pass (reordered weights, scratch space, activations), many of
them megabytes large. glibc serves a request above its mmap threshold with a fresh mmap and unmaps it on free, so
the next pass page-faults the same amount in again, each page zeroed by the kernel. Its threshold starts at 128 KB
and only rises when the process happens to free a large mmapped block, so the cost depends on what the process did
before: the TorchServe worker loads its weights straight into the model (nothing large is freed) and stays at the
low threshold. docs/design-figures.json (part `malloc`) measures both settings alternately in one process: tens of
thousands of page faults per VGG16 pass and a slower pass at glibc's initial settings, almost none with these. The
values are the largest glibc's own dynamic rule would reach (a 32 MB threshold, trimming at twice
that), so a worker keeps at most 64 MB of freed memory at the top of its heap; larger blocks still come and go
through mmap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc sets when it raises the threshold itself
GLIBC_DEFAULTS = (128 * 1024, 128 * 1024)  # glibc's initial mmap and trim thresholds


def set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds; False where the C library is not glibc (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


# glibc maps a chunk at or above the threshold; the chunk is the request plus its header and PyTorch's 64-byte
# alignment, so a buffer must stay this far below the threshold to come from the heap.
ALLOCATION_SLACK = 64 * 1024
_kept = False  # whether keep_freed_buffers took effect in this process


def kept_pass_pixels(first_layer_channels: int, bytes_per_value: int = 4) -> int:
    """Input pixels of the largest pass whose first activation (the largest buffer of a VGG pass: full resolution,
    first layer's channels) stays below the threshold, so glibc keeps its buffers between passes. A larger pass
    maps its big buffers afresh on every pass and page-faults them in again: stacking more images into it then
    costs more per image than it saves (docs/design.md, "The CPU allocator")."""
    return max(1, (MMAP_THRESHOLD - ALLOCATION_SLACK) // (first_layer_channels * bytes_per_value))


def kept_pass_limit(max_pixels: int, first_layer_channels: int, autocast: bool = False, weight_bytes: int = 0
                    ) -> int:
    """``max_pixels`` lowered to kept_pass_pixels once this process keeps freed buffers (else unchanged): the input
    pixels a pass on a CPU may stack. In fp32 always. In bf16 (``autocast``) only for a model whose weights are
    under the kept size: a bf16 pass computes fast enough that stacking pays by reading large weights once for
    many images (vgg16 at 224 px: eight per pass beat two), while a small model has nothing to amortise and only
    maps and faults in its big buffers afresh (the demo model's bf16 views: a third slower per image). The limit is
    the same number of pixels as in fp32 although a bf16 activation is half the bytes: in this project's trial on
    the mixed workload, twice the pixels per pass was slower. The weight cut only separates the models measured
    (a few MB against hundreds); ``autocast`` is any reduced precision (bf16, fp16). docs/design-figures.json, part
    ``stacking``, measures both models."""
    if not buffers_kept() or (autocast and weight_bytes > MMAP_THRESHOLD):
        return max_pixels
    return min(max_pixels, kept_pass_pixels(first_layer_channels))


def buffers_kept() -> bool:
    """True once keep_freed_buffers has set glibc's thresholds in this process (not on musl or macOS)."""
    return _kept


def keep_freed_buffers() -> bool:
    """The worker's setting (HandlerOptions.keep_cpu_buffers): freed forward-pass buffers up to 32 MB stay."""
    global _kept
    done = set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)
    _kept = _kept or done
    if not done:
        logger.info("not glibc: the allocator's thresholds are left as they are")
    return done
