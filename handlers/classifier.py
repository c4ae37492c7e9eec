"""The request path without TorchServe: decode -> group -> infer -> encode, one small function each.

Images of one batch keep their own sizes. Images of identical size share a forward pass; nothing is padded or
resized to make a batch, so a batched answer equals the single-request answer (unless the archive opts into
size buckets). A bad image becomes a RequestError value in its own slot and never touches the others. Pixels stay
uint8 until they reach the model's device, where they are normalised.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Dict, List, Sequence, Tuple, Union

import torch

import request_errors as errors
from compiled_model import SizeBoundedCompile
from handler_config import HandlerOptions
from image_decoding import decode_image, decode_jpeg_batch, is_plain_jpeg, normalize, open_image
from request_errors import RequestError
from size_buckets import parse_sizes, resize_to_bucket
from stage_metrics import StageClock

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
    # CPU allocation failures are plain RuntimeErrors ("DefaultCPUAllocator: can't allocate memory"); a failed
    # pinned-memory allocation reads "CUDA error: out of memory".
    return (isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "allocate memory" in str(error)
            or "out of memory" in str(error))


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
        self.run_model = SizeBoundedCompile(self.model, options.compile_max_sizes) if options.compile else self.model
        self.buckets = options.bucket_sizes
        # nvJPEG decodes a batch of JPEGs straight into GPU memory; on a CPU they are decoded one by one.
        self.jpeg_batch_device = device if device.type == "cuda" and options.gpu_decode else None
        self.topk = min(options.topk, len(self.labels))
        self.clock = StageClock()  # the last batch's stage times, for the handler's log line and metrics
        if options.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def warm_up(self, batch_size: int) -> None:
        """Forward passes at the configured sizes, at batch 1 and batchSize, before the first request: kernel
        selection, allocator growth and compilation then happen here instead of in a user's request."""
        for width, height in parse_sizes(self.options.warmup_sizes):
            # The largest pass group() forms at this size: batchSize images, or fewer if max_pixels says so.
            largest = min(max(1, batch_size), max(1, self.options.max_pixels // (width * height)))
            for batch in sorted({1, largest}):
                self.forward(torch.zeros(batch, height, width, 3, dtype=torch.uint8))
        if isinstance(self.run_model, SizeBoundedCompile):
            self.run_model.seal()
        self.clock = StageClock()

    def classify(self, bodies: Sequence[Union[bytes, RequestError]]) -> List[Union[dict, RequestError]]:
        """One answer per body, in order: a response dict or the RequestError for that body."""
        self.clock = StageClock()
        with self.clock.stage("decode"):
            decoded = self.decode_all(bodies)
        probabilities = self.infer(decoded, self.group(decoded))
        with self.clock.stage("postprocess"):
            answers = [self.encode(item, probabilities.get(i)) for i, item in enumerate(decoded)]
        self.clock.counts["images"] = len(probabilities)
        self.clock.counts["refused"] = sum(isinstance(answer, RequestError) for answer in answers)
        return answers

    def decode_all(self, bodies: Sequence[Union[bytes, RequestError]]) -> List[Decoded]:
        together = self.decode_jpegs_together(bodies) if self.jpeg_batch_device is not None else {}
        decoded = [together[i] if i in together else self.decode(body) for i, body in enumerate(bodies)]
        return [self.to_bucket(item) for item in decoded] if self.buckets else decoded

    def decode_jpegs_together(self, bodies: Sequence[Union[bytes, RequestError]]) -> Dict[int, torch.Tensor]:
        """The plain JPEGs of a batch decoded on the GPU (nvJPEG), by index; the rest go the one-by-one way."""
        indices = []
        for index, body in enumerate(bodies):
            try:
                image = open_image(body, self.options.bomb_factor * self.options.max_pixels)
            except Exception:  # refused or not a JPEG: the one-by-one path says why
                continue
            if is_plain_jpeg(image, self.options.max_pixels, self.options.min_side):
                indices.append(index)
        if not indices:
            return {}
        if self.jpeg_batch_device.type == "cuda":
            # nvJPEG decodes on a stream of its own into memory allocated on ours (pytorch/vision#9606): let
            # earlier work on ours finish first, so no freed block it still reads is handed out.
            torch.cuda.current_stream(self.jpeg_batch_device).synchronize()
        try:
            return dict(zip(indices, decode_jpeg_batch([bodies[i] for i in indices], self.jpeg_batch_device)))
        except Exception:  # one bad JPEG fails the whole call: try each alone, so only the bad one leaves the GPU
            logger.info("batched JPEG decoding failed; decoding %d images one at a time", len(indices), exc_info=True)
        decoded = {}
        for index in indices:
            try:
                decoded[index] = decode_jpeg_batch([bodies[index]], self.jpeg_batch_device)[0]
            except Exception:  # Pillow decides: it decodes what nvJPEG refused, or says why it cannot
                pass
        return decoded

    def to_bucket(self, item: Decoded) -> Decoded:
        if not isinstance(item, torch.Tensor):
            return item
        try:
            return resize_to_bucket(item, self.buckets)
        except Exception as error:  # this image's failure, not the batch's
            if is_out_of_memory(error):
                return errors.out_of_memory("resize this image")
            logger.exception("resizing to a bucket failed")
            return errors.inference_failed(f"resizing to a size bucket failed: {error}")

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
                probabilities = self.forward(self.stack([decoded[i] for i in chunk]))
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                if "CUDA error" in str(error) and not is_out_of_memory(error):
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

    def stack(self, images: List[torch.Tensor]) -> torch.Tensor:
        """Same-sized (H, W, 3) uint8 images -> one (N, H, W, 3) uint8 batch on the model's device. Images decoded
        on the CPU cross to a GPU as one pinned uint8 copy (a quarter of the bytes of float32)."""
        with self.clock.stage("preprocess"):
            if all(image.device.type == "cpu" for image in images):
                batch = torch.stack(images)
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                return batch.to(self.device, non_blocking=True)
            # Some were decoded on the GPU already: move only the others there.
            return torch.stack([image.to(self.device, non_blocking=True) for image in images])

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, classes) float32 probabilities on the CPU."""
        self.clock.counts["passes"] += 1
        with self.clock.stage("preprocess"):
            batch = normalize(pixels.to(self.device, non_blocking=True))
            batch = batch.contiguous(memory_format=self.memory_format)
        with self.clock.stage("forward"):
            with self.autocast():
                logits = self.run_model(batch)
            # .cpu() waits for the GPU, so the forward time includes the kernels, not just their launch.
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
