"""What each precision an archive may ask for sets: the one table from a precision's name to its autocast dtype and
the GPU's TF32 flags.

PyTorch leaves ``torch.backends.cudnn.allow_tf32`` True by default, so on Ampere and newer GPUs an "fp32"
convolution would silently run in TF32; every precision therefore sets both TF32 flags itself (``apply``), fp32
turning them off. The memory format (channels_last) is its own option (HandlerOptions.channels_last): it changes
speed, not the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    autocast: Optional[torch.dtype]  # the dtype the convolutions and matrix products run in; None: float32
    tf32: bool  # cuDNN convolutions and CUDA matrix products in TF32 (a GPU mode: changes nothing on a CPU)

    def apply(self) -> None:
        """Set the process-wide TF32 flags this precision depends on (the worker serves one archive)."""
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32


PRECISION_TABLE: Dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", None, tf32=False),
    Precision("tf32", None, tf32=True),
    Precision("bf16", torch.bfloat16, tf32=False),
    Precision("fp16", torch.float16, tf32=False),
)}
PRECISIONS = tuple(PRECISION_TABLE)
