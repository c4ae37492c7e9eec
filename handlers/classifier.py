"""The request path without TorchServe: decode -> group -> infer -> encode, one small function each.

Images of one batch keep their own sizes. Images of identical size share a forward pass; nothing is padded or
resized to make a batch, so a batched answer equals the single-request answer. A bad image becomes a RequestError
value in its own slot and never touches the others.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from contextlib import nullcontext
from typing import Dict, List, Sequence, Tuple, Union

import torch

import request_errors as errors
from handler_config import HandlerOptions
from image_decoding import decode_image, normalize
from request_errors import RequestError

logger = logging.getLogger(__name__)

Decoded = Union[torch.Tensor, RequestError]  # (H, W, 3) uint8 pixels, or why there are none
UNTRAINED_WARNING = "untrained random weights: these predictions are meaningless"


def abandon_worker(error: BaseException) -> None:
    """A CUDA error other than out-of-memory leaves the context unusable. TorchServe answers any exception that
    mentions CUDA with 507 and keeps the worker, which would then fail every later batch; exiting makes the
    frontend start a fresh worker instead."""
    logger.critical("unrecoverable CUDA error, exiting so TorchServe restarts this worker: %s", error)
    logging.shutdown()
    os._exit(1)


def is_out_of_memory(error: BaseException) -> bool:
    # CPU allocation failures are plain RuntimeErrors ("DefaultCPUAllocator: can't allocate memory").
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "allocate memory" in str(error)


class ImageClassifier:
    """A loaded model plus the options that shape its requests and responses."""

    def __init__(self, model: torch.nn.Module, options: HandlerOptions, labels: Sequence[str],
                 model_name: str, device: torch.device):
        self.options = options
        self.labels = list(labels)
        self.model_name = model_name
        self.device = device
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.model = model.to(device=device).eval()
        # channels_last helps the convolutional trunk; the classifier's fc6 weight must stay contiguous, or the
        # fcn head's matrix product would copy it (400 MB for vgg16) on every forward pass.
        getattr(self.model, "features", self.model).to(memory_format=self.memory_format)
        self.topk = min(options.topk, len(self.labels))
        self.last_stage_ms: Dict[str, float] = {}
        if options.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def classify(self, bodies: Sequence[Union[bytes, RequestError]]) -> List[Union[dict, RequestError]]:
        """One answer per body, in order: a response dict or the RequestError for that body."""
        started = time.perf_counter()
        decoded = [self.decode(body) for body in bodies]
        decoded_at = time.perf_counter()
        probabilities = self.infer(decoded, self.group(decoded))
        inferred_at = time.perf_counter()
        answers = [self.encode(item, probabilities.get(i)) for i, item in enumerate(decoded)]
        # Kept for the handler's log line, which the benchmark reads to say where the time goes.
        self.last_stage_ms = {"decode": 1000 * (decoded_at - started), "model": 1000 * (inferred_at - decoded_at),
                              "encode": 1000 * (time.perf_counter() - inferred_at)}
        return answers

    def decode(self, body: Union[bytes, RequestError]) -> Decoded:
        if isinstance(body, RequestError):
            return body
        try:
            return decode_image(body, self.options.max_pixels, self.options.min_side, self.options.bomb_factor)
        except RequestError as error:
            return error
        except MemoryError:
            return errors.out_of_memory("decode this image")
        except Exception as error:  # whatever else Pillow throws, it is this body's fault, not the batch's
            logger.exception("unexpected decoding failure")
            return errors.not_an_image(f"{type(error).__name__}: {error}")

    def group(self, decoded: Sequence[Decoded]) -> List[List[int]]:
        """Indices of same-sized images, split so no forward pass holds more than max_pixels input pixels."""
        by_size: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for index, item in enumerate(decoded):
            if isinstance(item, torch.Tensor):
                by_size[tuple(item.shape[:2])].append(index)
        chunks = []
        for (height, width), indices in by_size.items():
            per_pass = max(1, self.options.max_pixels // (height * width))
            chunks.extend(indices[i:i + per_pass] for i in range(0, len(indices), per_pass))
        return chunks

    def infer(self, decoded: List[Decoded], chunks: List[List[int]]) -> Dict[int, torch.Tensor]:
        """Softmax probabilities (CPU, float32) per image index; a failed chunk turns into errors for its images."""
        results: Dict[int, torch.Tensor] = {}
        for chunk in chunks:
            try:
                probabilities = self.forward(torch.stack([decoded[i] for i in chunk]))
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                if "CUDA error" in str(error):
                    abandon_worker(error)
                # Only this pass fails: the worker and the batch's other passes go on.
                logger.exception("forward pass over %d images failed", len(chunk))
                self.release_memory()
                failure = errors.out_of_memory("classify this image") if is_out_of_memory(error) \
                    else errors.inference_failed(str(error))
                for index in chunk:
                    decoded[index] = failure
                continue
            for index, row in zip(chunk, probabilities):
                results[index] = row
        return results

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = normalize(pixels.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        with self.autocast():
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.options.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def release_memory(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode(self, item: Decoded, probabilities: torch.Tensor | None) -> Union[dict, RequestError]:
        if isinstance(item, RequestError):
            return item
        if not torch.isfinite(probabilities).all():  # e.g. fp16 overflow: no valid JSON number to send
            return errors.inference_failed("the model produced non-finite scores")
        top = torch.topk(probabilities, self.topk)
        response = {
            "model": self.model_name,
            "arch": self.options.arch,
            "head": self.options.head,
            "weights": self.options.weights,
            "input_size": list(item.shape[:2]),
            "predictions": [
                {"index": int(i), "label": self.labels[int(i)], "probability": float(p)}
                for p, i in zip(top.values, top.indices)
            ],
        }
        if not self.options.trained:
            response["warning"] = UNTRAINED_WARNING
        return response
