"""The request path without TorchServe: decode -> group -> infer -> encode, one small function each.

Each image is decoded into its *views*: the sizes the scale policy feeds it at (one under ``working`` or
``native``, one per scale for multi-scale evaluation), each also mirrored when ``flip`` is asked for. Views of
identical size, from any request of the batch, share a forward pass; nothing is padded, so a batched answer
equals the single-request answer (unless the archive opts into size buckets). The fcn head's pass returns the
class-score map, aggregated per image as that request asks; an image's views then become one answer by their mean,
their per-class maximum or the mean of each class's two best (``view_aggregation``, scale_policy.combine_views).
A bad image or bad option becomes a RequestError value in its own slot and never touches the others. Pixels stay
uint8 until they reach the model's device, where they are normalised.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from contextlib import nullcontext
from typing import Dict, List, NamedTuple, Sequence, Tuple, Union

import torch

from . import request_errors as errors
from .compiled_model import SizeBoundedCompile
from .cpu_memory import kept_pass_limit
from .handler_config import HandlerOptions
from .heatmaps import HEATMAP_CLASSES, heatmap_field
from .image_decoding import decode_jpeg_batch, decode_views, is_plain_jpeg, normalize, open_image
from .precision import PRECISION_TABLE
from .request_errors import RequestError
from .request_options import RequestOptions, bad_option
from .scale_policy import combine_views, parse_scales, view_sizes
from .size_buckets import parse_sizes, resize_to_bucket
from .stage_metrics import StageClock
from .vgg_models import aggregate, first_layer_channels

logger = logging.getLogger(__name__)

Decoded = Union[List[torch.Tensor], RequestError]  # an image's views, (H, W, 3) uint8 each, or why there are none
Options = Union[RequestOptions, RequestError]  # a request's options, or why they are refused
UNTRAINED_WARNING = "untrained random weights: these predictions are meaningless"
VIEW_BUDGET = 4  # an image's views (scales x mirrors) may hold at most this many times max_pixels in all


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


def images_per_pass(max_pixels: int, height: int, width: int) -> int:
    """How many images of this size one forward pass holds: at most max_pixels input pixels (at least one)."""
    return max(1, max_pixels // (height * width))


class View(NamedTuple):
    """One input a forward pass sees: of image ``owner``, maybe the mirror of another view."""
    owner: int
    pixels: torch.Tensor
    mirrored: bool


class Classified(NamedTuple):
    """What ``ImageClassifier.classify`` returns for a batch."""
    answers: List[Union[dict, RequestError]]
    clock: StageClock  # where the batch's time went, for the handler's log line and metrics


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
        scores = self.model.served()  # the fcn head's class-score map, or the adaptive head's logits
        self.run_model = SizeBoundedCompile(scores, options.compile_max_sizes) if options.compile else scores
        self.defaults = RequestOptions(
            topk=min(options.topk, len(self.labels)), scale_policy=options.scale_policy,
            scales=parse_scales(options.scales), flip=options.flip,
            aggregation=options.aggregation if self.model.has_score_map else None,
            view_aggregation=options.view_aggregation)
        self.buckets = options.bucket_sizes
        # nvJPEG decodes a batch of JPEGs straight into GPU memory; on a CPU they are decoded one by one.
        self.jpeg_batch_device = device if device.type == "cuda" and options.gpu_decode else None
        self.clock = StageClock()  # the batch in progress's stage times (returned by classify)
        self.precision = PRECISION_TABLE[options.precision]
        self.precision.apply()  # fp32 turns TF32 off: PyTorch's default leaves cuDNN convolutions in TF32
        self.pass_pixels = options.max_pixels
        if device.type == "cpu" and options.keep_cpu_buffers:
            # A CPU whose allocator keeps freed buffers (the worker set it up): stack images only while the pass's
            # buffers stay below the kept size, or every pass maps and faults them in afresh; in bf16 not where
            # stacking amortises large weights (cpu_memory.kept_pass_limit).
            weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            self.pass_pixels = kept_pass_limit(self.pass_pixels, first_layer_channels(self.model),
                                               self.precision.autocast is not None, weight_bytes)

    def warm_up(self, batch_size: int) -> None:
        """Forward passes at the configured sizes, at batch 1 and batchSize, before the first request: kernel
        selection, allocator growth and compilation then happen here instead of in a user's request."""
        for width, height in parse_sizes(self.options.warmup_sizes):
            # The largest pass group() forms at this size: batchSize images, or fewer if max_pixels says so.
            largest = min(max(1, batch_size), self.images_per_pass(height, width))
            for batch in sorted({1, largest}):
                self.forward(torch.zeros(batch, height, width, 3, dtype=torch.uint8))
        if isinstance(self.run_model, SizeBoundedCompile):
            self.run_model.seal()
        self.clock = StageClock()

    def classify(self, bodies: Sequence[Union[bytes, RequestError]],
                 requests: Sequence[Options] | None = None) -> "Classified":
        """One answer per body, in order (a response dict or the RequestError for that body), and the batch's
        stage times. ``requests``: each body's options (default: the archive's)."""
        requests = list(requests) if requests is not None else [self.defaults] * len(bodies)
        self.clock = StageClock()
        with self.clock.stage("decode"):
            decoded = self.decode_all(bodies, requests)
        views = self.expand(decoded, requests)
        probabilities, failures, maps = self.infer(views, requests, self.group([view.pixels for view in views]))
        with self.clock.stage("postprocess"):
            answers = [self.encode(failures.get(i, item), requests[i], probabilities.get(i), maps.get(i))
                       for i, item in enumerate(decoded)]
        self.clock.counts["images"] = len(probabilities)
        self.clock.counts["refused"] = sum(isinstance(answer, RequestError) for answer in answers)
        return Classified(answers, self.clock)

    def sizes_for(self, request: RequestOptions):
        """The sizes an image is fed at under ``request``: a function of the upright image's width and height.
        Views whose pixels add up to more than VIEW_BUDGET x max_pixels are refused (400) when the request asked
        for those scales or mirrors: one request must not turn into a dozen full-size passes that other requests
        of the batch wait for. Under the archive's own defaults the largest views are dropped instead (a
        panorama's views at large scales are huge), and the response's ``scales`` says what was fed."""
        options = self.options
        budget = VIEW_BUDGET * options.max_pixels
        asked = (request.scales, request.flip) != (self.defaults.scales, self.defaults.flip)

        def pixels_of(planned):
            return sum(w * h for w, h in planned) * (2 if request.flip else 1)

        def sizes(width: int, height: int):
            planned = view_sizes(width, height, request.scale_policy, options.working_range, request.scales,
                                 options.max_pixels, options.min_side)
            while not asked and len(planned) > 1 and pixels_of(planned) > budget:
                planned.remove(max(planned, key=lambda size: size[0] * size[1]))
            if pixels_of(planned) > budget:
                raise bad_option("scales", f"views of at most {VIEW_BUDGET} x max_pixels = "
                                           f"{VIEW_BUDGET * options.max_pixels} pixels in all for this image, mirrors "
                                           f"included", ",".join(map(str, request.scales)) or "none")
            return planned
        return sizes

    def fed_pixels(self, body: Union[bytes, RequestError], request: Options) -> int:
        """The pixels the image's views (mirrors included) would feed the network, from its header alone; 0 for a
        body that cannot be read or is refused (it gets its own error when decoded)."""
        if isinstance(body, RequestError) or isinstance(request, RequestError):
            return 0
        try:
            planned = self.sizes_for(request)(*open_image(body, self.options.bomb_pixels).size)
        except Exception:  # refused or unreadable: decode says why
            return 0
        return sum(width * height for width, height in planned) * (2 if request.flip else 1)

    def decode_all(self, bodies: Sequence[Union[bytes, RequestError]], requests: Sequence[Options]) -> List[Decoded]:
        # A body that is already refused (missing field, empty) says so; otherwise refused options do.
        bodies = [request if isinstance(request, RequestError) and not isinstance(body, RequestError) else body
                  for body, request in zip(bodies, requests)]
        together = self.decode_jpegs_together(bodies, requests) if self.jpeg_batch_device is not None else {}
        decoded = [[together[i]] if i in together else self.decode(body, requests[i])
                   for i, body in enumerate(bodies)]
        return [self.to_buckets(item) for item in decoded] if self.buckets else decoded

    def decode_jpegs_together(self, bodies: Sequence[Union[bytes, RequestError]],
                              requests: Sequence[Options]) -> Dict[int, torch.Tensor]:
        """The plain JPEGs of a batch decoded on the GPU (nvJPEG), by index; the rest go the one-by-one way."""
        indices = []
        for index, body in enumerate(bodies):
            try:
                image = open_image(body, self.options.bomb_pixels)
            except Exception:  # refused or not a JPEG: the one-by-one path says why
                continue
            try:
                plain = is_plain_jpeg(image, self.sizes_for(requests[index])(*image.size))
            except RequestError:  # over the view budget: the one-by-one path refuses it
                continue
            if plain:
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

    def to_buckets(self, item: Decoded) -> Decoded:
        if isinstance(item, RequestError):
            return item
        try:
            return [resize_to_bucket(view, self.buckets) for view in item]
        except Exception as error:  # this image's failure, not the batch's
            if is_out_of_memory(error):
                return errors.out_of_memory("resize this image")
            logger.exception("resizing to a bucket failed")
            return errors.inference_failed(f"resizing to a size bucket failed: {error}")

    def decode(self, body: Union[bytes, RequestError], request: Options) -> Decoded:
        if isinstance(body, RequestError):
            return body
        try:
            return decode_views(body, self.sizes_for(request), self.options.bomb_pixels,
                                reduce_jpeg=self.options.jpeg_draft)
        except RequestError as error:
            return error
        except MemoryError:
            return errors.out_of_memory("decode this image")
        except Exception as error:  # whatever else Pillow throws, it is this body's fault, not the batch's
            logger.exception("unexpected decoding failure")
            return errors.not_an_image(f"{type(error).__name__}: {error}")

    @staticmethod
    def expand(decoded: Sequence[Decoded], requests: Sequence[Options]) -> List["View"]:
        """Every view forward passes must see, in each image's order: each size, and its mirror if asked."""
        views = []
        for index, item in enumerate(decoded):
            if isinstance(item, RequestError):
                continue
            for pixels in item:
                views.append(View(index, pixels, False))
                if requests[index].flip:
                    views.append(View(index, pixels.flip(1), True))
        return views

    def images_per_pass(self, height: int, width: int) -> int:
        return images_per_pass(self.pass_pixels, height, width)

    def group(self, images: Sequence[Union[torch.Tensor, RequestError]]) -> List[List[int]]:
        """Indices of same-sized images, split so no forward pass holds more than ``pass_pixels`` input pixels
        (max_pixels; on a CPU in fp32, what keeps the pass's buffers reusable)."""
        by_size: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for index, item in enumerate(images):
            if isinstance(item, torch.Tensor):
                by_size[tuple(item.shape[:2])].append(index)
        chunks = []
        for (height, width), indices in by_size.items():
            per_pass = self.images_per_pass(height, width)
            chunks.extend(indices[i:i + per_pass] for i in range(0, len(indices), per_pass))
        return chunks

    def infer(self, views: List["View"], requests: Sequence[Options], chunks: List[List[int]]
              ) -> Tuple[Dict[int, torch.Tensor], Dict[int, RequestError], Dict[int, List]]:
        """(probabilities per image index: its views combined as its request asks, CPU float32; the RequestError
        of each image whose views were in a failed pass; the unmirrored views' score maps, ([H, W], map) in view
        order, of each image whose request asked for a heatmap). A failed pass fails only the images with a view
        in it."""
        rows_of: Dict[int, List[torch.Tensor]] = defaultdict(list)
        failures: Dict[int, RequestError] = {}
        maps_of: Dict[int, List] = defaultdict(list)
        for chunk in chunks:
            owners = [views[v].owner for v in chunk]
            try:
                scores = self.forward(self.stack([views[v].pixels for v in chunk]))
                rows = self.to_probabilities(scores, [requests[i].aggregation for i in owners])
                for j, v in enumerate(chunk):  # the maps a heatmap was asked for, before the pass's scores go
                    if scores.dim() == 4 and requests[owners[j]].heatmap and not views[v].mirrored:
                        maps_of[owners[j]].append((v, tuple(views[v].pixels.shape[:2]), scores[j].float().cpu()))
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                if "CUDA error" in str(error) and not is_out_of_memory(error):
                    abandon_worker(error)
                # Only this pass fails: the worker and the batch's other passes go on.
                logger.exception("forward pass over %d images failed", len(chunk))
                self.release_memory()
                failure = errors.out_of_memory("classify this image") if is_out_of_memory(error) \
                    else errors.inference_failed(str(error))
                failures.update(dict.fromkeys(owners, failure))
                continue
            for owner, row in zip(owners, rows):
                rows_of[owner].append(row)
        combined = {i: combine_views(torch.stack(rows), requests[i].view_aggregation) for i, rows in rows_of.items()
                    if i not in failures}
        return combined, failures, {i: [(size, score_map) for _, size, score_map in sorted(entries, key=lambda e: e[0])]
                                    for i, entries in maps_of.items() if i not in failures}

    def to_probabilities(self, scores: torch.Tensor, aggregations: Sequence[str | None]) -> torch.Tensor:
        """One pass's scores -> (N, classes) float32 softmax probabilities on the CPU. An fcn score map is
        aggregated over positions row by row, each as its request asks."""
        with self.clock.stage("postprocess"):
            scores = scores.float()
            if scores.dim() == 4:
                logits = torch.stack([aggregate(row[None], how)[0] for row, how in zip(scores, aggregations)]) \
                    if len(set(aggregations)) > 1 else aggregate(scores, aggregations[0])
            else:
                logits = scores
            return torch.softmax(logits, dim=1).cpu()

    def probabilities(self, pixels: torch.Tensor, aggregation: str | None = None) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, classes) probabilities of one pass, aggregated as the archive's default says
        (or ``aggregation``): what benchmarks and studies call directly."""
        how = aggregation or self.defaults.aggregation
        return self.to_probabilities(self.forward(pixels), [how] * len(pixels))

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
        """(N, H, W, 3) uint8 -> the pass's scores on the model's device: (N, classes) logits for the adaptive head,
        the (N, classes, H', W') class-score map for the fcn head."""
        self.clock.counts["passes"] += 1
        with self.clock.stage("preprocess"):
            batch = normalize(pixels.to(self.device, non_blocking=True))
            batch = batch.contiguous(memory_format=self.memory_format)
        with self.clock.stage("forward"):
            with self.autocast():
                scores = self.run_model(batch)
            if self.device.type == "cuda":  # wait for the kernels, so the forward time is not just their launch
                torch.cuda.synchronize(self.device)
            return scores

    def autocast(self):
        dtype = self.precision.autocast
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def release_memory(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode(self, item: Decoded, request: Options, probabilities: torch.Tensor | None, maps: List | None = None
               ) -> Union[dict, RequestError]:
        if isinstance(item, RequestError):
            return item
        if not torch.isfinite(probabilities).all():  # e.g. fp16 overflow: no valid JSON number to send
            return errors.inference_failed("the model produced non-finite scores")
        top = torch.topk(probabilities, request.topk)
        response = {
            "model": self.model_name,
            "arch": self.options.arch,
            "head": self.options.head,
            "weights": self.options.weights,
            "input_size": list(item[0].shape[:2]),
            "scale_policy": "multi-scale" if request.scales else request.scale_policy,
            "scales": [list(view.shape[:2]) for view in item],
            "flip": request.flip,
            "view_aggregation": request.view_aggregation,
            "aggregation": request.aggregation,
            "predictions": [
                {"index": int(i), "label": self.labels[int(i)], "probability": float(p)}
                for p, i in zip(top.values, top.indices)
            ],
        }
        if request.ignored:
            response["ignored_parameters"] = list(request.ignored)
        if request.heatmap and maps:
            if not all(torch.isfinite(score_map).all() for _, score_map in maps):
                return errors.inference_failed("the model produced non-finite scores in the class-score map")
            response["heatmap"] = heatmap_field(maps, top.indices[:HEATMAP_CLASSES].tolist(), self.labels,
                                                request.aggregation)
        if not self.options.trained:
            response["warning"] = UNTRAINED_WARNING
        return response
