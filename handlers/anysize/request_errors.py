"""Errors as data: one small type carrying the HTTP status, a stable error code and a human message.

Raised where a request is found wanting (decoding, size limits, missing fields) and turned into the JSON body
``{"error": CODE, "message": TEXT}`` by ``to_json``, which each request form's writer uses (request_formats).
"""

from __future__ import annotations


class RequestError(Exception):
    """A problem with one request of a batch; it never affects the other requests."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details: dict = {}  # extra JSON fields, e.g. the option and allowed values of a bad_option

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message, **self.details}

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.code!r}, {self.message!r})"


def empty_body() -> RequestError:
    return RequestError(400, "empty_body", "The request has no body: send the image bytes, or a multipart field "
                                          "named 'data' or 'file'.")


def not_an_image(detail: str) -> RequestError:
    return RequestError(400, "not_an_image", f"The body is not a decodable image: {detail}")


def corrupt_image(image_format: str, detail: str) -> RequestError:
    return RequestError(400, "corrupt_image", f"The {image_format} image is truncated or corrupt: {detail}")


def unsupported_format(image_format: str, accepted: tuple) -> RequestError:
    return RequestError(415, "unsupported_format",
                        f"{image_format} images are not accepted; send one of {', '.join(accepted)}.")


def image_too_large(width: int, height: int, limit: int) -> RequestError:
    return RequestError(413, "image_too_large",
                        f"The image declares {width}x{height} = {width * height} pixels, over the limit of {limit} "
                        f"pixels; it was not decoded.")


def out_of_memory(where: str) -> RequestError:
    return RequestError(507, "out_of_memory", f"Not enough memory to {where}; try a smaller image.")


def inference_failed(detail: str) -> RequestError:
    return RequestError(500, "inference_failed", f"The model failed on this image: {detail[:300]}")
