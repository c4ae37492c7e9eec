"""Bytes of one request -> an RGB uint8 tensor of the size the network will see, or a RequestError.

The preprocessing contract (tests and external checks depend on it): no resize and no crop while
width*height <= max_pixels and the shorter side >= min_side; larger images are downscaled (aspect kept,
antialiased) to fit max_pixels; images with a side under min_side are upscaled so that side is min_side.
Scaling to [0, 1] and ImageNet normalisation happen later, on the grouped batch (``normalize``).

Pillow reads every header and decodes every format. Plain JPEGs (RGB or grey, upright, no resize needed) are
decoded by torchvision.io instead: libjpeg-turbo through it gives the same pixels 20-40 % faster, and on a GPU
``decode_jpeg_batch`` decodes a whole batch with nvJPEG. docs/design.md says why PNG and WebP stay with Pillow.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from . import request_errors as errors

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow names some camera JPEGs (with an embedded preview) MPO; they are JPEG to the user.
FORMAT_ALIASES = {"MPO": "JPEG"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Image formats Pillow cannot open at all get 415 rather than "not an image": ISO-BMFF brands of HEIF and AVIF.
HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
               b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def sniff_other_format(body: bytes) -> str | None:
    if bytes(body[4:8]) == b"ftyp" and bytes(body[8:12]) in HEIF_BRANDS:
        return HEIF_BRANDS[bytes(body[8:12])]
    head = bytes(body[:4096]).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<") and b"<svg" in head:  # <svg, <?xml, <!DOCTYPE svg, or a leading comment
        return "SVG"
    return None


def open_image(body: bytes, max_declared_pixels: int) -> Image.Image:
    """Identify the image and check its declared size from the header alone, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body))
    except Image.DecompressionBombError as error:
        raise errors.RequestError(413, "image_too_large", f"The image is a decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        other = sniff_other_format(body)
        if other:
            raise errors.unsupported_format(other, ACCEPTED_FORMATS) from error
        raise errors.not_an_image("no known image format recognised") from error
    except Exception as error:  # Pillow raises SyntaxError, ValueError, OSError... on broken headers
        raise errors.not_an_image(f"unreadable header ({error})") from error
    image_format = FORMAT_ALIASES.get(image.format, image.format)
    if image_format not in ACCEPTED_FORMATS:
        raise errors.unsupported_format(image_format, ACCEPTED_FORMATS)
    width, height = image.size
    if width * height > max_declared_pixels:
        raise errors.image_too_large(width, height, max_declared_pixels)
    if width < 1 or height < 1:
        raise errors.corrupt_image(image_format, f"declared size {width}x{height}")
    return image


def decode_pixels(image: Image.Image) -> Image.Image:
    """Decode the first frame fully and turn it upright; truncation and corruption surface here."""
    image_format = FORMAT_ALIASES.get(image.format, image.format)
    try:
        image.seek(0)
        image.load()
    except MemoryError as error:
        raise errors.out_of_memory("decode this image") from error
    except Exception as error:
        raise errors.corrupt_image(image_format, str(error) or type(error).__name__) from error
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block should not cost the user the image: keep it as stored
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Every Pillow mode to 8-bit RGB; transparency is composited over white, 16-bit depth is rounded to 8 bits."""
    key = image.info.get("transparency")
    if image.mode == "RGB" and isinstance(key, tuple) and max(key) > 255:
        # 16-bit RGB PNGs are decoded to 8 bits but keep a 16-bit transparent colour; compare the high bytes
        image.info["transparency"] = tuple(v >> 8 for v in key)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's own convert() clips 16-bit values at 255 (nearly all white), so rescale by hand.
        values = np.asarray(image, dtype=np.float64)
        gray = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
        if "transparency" in image.info:  # a PNG tRNS chunk names one 16-bit grey value as transparent
            gray.putalpha(Image.fromarray(((values != image.info["transparency"]) * 255).astype(np.uint8), "L"))
            return over_white(gray)
        return gray.convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "La":  # premultiplied grey + alpha (TIFF): Pillow converts it to RGBA only through LA
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        return over_white(image)
    return image.convert("RGB")


def over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def network_size(width: int, height: int, max_pixels: int, min_side: int) -> Tuple[int, int]:
    """The (width, height) fed to the network under the preprocessing contract."""
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        width, height = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    if min(width, height) < min_side:
        scale = min_side / min(width, height)
        width, height = max(min_side, round(width * scale)), max(min_side, round(height * scale))
        # Only a strip thinner than max_pixels/min_side : 1 gets here over the budget; cap its long side.
        if width * height > max_pixels:
            long_side = max_pixels // min_side
            width, height = min(width, long_side), min(height, long_side)
    return width, height


def resize_to_contract(image: Image.Image, max_pixels: int, min_side: int) -> Image.Image:
    """The image at the size the network is fed (unchanged when the contract allows it)."""
    size = network_size(image.width, image.height, max_pixels, min_side)
    if size == image.size:
        return image
    # Pillow's bicubic filter widens its support when shrinking, i.e. it antialiases.
    return image.resize(size, Image.Resampling.BICUBIC)


EXIF_ORIENTATION = 0x0112
# torchvision 0.29 warns on every decode that its decoders will move to TorchCodec; they work, and the warning
# would otherwise fill the worker log. Moving to TorchCodec is left for when it ships a JPEG decoder this fast.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def upright_size(image: Image.Image) -> Tuple[int, int]:
    """(width, height) of a JPEG once EXIF orientation is applied: orientations 5-8 turn it by 90 degrees. Only for
    JPEGs, whose EXIF block is read with the header; other formats may decode everything to find theirs."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # an EXIF block Pillow cannot parse is ignored when decoding too (decode_pixels)
        orientation = 1
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size


def is_plain_jpeg(image: Image.Image, sizes: Sequence[Tuple[int, int]]) -> bool:
    """True when torchvision.io decodes this JPEG exactly as the Pillow path would: 8-bit RGB or grey (not CMYK),
    upright (no EXIF rotation to apply) and fed at its own size only (``sizes``: the sizes it is fed at)."""
    if FORMAT_ALIASES.get(image.format, image.format) != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    if list(sizes) != [image.size]:
        return False
    try:
        return image.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # an EXIF block Pillow cannot parse: let the Pillow path decide what to do with it
        return False


def reduce_while_decoding(image: Image.Image, width: int, height: int) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling, Pillow's ``draft``) when every size
    it is fed at is at most that small: a 12 MP photo fed at 597x448 is decoded at 1008x756, not 4032x3024.
    The result stays at least width x height (upright), so the final resize still only shrinks. Other formats
    ignore it. The resolution study measures that answers do not change (docs/resolution-study.md)."""
    if FORMAT_ALIASES.get(image.format, image.format) != "JPEG":
        return
    stored_w, stored_h = upright_size(image)
    if (stored_w, stored_h) != image.size:  # turned by EXIF: the request is in stored orientation
        width, height = height, width
    if width * 2 <= image.width and height * 2 <= image.height:
        image.draft(None, (width, height))


def as_uint8_tensor(body: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(body), dtype=torch.uint8)


def decode_jpeg_batch(bodies: Sequence[bytes], device: torch.device) -> List[torch.Tensor]:
    """Plain JPEGs -> (H, W, 3) uint8 tensors on ``device``, decoded together (nvJPEG on a GPU). Raises when any
    of them fails; the caller then decodes them one by one, so a bad image only fails itself."""
    images = decode_jpeg([as_uint8_tensor(body) for body in bodies], mode=ImageReadMode.RGB, device=device)
    # torchvision returns (3, H, W) views of (H, W, 3) memory: permuting back is free and contiguous.
    return [image.permute(1, 2, 0) for image in images]


def decode_views(body: bytes, sizes_for: Callable[[int, int], List[Tuple[int, int]]], max_declared_pixels: int,
                 reduce_jpeg: bool = True) -> List[torch.Tensor]:
    """Request bytes -> one (H, W, 3) uint8 tensor per size the image is fed at. ``sizes_for(width, height)`` names
    those sizes for the upright picture (scale_policy.view_sizes). Raises RequestError for bad input."""
    if not body:
        raise errors.empty_body()
    image = open_image(body, max_declared_pixels)
    sizes = None
    if FORMAT_ALIASES.get(image.format, image.format) == "JPEG":  # planned from the header: decoding can use it
        planned_w, planned_h = upright_size(image)
        sizes = sizes_for(planned_w, planned_h)
        if is_plain_jpeg(image, sizes):
            try:
                return [decode_jpeg(as_uint8_tensor(body), mode=ImageReadMode.RGB).permute(1, 2, 0).contiguous()]
            except Exception:  # torchvision refuses some JPEGs Pillow can decode: Pillow has the last word
                pass
        if reduce_jpeg:
            reduce_while_decoding(image, max(w for w, _ in sizes), max(h for _, h in sizes))
    image = to_rgb(decode_pixels(image))
    if sizes is None or (image.width > image.height) != (planned_w > planned_h):
        # other formats are planned from the decoded, upright picture; so is a JPEG whose EXIF turn failed
        sizes = sizes_for(*image.size)
    # Pillow's bicubic filter widens its support when shrinking, i.e. it antialiases.
    return [torch.from_numpy(np.array(image if image.size == size else image.resize(size, Image.Resampling.BICUBIC),
                                      dtype=np.uint8, copy=True)) for size in sizes]


def decode_image(body: bytes, max_pixels: int, min_side: int, bomb_factor: int) -> torch.Tensor:
    """Request bytes -> (H, W, 3) uint8 tensor at the plain contract's size: full decoding, then the contract's
    resize (the ``native`` policy without reduced-size JPEG decoding)."""
    return decode_views(body, lambda w, h: [network_size(w, h, max_pixels, min_side)], bomb_factor * max_pixels,
                        reduce_jpeg=False)[0]


def normalize(batch_hwc: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float: x / 255, then ImageNet mean and std, per channel."""
    x = batch_hwc.permute(0, 3, 1, 2).to(dtype).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
