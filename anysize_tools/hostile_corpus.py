#!/usr/bin/env python3
"""A generated corpus of bad and unusual requests, each with the outcome the service documents for it.

    python -m anysize_tools.hostile_corpus --output /tmp/corpus     # write the bodies and manifest.json, list them

Nothing here is committed as a binary: every body is made from code, deterministically. The hardening tests
(tests/test_hardening.py) send each case to a real TorchServe, alone and mixed into batches with good images; the
soak (loadtests/soak.py) mixes them into a long load. docs/reliability.md lists the outcomes.

An outcome is the HTTP status, our error code for 4xx answers from the handler (``error``), or ``None`` where
TorchServe's frontend answers before the handler; for 200 answers, ``input_size`` is the [H, W] fed to the network
where the preprocessing contract fixes it.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

MAX_REQUEST_SIZE = 20 * 1024 * 1024  # config.properties' max_request_size; bodies above it never reach a worker


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    status: int
    error: Optional[str]  # the handler's error code, None for 200 or for answers of TorchServe's frontend
    make_body: Callable[[], bytes] = field(repr=False)
    content_type: Optional[str] = "application/octet-stream"
    multipart: Optional[Dict[str, Tuple[str, str]]] = None  # field -> (file name or "" for a text field, ctype)
    input_size: Optional[Tuple[int, int]] = None  # [H, W] the network must see, for 200 answers
    # (status, error) when these bytes are one image inside a JSON, OIP or several-file request, where no content
    # type applies to them; None: the same as status and error
    embedded: Optional[Tuple[int, Optional[str]]] = None

    @property
    def as_image(self) -> Tuple[int, Optional[str]]:
        return self.embedded or (self.status, self.error)

    @property
    def travels_as_image(self) -> bool:
        """Whether the case is about its bytes, so it can travel as one image of a several-image request: not
        about its transport (multipart layout, form encoding, a body TorchServe's frontend refuses)."""
        return self.multipart is None and (self.error is not None or self.status == 200) and \
            self.content_type not in ("multipart/form-data", "application/x-www-form-urlencoded")

    def body(self) -> bytes:
        return self.make_body()

    def request(self) -> Tuple[bytes, Dict[str, str]]:
        """The body and headers to send: the raw bytes with their Content-Type, or a multipart form built here
        (so that any HTTP client, Locust's included, sends the same bytes)."""
        body = self.body()
        if self.multipart is None:
            return body, ({"Content-Type": self.content_type} if self.content_type else {})
        from urllib3 import encode_multipart_formdata

        fields = {name: ((filename, body, content_type) if filename else "a text field the service ignores")
                  for name, (filename, content_type) in self.multipart.items()}
        form, content_type = encode_multipart_formdata(fields)
        return form, {"Content-Type": content_type}

    def request_kwargs(self) -> dict:
        """Keyword arguments for ``requests.post``."""
        body, headers = self.request()
        return {"data": body, "headers": headers}


# ---------------------------------------------------------------------------------------------------- images
def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7 + seed) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def saved(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG declaring any size, with a tiny IDAT: the header of a decompression bomb, or a zero-size image."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def png_with_chunk(kind: bytes, data: bytes) -> bytes:
    """A valid 64x48 PNG with an extra chunk inserted after IHDR."""
    body = saved(picture(64, 48, 3), "PNG")
    ihdr_end = 8 + 12 + 13
    return body[:ihdr_end] + png_chunk(kind, data) + body[ihdr_end:]


def jpeg_with_exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(picture(60, 40, 4), "JPEG", quality=90, exif=exif.tobytes())


def jpeg_with_big_segments(count: int) -> bytes:
    """A valid JPEG whose header carries ``count`` 64 KB comment segments (several megabytes of metadata)."""
    body = saved(picture(64, 48, 5), "JPEG", quality=90)
    segment = b"\xff\xfe" + struct.pack(">H", 65535) + b"m" * 65533
    return body[:2] + segment * count + body[2:]


def jpeg_garbage_scan() -> bytes:
    """A JPEG with a valid header whose entropy-coded data is replaced by random bytes."""
    body = bytearray(saved(picture(96, 64, 6), "JPEG", quality=90))
    start = body.index(b"\xff\xda") + 2 + struct.unpack(">H", body[body.index(b"\xff\xda") + 2:][:2])[0]
    noise = np.random.default_rng(7).integers(0, 255, len(body) - start - 2, dtype=np.uint8).tobytes()
    return bytes(body[:start]) + noise.replace(b"\xff", b"\x00") + b"\xff\xd9"


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (50, 40), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    return saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    pages = [picture(70, 50, 8), picture(30, 30, 9), picture(10, 90, 10)]
    return saved(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def animated_webp() -> bytes:
    frames = [picture(48, 48, s) for s in (11, 12)]
    return saved(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)


def cmyk_jpeg() -> bytes:
    return saved(picture(80, 60, 13, "CMYK"), "JPEG", quality=90)


def sixteen_bit_png() -> bytes:
    values = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return saved(Image.fromarray(values), "PNG")  # uint16 arrays become mode I;16


def palette_png(transparent: bool) -> bytes:
    image = picture(64, 48, 14).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return saved(image, "PNG", **({"transparency": 0} if transparent else {}))


def multipart_ok(name: str) -> Dict[str, Tuple[str, str]]:
    return {name: ("photo.png", "image/png")}


PNG_64x48 = lambda: saved(picture(64, 48, 1), "PNG")  # noqa: E731  (the good image most cases start from)
JPEG_64x48 = lambda: saved(picture(64, 48, 2), "JPEG", quality=90)  # noqa: E731


def cases() -> List[Case]:
    """Every case, in a stable order. Sizes in ``input_size`` follow the preprocessing contract (README)."""
    return [
        # ---- not images at all
        Case("empty-body", "no bytes", 400, "empty_body", lambda: b""),
        Case("plain-text", "text/plain prose", 400, "not_an_image", lambda: b"hello, classifier", "text/plain"),
        Case("json", "a JSON document that is no request form (request_formats)", 400, "bad_json_body",
             lambda: b'{"url": "http://example.com/cat.jpg"}', "application/json", embedded=(400, "not_an_image")),
        Case("html", "an HTML page", 400, "not_an_image",
             lambda: b"<!DOCTYPE html><html><body><img src=cat.jpg></body></html>", "text/html"),
        Case("random-bytes", "4 KB of random bytes", 400, "not_an_image",
             lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        Case("zip-file", "a ZIP archive", 400, "not_an_image", lambda: zip_bytes()),
        Case("svg", "an SVG drawing", 415, "unsupported_format",
             lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
             "image/svg+xml"),
        Case("ico", "a Windows icon", 415, "unsupported_format", lambda: saved(picture(32, 32), "ICO"),
             "image/x-icon"),
        Case("ppm", "a PPM (netpbm) image", 415, "unsupported_format", lambda: saved(picture(20, 20), "PPM")),
        # ---- broken images
        Case("truncated-jpeg", "a JPEG cut in its pixel data, at 60 %", 400, "corrupt_image",
             lambda: (lambda b: b[:len(b) * 3 // 5])(saved(picture(200, 150, 2), "JPEG", quality=90))),
        Case("truncated-png", "a PNG cut in its pixel data", 400, "corrupt_image",
             lambda: saved(picture(64, 48, 1), "PNG")[:2000]),
        Case("truncated-webp", "a WebP cut in half", 400, "not_an_image",
             lambda: (lambda b: b[:len(b) // 2])(saved(picture(64, 48, 1), "WEBP", quality=80))),
        Case("png-signature-only", "the 8-byte PNG signature and nothing else", 400, "not_an_image",
             lambda: b"\x89PNG\r\n\x1a\n"),
        Case("png-bad-crc", "a PNG whose header chunk fails its checksum", 400, "not_an_image",
             lambda: (lambda b: b[:29] + bytes([b[29] ^ 0xFF]) + b[30:])(PNG_64x48())),
        Case("jpeg-corrupt-header", "a JPEG start marker followed by garbage", 400, "not_an_image",
             lambda: b"\xff\xd8\xff" + b"\x13\x37" * 200),
        Case("jpeg-garbage-scan", "a valid JPEG header with random entropy-coded data", 200, None,
             jpeg_garbage_scan, "image/jpeg", input_size=(64, 96)),
        Case("zero-size-png", "a PNG declaring 0x0 pixels", 400, "not_an_image", lambda: png_with_header(0, 0)),
        # ---- decompression bombs (refused from the header, before any pixel is decoded)
        Case("png-bomb", "a PNG declaring 100000x100000 pixels", 413, "image_too_large",
             lambda: png_with_header(100_000, 100_000)),
        Case("gif-bomb", "a GIF declaring 65535x65535 pixels", 413, "image_too_large", lambda: gif_declaring(65535)),
        # ---- valid but unusual images
        Case("one-pixel", "a 1x1 PNG", 200, None, lambda: saved(picture(1, 1), "PNG"), "image/png",
             input_size=(32, 32)),
        Case("strip-1x100000", "a 1 x 100000 PNG strip", 200, None, lambda: saved(picture(100_000, 1), "PNG"),
             "image/png", input_size=(32, 131072)),
        Case("png-16-bit", "a 16-bit greyscale PNG", 200, None, sixteen_bit_png, "image/png", input_size=(48, 64)),
        Case("png-palette", "a palette PNG", 200, None, lambda: palette_png(False), "image/png", input_size=(48, 64)),
        Case("png-palette-transparent", "a palette PNG with a transparent entry", 200, None,
             lambda: palette_png(True), "image/png", input_size=(48, 64)),
        Case("png-grey-alpha", "a grey + alpha PNG", 200, None, lambda: saved(picture(64, 48, 15, "LA"), "PNG"),
             "image/png", input_size=(48, 64)),
        Case("png-1-bit", "a 1-bit PNG", 200, None, lambda: saved(picture(64, 48, 16, "1"), "PNG"), "image/png",
             input_size=(48, 64)),
        Case("jpeg-cmyk", "a CMYK JPEG", 200, None, cmyk_jpeg, "image/jpeg", input_size=(60, 80)),
        Case("jpeg-progressive", "a progressive JPEG", 200, None,
             lambda: saved(picture(80, 60, 17), "JPEG", quality=85, progressive=True), "image/jpeg",
             input_size=(60, 80)),
        Case("jpeg-trailing-garbage", "a JPEG followed by 10 KB of junk", 200, None,
             lambda: JPEG_64x48() + b"junk" * 2560, "image/jpeg", input_size=(48, 64)),
        Case("gif-animated", "an animated GIF (first frame is used)", 200, None, animated_gif, "image/gif",
             input_size=(40, 50)),
        Case("tiff-multipage", "a three-page TIFF (first page is used)", 200, None, multipage_tiff, "image/tiff",
             input_size=(50, 70)),
        Case("webp-animated", "an animated WebP (first frame is used)", 200, None, animated_webp, "image/webp",
             input_size=(48, 48)),
        Case("bmp-top-down", "a BMP stored top-down (negative height)", 200, None, bmp_top_down, "image/bmp",
             input_size=(36, 48)),
        Case("exif-rotate-90", "a 60x40 JPEG with EXIF orientation 6 (turned upright to 40x60)", 200, None,
             lambda: jpeg_with_exif_orientation(6), "image/jpeg", input_size=(60, 40)),
        Case("exif-rotate-270", "a 60x40 JPEG with EXIF orientation 8", 200, None,
             lambda: jpeg_with_exif_orientation(8), "image/jpeg", input_size=(60, 40)),
        Case("exif-mirror", "a 60x40 JPEG with EXIF orientation 2 (mirrored)", 200, None,
             lambda: jpeg_with_exif_orientation(2), "image/jpeg", input_size=(40, 60)),
        Case("exif-invalid-orientation", "a 60x40 JPEG with EXIF orientation 9 (no such value: kept as stored)",
             200, None, lambda: jpeg_with_exif_orientation(9), "image/jpeg", input_size=(40, 60)),
        Case("jpeg-huge-metadata", "a JPEG carrying 6 MB of comment segments", 200, None,
             lambda: jpeg_with_big_segments(96), "image/jpeg", input_size=(48, 64)),
        Case("png-huge-text-chunk", "a PNG carrying a 5 MB tEXt chunk", 200, None,
             lambda: png_with_chunk(b"tEXt", b"Comment\0" + b"x" * 5_000_000), "image/png", input_size=(48, 64)),
        Case("png-ztxt-bomb", "a PNG whose compressed text chunk inflates to 50 MB", 400, "not_an_image",
             lambda: png_with_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"x" * 50_000_000, 9))),
        # ---- transport: sizes, content types, multipart
        Case("over-max-request-size", "a body 1 KB over max_request_size", 413, None,
             lambda: b"\0" * (MAX_REQUEST_SIZE + 1024)),
        Case("png-labelled-jpeg", "a PNG sent as image/jpeg (the bytes decide)", 200, None, PNG_64x48, "image/jpeg",
             input_size=(48, 64)),
        Case("png-labelled-text", "a PNG sent as text/plain (not UTF-8, so it arrives as bytes)", 200, None,
             PNG_64x48, "text/plain", input_size=(48, 64)),
        Case("png-labelled-json", "a PNG sent as application/json (not JSON, so it arrives as bytes)", 200, None,
             PNG_64x48, "application/json", input_size=(48, 64)),
        Case("png-no-content-type", "a PNG with no Content-Type header", 200, None, PNG_64x48, None,
             input_size=(48, 64)),
        Case("form-fields", "an HTML form body (a=1&b=2) instead of an image", 400, "missing_field",
             lambda: b"a=1&b=2", "application/x-www-form-urlencoded"),
        # A known limit of TorchServe 0.12's frontend: it parses form bodies itself and answers binary ones with
        # a 500 (ErrorDataDecoderException) before the handler runs. curl --data-binary sends this type by default.
        Case("png-labelled-form", "a PNG sent as application/x-www-form-urlencoded", 500, None, PNG_64x48,
             "application/x-www-form-urlencoded"),
        Case("multipart-without-boundary", "a PNG sent as multipart/form-data without a boundary (read as raw)",
             200, None, PNG_64x48, "multipart/form-data", input_size=(48, 64)),
        Case("multipart-data", "multipart, image in field 'data'", 200, None, PNG_64x48,
             multipart=multipart_ok("data"), input_size=(48, 64)),
        Case("multipart-missing-field", "multipart without a 'data' or 'file' field", 400, "missing_field",
             PNG_64x48, multipart={"picture": ("photo.png", "image/png")}),
        Case("multipart-extra-fields", "multipart with the image in 'file' plus two other fields", 200, None,
             PNG_64x48, multipart={"file": ("photo.png", "image/png"), "comment": ("", ""), "user": ("", "")},
             input_size=(48, 64)),
        Case("multipart-text-only", "multipart whose 'data' field is text, not a file", 400, "not_an_image",
             PNG_64x48, multipart={"data": ("", "")}),
        Case("multipart-empty-file", "multipart with an empty 'data' file", 400, "empty_body", lambda: b"",
             multipart=multipart_ok("data")),
    ]


def zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.jpg", JPEG_64x48())
    return buffer.getvalue()


def gif_declaring(side: int) -> bytes:
    """A GIF whose logical screen and image descriptor declare side x side; the pixel data is one tiny block."""
    screen = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0)
    return screen + descriptor + b"\x02\x02\x44\x01\x00" + b"\x3b"


def bmp_top_down() -> bytes:
    """A 48x36 BMP with a negative height in its header: rows stored top to bottom."""
    body = bytearray(saved(picture(48, 36, 18), "BMP"))
    height = struct.unpack("<i", body[22:26])[0]
    rows = [bytes(body[54 + i * 144:54 + (i + 1) * 144]) for i in range(height)]  # 48 px * 3 bytes, no padding
    body[22:26] = struct.pack("<i", -height)
    body[54:] = b"".join(reversed(rows))
    return bytes(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    manifest = []
    for case in cases():
        body = case.body()
        (args.output / f"{case.name}.bin").write_bytes(body)
        manifest.append({"name": case.name, "what": case.what, "status": case.status, "error": case.error,
                         "content_type": case.content_type, "multipart": case.multipart,
                         "input_size": case.input_size, "bytes": len(body)})
        print(f"{case.status} {case.error or '':20s} {case.name:28s} {len(body):>10,d} B  {case.what}")
    (args.output / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(manifest)} cases in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
