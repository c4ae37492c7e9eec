"""Decoding and the preprocessing contract: every accepted format and mode, the size policy, and the errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import encode, make_photo, to_input
from PIL import Image

from anysize.image_decoding import decode_image, network_size, normalize
from anysize.request_errors import RequestError
from anysize_tools.hostile_corpus import png_with_header

MAX_PIXELS = 4_194_304


def decode(body: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return decode_image(body, max_pixels=max_pixels, min_side=32, bomb_factor=16).numpy()


def error_of(body: bytes, max_pixels: int = MAX_PIXELS) -> RequestError:
    with pytest.raises(RequestError) as raised:
        decode(body, max_pixels)
    return raised.value


PHOTO = make_photo(96, 64, seed=1)
LOSSLESS = {
    "PNG": {}, "BMP": {}, "TIFF": {}, "WEBP": {"lossless": True},
}


@pytest.mark.parametrize("image_format", sorted(LOSSLESS))
def test_lossless_formats_keep_every_pixel_and_the_size(image_format):
    pixels = decode(encode(PHOTO, image_format, **LOSSLESS[image_format]))
    assert pixels.shape == (64, 96, 3)
    assert np.array_equal(pixels, np.asarray(PHOTO))


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_lossy_formats_decode_to_what_pillow_decodes(image_format):
    body = encode(PHOTO, image_format, quality=90)
    with Image.open(io.BytesIO(body)) as expected:
        assert np.array_equal(decode(body), np.asarray(expected.convert("RGB")))


def test_progressive_jpeg_decodes():
    body = encode(PHOTO, "JPEG", progressive=True, quality=85)
    assert decode(body).shape == (64, 96, 3)


def test_gif_uses_the_first_frame_of_an_animation():
    red, blue = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    body = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    pixels = decode(body)
    assert pixels.shape == (40, 40, 3) and tuple(pixels[0, 0]) == (255, 0, 0)


def test_multipage_tiff_uses_the_first_page():
    first, second = Image.new("RGB", (50, 40), (10, 200, 30)), Image.new("RGB", (50, 40), (0, 0, 0))
    pixels = decode(encode(first, "TIFF", save_all=True, append_images=[second]))
    assert tuple(pixels[5, 5]) == (10, 200, 30)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    stored = Image.new("RGB", (80, 40), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 40, 40))  # white on the left of the stored picture
    pixels = decode(encode(stored, "PNG", exif=exif))
    assert pixels.shape == (80, 40, 3)  # upright: 40 wide, 80 tall
    assert pixels[5, 20].min() > 200 and pixels[75, 20].max() < 50  # left half of the stored image is now on top


def test_grayscale_is_replicated_to_three_channels():
    gray = Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48).astype(np.uint8), "L")
    pixels = decode(encode(gray, "PNG"))
    assert np.array_equal(pixels[..., 0], np.asarray(gray)) and np.array_equal(pixels[..., 0], pixels[..., 2])


def test_sixteen_bit_grayscale_keeps_its_range():
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    pixels = decode(encode(Image.fromarray(values), "PNG"))
    assert pixels.shape == (64, 64, 3)
    assert np.array_equal(pixels[..., 1], np.rint(values / 257.0).astype(np.uint8))  # not clipped at 255


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_over_white(mode):
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 20, 40))
    image = rgba.convert(mode) if mode != "P" else rgba.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "P":  # palette entry of the transparent pixels becomes the transparency key
        image.info["transparency"] = image.getpixel((30, 30))
    pixels = decode(encode(image, "PNG"))
    assert tuple(pixels[20, 30]) == (255, 255, 255)
    assert pixels[20, 5].max() > 0 and tuple(pixels[20, 5]) != (255, 255, 255)


def test_sixteen_bit_transparency_key_is_composited_over_white():
    values = np.full((40, 40), 20_000, dtype=np.uint16)
    values[:, :20] = 5
    pixels = decode(encode(Image.fromarray(values), "PNG", transparency=5))
    assert tuple(pixels[10, 5]) == (255, 255, 255) and tuple(pixels[10, 30]) == (78, 78, 78)


def test_premultiplied_grey_alpha_is_composited_over_white():
    from anysize.image_decoding import to_rgb

    image = Image.new("La", (8, 8), (100, 128))  # premultiplied grey 100 at alpha 128: straight grey ~199
    assert np.abs(np.asarray(to_rgb(image)).astype(int) - 227).max() <= 1  # 199 * 0.5 + 255 * 0.5


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (48, 48), (0, 255, 255, 0))  # pure red in CMYK
    pixels = decode(encode(cmyk, "JPEG", quality=95))
    red, green, blue = (int(v) for v in pixels[24, 24])
    assert red > 200 and green < 60 and blue < 60


def test_bilevel_and_palette_images_decode():
    assert decode(encode(Image.new("1", (40, 40), 1), "PNG")).shape == (40, 40, 3)
    assert decode(encode(PHOTO.convert("P"), "GIF")).shape == (64, 96, 3)


@pytest.mark.parametrize("size,expected", [
    ((640, 480), (640, 480)),  # within limits: untouched
    ((2048, 2048), (2048, 2048)),  # exactly max_pixels
    ((4000, 3000), (2364, 1773)),  # downscaled to fit max_pixels, aspect kept
    ((1, 1), (32, 32)),
    ((20, 100), (32, 160)),  # short side up to 32, aspect kept
    ((1, 100000), (32, 131072)),  # an extreme strip: short side 32, long side capped to stay within max_pixels
])
def test_network_size_follows_the_contract(size, expected):
    width, height = network_size(*size, max_pixels=MAX_PIXELS, min_side=32)
    assert (width, height) == expected
    assert width * height <= MAX_PIXELS and min(width, height) >= 32


def test_large_images_are_downscaled_with_antialiasing():
    stripes = np.zeros((400, 600, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: antialiasing averages them to grey, point sampling would not
    pixels = decode(encode(Image.fromarray(stripes), "PNG"), max_pixels=60_000)
    assert pixels.shape[0] * pixels.shape[1] <= 60_000
    assert abs(pixels.shape[1] / pixels.shape[0] - 1.5) < 0.02
    assert 100 < pixels[10:-10, 10:-10].mean() < 155 and pixels[10:-10, 10:-10].std() < 30


def test_tiny_images_are_upscaled_to_32():
    assert decode(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")).shape == (32, 32, 3)


def test_normalize_is_scale_then_imagenet_mean_and_std():
    pixels = torch.from_numpy(np.asarray(PHOTO).copy())
    assert torch.allclose(normalize(pixels[None]), to_input(np.asarray(PHOTO)), atol=1e-6)


@pytest.mark.parametrize("body,status,code", [
    (b"", 400, "empty_body"),
    (b"hello, this is text", 400, "not_an_image"),
    (b'{"image": "cat.jpg"}', 400, "not_an_image"),
    (b"<html><body>hi</body></html>", 400, "not_an_image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415, "unsupported_format"),
    (b'\xef\xbb\xbf<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd"><svg width="9"/>', 415,
     "unsupported_format"),
    (png_with_header(100_000, 100_000), 413, "image_too_large"),
    (png_with_header(9000, 8000), 413, "image_too_large"),  # over 16 x max_pixels but under Pillow's own limit
    (encode(Image.new("RGB", (32, 32)), "ICO"), 415, "unsupported_format"),
    (encode(Image.new("RGB", (32, 32)), "PPM"), 415, "unsupported_format"),
    (b"\0\0\0\x18ftypheix\0\0\0\0mif1heix" + bytes(64), 415, "unsupported_format"),
    (b"\0\0\0\x1cftypavis\0\0\0\0avifmif1" + bytes(64), 415, "unsupported_format"),
])
def test_bad_inputs_raise_request_errors(body, status, code):
    error = error_of(body)
    assert (error.status, error.code) == (status, code)
    assert error.to_json() == {"error": code, "message": error.message} and error.message


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_images_are_corrupt(image_format):
    body = encode(make_photo(200, 150, seed=2), image_format)
    error = error_of(body[: len(body) // 2])
    assert error.status == 400 and error.code in ("corrupt_image", "not_an_image")


def test_valid_header_with_garbage_data_is_corrupt():
    body = encode(PHOTO, "PNG")
    garbage = body[:33] + bytes(np.random.default_rng(0).integers(0, 256, len(body) - 33, dtype=np.uint8))
    error = error_of(garbage)
    assert error.status == 400 and error.code in ("corrupt_image", "not_an_image")
