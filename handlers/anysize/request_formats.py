"""What a request carries and how its answer is written, each format's parser beside its writer.

Three forms reach the handler through TorchServe (docs/torchserve-oip-notes.md says what its frontend passes on):

- **one image** (``single``): the raw body, or a multipart field ``data`` / ``file``; the answer is one JSON object.
- **several images** (``list``), sent to ``/predictions``: a multipart body with several file parts (under distinct
  names: TorchServe keeps only the last field of a name), or a JSON body ``{"instances": [{"b64": ...}, ...]}``
  (the TF-Serving / Vertex convention; options under ``"parameters"``). The answer is a JSON list in the same
  order, each item its own result or its own error object (with its ``status``); one bad image fails only itself.
- **Open Inference Protocol v2** (``oip``), sent to ``/v2/models/{name}/infer``: one BYTES input (any name) of encoded
  images, base64 strings in its JSON ``data`` or raw bytes through the binary tensor data extension
  (``Inference-Header-Content-Length``, each element a 4-byte little-endian length and its bytes); options in the
  request's ``parameters``. The answer is the protocol's response: outputs ``labels``, ``probabilities`` and
  ``indices`` of shape ``[n, topk]`` (and ``heatmap``, each image's heatmap as JSON, when the parameters ask for
  one), the request's ``id`` echoed. The protocol has no per-element error, so a bad
  image fails its request, naming the element.

The handler tells the forms apart by the body alone (TorchServe does not pass the route on), so each works on
either path. A whole request that cannot be read (bad JSON, no images, too many images or pixels) gets one JSON
error; the images are counted before any is base64-decoded or copied. Nothing
here imports TorchServe: a row is the plain dict TorchServe's worker hands over (``{"body": bytes or parsed JSON}``
or one entry per multipart field) and headers a plain mapping.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from .image_decoding import open_image
from .request_errors import RequestError, empty_body, not_an_image
from .request_options import OPTION_NAMES, is_small_number

SINGLE, LIST, OIP = "single", "list", "oip"
BODY_FIELDS = ("data", "file", "body")  # multipart fields that carry the one image, in order; a raw body is "body"
BINARY_HEADER = "inference-header-content-length"
OIP_OUTPUTS = ("labels", "probabilities", "indices")
MAX_DIMS = 4  # dimensions an input's "shape" may have ([n] is usual; [n, 1] some clients send)
HEATMAP_OUTPUT = "heatmap"  # BYTES [n]: each image's heatmap field as JSON, when the request asks for one
Image = Union[bytes, RequestError]  # an image's encoded bytes, or why this image cannot be read


@dataclass
class Request:
    """One request of a batch as the handler reads it."""
    form: str  # SINGLE, LIST or OIP: how the answer is written
    images: List[Image] = field(default_factory=list)
    options: Mapping[str, Any] = field(default_factory=dict)  # option values sent with it (parse_options reads)
    option_fields: Tuple[str, ...] = ()  # names in ``options`` that are not options but its own format's
    error: RequestError | None = None  # the whole request refused: its answer is this error alone
    oip_id: str | None = None
    oip_outputs: Tuple[str, ...] | None = None  # the outputs an OIP request names; None: the default ones


@dataclass(frozen=True)
class Limits:
    """What one request may hold, checked before any pixel is decoded (HandlerOptions: max_images,
    max_request_pixels; bomb_pixels: the declared size over which one image is refused anyway)."""
    max_images: int
    max_request_pixels: int
    bomb_pixels: int


def bad_request(code: str, message: str) -> RequestError:
    return RequestError(400, code, message)


def header(headers: Mapping[str, Any], name: str) -> str | None:
    """A request header by name in any case (TorchServe keeps the client's spelling)."""
    for key, value in headers.items():
        if str(key).lower() == name and isinstance(value, (str, bytes)):
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def read_request(row: Any, headers: Mapping[str, Any], limits: Limits) -> Request:
    """The form, images and options of one request, or the error that refuses it whole."""
    if not isinstance(row, dict):
        return Request(SINGLE, [not_an_image("unexpected request layout")])
    request = read_form(row, headers, limits)
    if request.error is None and request.form != SINGLE:
        request.error = too_many_pixels(request.images, limits)
    return request


def read_form(row: dict, headers: Mapping[str, Any], limits: Limits) -> Request:
    """The form is read from the body, not the path: TorchServe does not tell the handler which route it came by."""
    body = row.get("body")
    if BINARY_HEADER in (str(key).lower() for key in headers):
        return read_oip_binary(body, header(headers, BINARY_HEADER), limits)
    document = json_document(body)
    if isinstance(document, RequestError):
        return Request(SINGLE, error=document)
    if document is not None:
        if isinstance(document, dict) and "inputs" in document:
            return read_oip(document, b"", limits)
        if isinstance(document, dict) and "instances" in document:
            return read_instances(document, limits)
        return Request(SINGLE, error=bad_request(
            "bad_json_body", "A JSON body must be {\"instances\": [{\"b64\": ...}, ...]} (several images) or an "
                             "Open Inference Protocol request with \"inputs\"; a single image is sent as the raw "
                             "body."))
    files = [name for name in row if name not in OPTION_NAMES and is_file_part(headers.get(name))]
    if len(files) > 1:  # several images as multipart files, in the order received; each file part is a slot
        error = too_many_images(len(files), limits)
        return Request(LIST, [image_bytes(row[name]) for name in files], row, tuple(files), error=error)
    return Request(SINGLE, [single_image(row)], row, BODY_FIELDS)


def is_file_part(part_headers: Any) -> bool:
    """A multipart field that is a file: TorchServe passes each file part's content type in the request's header
    mapping under the field's name (plain form attributes have none). Its value may already be text or parsed
    JSON (TorchServe decodes text/* and application/json parts); it still holds its slot in the answer."""
    return isinstance(part_headers, dict) and bool(part_headers.get("content-type"))


def parse_json(text: bytes) -> Any:
    """json.loads, with every way hostile text can fail it as ValueError (deep nesting raises RecursionError)."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(str(error)[:200]) from None


def json_document(body: Any) -> Any:
    """The body as JSON: TorchServe parses ``application/json`` bodies itself; other bodies that start like a JSON
    object (OIP clients often send no content type) are parsed here. None when the body is not JSON at all."""
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, (bytes, bytearray)) and bytes(body[:1]) == b"{":
        try:
            return parse_json(bytes(body))
        except ValueError as error:
            return bad_request("bad_json_body", f"The body starts like JSON but is not valid JSON: {error}")
    return None


def image_bytes(value: Any) -> Image:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) if value else empty_body()
    if isinstance(value, str):  # TorchServe decodes text/* bodies to str
        return empty_body() if not value else not_an_image("the body is text")
    return not_an_image("the body is JSON")


def single_image(row: dict) -> Image:
    """The image bytes of a one-image request: a multipart field ``data`` or ``file``, or the raw body."""
    present = [name for name in BODY_FIELDS if name in row]
    if not present:
        fields = ", ".join(sorted(map(str, row))) or "none"
        return RequestError(400, "missing_field",
                            f"No image found: send it as the raw body or as a multipart field named 'data' or "
                            f"'file' (fields received: {fields}).")
    return image_bytes(row[present[0]])


def option_values(parameters: Any, where: str) -> Dict[str, Any] | RequestError:
    """JSON parameters as option values: lists (scales) joined by commas, booleans as true/false."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        return bad_request("bad_json_body", f"{where} must be a JSON object of options")

    def text(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(map(str, value))
        return value if isinstance(value, str) else json.dumps(value)
    return {str(name): text(value) for name, value in parameters.items()}


def from_base64(text: Any, where: str) -> Image:
    if not isinstance(text, str):
        return bad_request("bad_image_data", f"{where} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True) or empty_body()
    except (binascii.Error, ValueError):
        return bad_request("bad_image_data", f"{where} is not valid base64")


def too_many_images(count: int, limits: Limits) -> RequestError | None:
    """413 when a request holds more images than the archive takes: counted before any is decoded, base64 included."""
    if count <= limits.max_images:
        return None
    return RequestError(413, "too_many_images", f"The request holds {count} images; this model takes at most "
                                                f"{limits.max_images} per request.")


def read_instances(document: dict, limits: Limits) -> Request:
    """``{"instances": [{"b64": ...}, ...], "parameters": {...}}``; an instance may also be the base64 string."""
    instances = document["instances"]
    options = option_values(document.get("parameters"), '"parameters"')
    if isinstance(options, RequestError):
        return Request(LIST, error=options)
    if not isinstance(instances, list) or not instances:
        return Request(LIST, error=bad_request("bad_json_body", '"instances" must be a non-empty list of '
                                                                '{"b64": "<base64 image>"}'))
    error = too_many_images(len(instances), limits)
    if error is not None:
        return Request(LIST, error=error)
    images = [from_base64(instance.get("b64") if isinstance(instance, dict) else instance, f"instances[{k}].b64")
              for k, instance in enumerate(instances)]
    return Request(LIST, images, options)


def read_oip_binary(body: Any, length: str | None, limits: Limits) -> Request:
    """A binary-extension request: the JSON header (its length in the header) followed by the tensors' bytes."""
    raw = bytes(body) if isinstance(body, (bytes, bytearray)) else b""
    text = (length or "").strip()
    if not (is_small_number(text) and int(text) <= len(raw)):
        return Request(OIP, error=bad_request(
            "bad_binary_header", f"Inference-Header-Content-Length must be the JSON header's length in bytes, at "
                                 f"most the body's {len(raw)}; got {str(length)[:40]!r}"))
    split = int(text)
    try:
        document = parse_json(raw[:split])
    except ValueError as error:
        return Request(OIP, error=bad_request("bad_json_body", f"The inference header is not valid JSON: {error}"))
    return read_oip(document, raw[split:], limits)


def read_oip(document: Any, binary: bytes, limits: Limits) -> Request:
    """An OIP v2 inference request: one BYTES input of encoded images (base64 in ``data``, or ``binary``)."""
    request_id = document.get("id") if isinstance(document, dict) else None
    request = Request(OIP, oip_id=None if request_id is None else str(request_id)[:200])
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        request.error = bad_oip('"inputs" must hold exactly one input: a BYTES tensor of encoded images')
        return request
    tensor = inputs[0]
    options = option_values(document.get("parameters"), '"parameters"')
    outputs = oip_outputs(document.get("outputs"))
    images = tensor_images(tensor, binary, limits)
    for found in (options, outputs, images):
        if isinstance(found, RequestError):
            request.error = found
            return request
    request.images, request.options, request.oip_outputs = images, options, outputs
    if outputs is not None and HEATMAP_OUTPUT in outputs:  # asking for the output asks for the heatmap
        request.options = {**options, "heatmap": "true"}
    return request


def bad_oip(message: str) -> RequestError:
    return bad_request("bad_oip_request", message)


def oip_outputs(outputs: Any) -> Tuple[str, ...] | None | RequestError:
    """The outputs a request names (None: the default three, and the heatmap when asked for)."""
    if outputs is None:
        return None
    known = OIP_OUTPUTS + (HEATMAP_OUTPUT,)
    names = [o.get("name") if isinstance(o, dict) else None for o in outputs] if isinstance(outputs, list) else None
    if not names or any(name not in known for name in names) or len(set(names)) != len(names):
        return bad_oip(f'"outputs" must name some of {", ".join(known)}, each once')
    return tuple(names)


def tensor_images(tensor: dict, binary: bytes, limits: Limits) -> Union[List[Image], RequestError]:
    """The encoded images of the BYTES input: its shape checked first (a few small whole numbers, at most
    max_images in all), then its elements, base64 strings in ``data`` or the binary extension's bytes."""
    if tensor.get("datatype") != "BYTES":
        return bad_oip(f'input "{str(tensor.get("name"))[:64]}" must have datatype BYTES (encoded images), not '
                       f'{str(tensor.get("datatype"))[:32]!r}')
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= MAX_DIMS and all(type(s) is int and s > 0 for s in shape)):
        return bad_oip(f'"shape" must be a list of at most {MAX_DIMS} positive integers, e.g. [2] for two images')
    if max(shape) > limits.max_images:
        return too_many_images(max(shape), limits)
    count = math.prod(shape)  # small now: each dimension at most max_images
    error = too_many_images(count, limits)
    if error is not None:
        return error
    parameters = tensor.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        return bad_oip('the input\'s "parameters" must be a JSON object')
    size = (parameters or {}).get("binary_data_size")
    if size is not None:
        images = binary_elements(binary, size, count)
    elif isinstance(tensor.get("data"), list):
        flat = flatten(tensor["data"], len(shape))
        if flat is None or len(flat) != count:
            return bad_oip(f'"data" must hold {count} base64 strings, as "shape" says')
        images = [from_base64(item, f"data[{k}]") for k, item in enumerate(flat)]
    else:
        return bad_oip('the input needs "data" (a list of base64 strings) or parameters.binary_data_size')
    if not isinstance(images, RequestError) and len(images) != count:
        return bad_oip(f'"shape" says {count} images; the binary data holds {len(images)}')
    return images


def flatten(data: list, depth: int) -> list | None:
    """Row-major nested lists at most ``depth`` deep, flattened; None when nested deeper (a hostile body)."""
    level = data
    for _ in range(depth - 1):
        if not all(isinstance(item, list) for item in level):
            break
        level = [item for inner in level for item in inner]
    return None if any(isinstance(item, list) for item in level) else level


def binary_elements(binary: bytes, size: Any, count: int) -> Union[List[Image], RequestError]:
    """The binary extension's BYTES tensor: ``size`` bytes of elements, each a 4-byte little-endian length and
    that many bytes; more than ``count`` elements is refused before they are copied."""
    if type(size) is not int or not 0 < size <= len(binary):
        return bad_request("bad_binary_data", f"binary_data_size must be the tensor's byte count, at most the "
                                              f"{len(binary)} bytes after the JSON header; got {str(size)[:40]}")
    images, at = [], 0
    while at < size:
        if len(images) == count:
            return bad_request("bad_binary_data", f"the binary data holds more than the {count} images \"shape\" "
                                                  f"says")
        if at + 4 > size:
            return bad_request("bad_binary_data", f"element {len(images)}: a 4-byte length prefix is cut off")
        (length,) = struct.unpack_from("<I", binary, at)
        if at + 4 + length > size:
            return bad_request("bad_binary_data", f"element {len(images)} declares {length} bytes, more than the "
                                                  f"{size - at - 4} left")
        images.append(binary[at + 4:at + 4 + length] or empty_body())
        at += 4 + length
    return images


def too_many_pixels(images: Sequence[Image], limits: Limits) -> RequestError | None:
    """413 when a request's images declare more pixels in all than the archive allows, read from their headers
    before any is decoded. An image that cannot be read counts nothing here and gets its own error when decoded."""
    total = 0
    for image in images:
        if isinstance(image, bytes):
            try:
                width, height = open_image(image, limits.bomb_pixels).size
            except Exception:  # this image's own error, when it is decoded
                continue
            total += width * height
    if total > limits.max_request_pixels:
        return RequestError(413, "too_many_pixels", f"The request's images declare {total} pixels in all; this "
                                                    f"model takes at most {limits.max_request_pixels} per request.")
    return None


# ---- answers ------------------------------------------------------------------------------------------------------

Answer = Union[dict, RequestError]


@dataclass(frozen=True)
class Reply:
    status: int
    phrase: str
    body: Any  # JSON-serialisable


def write_answer(request: Request, answers: Sequence[Answer], model_name: str) -> Reply:
    """The HTTP status and JSON body of one request from its images' answers (in order)."""
    if request.error is not None:
        return error_reply(request, request.error)
    if request.form == SINGLE:
        answer = answers[0]
        return error_reply(request, answer) if isinstance(answer, RequestError) else Reply(200, "OK", answer)
    if request.form == LIST:
        items = [{**a.to_json(), "status": a.status} if isinstance(a, RequestError) else a for a in answers]
        failed = [a for a in answers if isinstance(a, RequestError)]
        if len(failed) == len(answers):  # nothing answered: the request's status is its first image's
            return Reply(failed[0].status, failed[0].code, items)
        return Reply(200, "OK", items)
    return oip_response(request, answers, model_name)


def error_reply(request: Request, error: RequestError) -> Reply:
    if request.form == OIP:  # the protocol's error body is {"error": "<message>"}
        return Reply(error.status, error.code, {"error": f"{error.code}: {error.message}"})
    return Reply(error.status, error.code, error.to_json())


def oip_response(request: Request, answers: Sequence[Answer], model_name: str) -> Reply:
    for k, answer in enumerate(answers):
        if isinstance(answer, RequestError):
            error = RequestError(answer.status, answer.code, f"image {k} of {len(answers)}: {answer.message}")
            return error_reply(request, error)
    first = answers[0]
    topk = len(first["predictions"])
    rows = [answer["predictions"] for answer in answers]
    columns = {"labels": ("BYTES", [p["label"] for row in rows for p in row]),
               "probabilities": ("FP32", [p["probability"] for row in rows for p in row]),
               "indices": ("INT64", [p["index"] for row in rows for p in row])}
    names = request.oip_outputs or OIP_OUTPUTS + ((HEATMAP_OUTPUT,) if "heatmap" in first else ())
    outputs = [{"name": name, "datatype": columns[name][0], "shape": [len(answers), topk], "data": columns[name][1]}
               for name in names if name in columns]
    if HEATMAP_OUTPUT in names:
        outputs.append({"name": HEATMAP_OUTPUT, "datatype": "BYTES", "shape": [len(answers)],
                        "data": [json.dumps(answer.get("heatmap")) for answer in answers]})
    response = {"model_name": model_name, "outputs": outputs,
                # what was applied (the protocol's parameters hold scalars only)
                "parameters": {"scale_policy": first["scale_policy"], "flip": first["flip"],
                               "view_aggregation": first["view_aggregation"],
                               "aggregation": first["aggregation"] or "none", "topk": topk,
                               "input_sizes": ";".join("x".join(map(str, a["input_size"])) for a in answers),
                               "scales": ";".join(",".join("x".join(map(str, s)) for s in a["scales"])
                                                  for a in answers)}}
    if "warning" in first:
        response["parameters"]["warning"] = first["warning"]
    if first.get("ignored_parameters"):  # a misspelt option shows here, as in the other forms' answers
        response["parameters"]["ignored_parameters"] = ",".join(first["ignored_parameters"])
    if request.oip_id is not None:
        response["id"] = request.oip_id
    return Reply(200, "OK", response)
