"""Optional ``torch.compile`` for the image sizes the deployment expects, eager for every other size.

Each new image size costs a compilation (seconds on a GPU, tens of seconds on a CPU), and a size-agnostic
service sees unboundedly many sizes. Sizes are compiled only during warm-up (the archive's warmup_sizes, at most
``max_sizes`` of them); after ``seal()`` every other size runs the same model eagerly, so no request ever waits
for a compilation and mixed traffic never recompiles forever. The batch dimension is marked dynamic, so one graph
serves every batch size at a given image size (dynamo still specialises batch 1 separately). docs/design.md has
the measurements behind this choice (per-size graphs against dynamic shapes and eager).
"""

from __future__ import annotations

import logging
from typing import Set, Tuple

import torch
import torch._inductor.config

logger = logging.getLogger(__name__)


class SizeBoundedCompile:
    def __init__(self, model: torch.nn.Module, max_sizes: int):
        self.eager = model
        self.max_sizes = max_sizes
        self.compiled_sizes: Set[Tuple[int, int]] = set()
        self.failed_sizes: Set[Tuple[int, int]] = set()  # sizes inductor could not compile
        self.accepting = True  # compile new sizes (during warm-up) until sealed
        self.eager_calls = 0
        # Left on, dynamo would turn height and width dynamic after the second size: one generic graph that is
        # slower to compile and no faster; off, it compiles per size, which this class bounds itself.
        torch._dynamo.config.automatic_dynamic_shapes = False
        # Two graphs per size (batch 1 and the dynamic batch) must fit dynamo's per-function cache.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * max_sizes + 2)
        # Weights never change while serving: freezing lets inductor fold them as constants and pre-pack them for
        # oneDNN, which is what makes compiling pay on a CPU (vgg16 bf16 batch 8: 10.6 img/s eager, 5.3 compiled
        # without freezing, 13.2 with it). It keeps a second, packed copy of the weights.
        torch._inductor.config.freezing = True
        self.compiled = torch.compile(model, dynamic=False)

    def seal(self) -> None:
        """End of warm-up: from now on only the sizes compiled so far use compiled graphs."""
        self.accepting = False
        logger.info("compiled sizes (height, width): %s; every other size runs eagerly",
                    sorted(self.compiled_sizes) or "none")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        size = (int(batch.shape[2]), int(batch.shape[3]))
        if size not in self.compiled_sizes:
            if not self.accepting or len(self.compiled_sizes) >= self.max_sizes or size in self.failed_sizes:
                self.eager_calls += 1
                return self.eager(batch)
            logger.info("compiling the model for %dx%d inputs (%d of at most %d sizes)", size[1], size[0],
                        len(self.compiled_sizes) + 1, self.max_sizes)
            self.compiled_sizes.add(size)
        if batch.shape[0] > 1:
            torch._dynamo.mark_dynamic(batch, 0)
        try:
            return self.compiled(batch)
        except torch.OutOfMemoryError:
            raise  # not the compiler's fault: the handler fails this pass alone
        except Exception:  # a size inductor cannot compile runs eagerly from now on
            logger.exception("compiled model failed for %dx%d inputs; running that size eagerly", size[1], size[0])
            self.compiled_sizes.discard(size)
            self.failed_sizes.add(size)
            self.eager_calls += 1
            return self.eager(batch)
