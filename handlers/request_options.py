"""Per-request options: their format, their parser and their defaults, in one place.

Options travel as query parameters of the prediction URL, which TorchServe 0.12 hands to the handler as extra
entries of the request's input (next to ``body``), e.g.

    POST /predictions/demo-fcn?topk=3&scale_policy=native&scales=224,448&flip=true&aggregation=max

| option | values | default |
|---|---|---|
| ``topk`` | 1 .. number of classes | the archive's ``topk`` |
| ``scale_policy`` | ``working`` (rescale into the archive's working range), ``native`` (the image's own size) | the archive's |
| ``scales`` | shorter sides in px, comma-separated (at most 6, each 32-4096): multi-scale evaluation; ``none``: single scale | the archive's |
| ``flip`` | true / false: also classify the mirrored image and average | the archive's |
| ``aggregation`` | fcn head only: ``mean``, ``max``, ``lse`` | the archive's |

A bad value is the request's own 400 ``bad_option`` naming the option and its allowed values. Other parameters
(TorchServe merges multipart form fields and query parameters into one input) are not refused, since clients send
extra form fields; the response lists them under ``ignored_parameters``, so a misspelt ``top_k`` shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from request_errors import RequestError
from scale_policy import POLICIES, parse_scales
from vgg_models import AGGREGATIONS

OPTION_NAMES = ("topk", "scale_policy", "scales", "flip", "aggregation")
MAX_SCALES = 6
SCALE_LIMITS = (32, 4096)
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class RequestOptions:
    topk: int
    scale_policy: str
    scales: Tuple[int, ...]  # () = one view, chosen by scale_policy
    flip: bool
    aggregation: str | None  # None for the adaptive head, which has no score map to aggregate
    ignored: Tuple[str, ...] = ()  # parameters of the request that are not options


def bad_option(name: str, allowed: str, value: Any) -> RequestError:
    error = RequestError(400, "bad_option", f"Option '{name}' must be {allowed}; got {value!r}.")
    error.details = {"option": name, "allowed": allowed}
    return error


def as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def is_small_number(text: str) -> bool:
    """ASCII digits only, at most 6 (str.isdigit also accepts '²', which int() refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 6


def parse_bool(name: str, text: str) -> bool:
    if text.strip().lower() in TRUE:
        return True
    if text.strip().lower() in FALSE:
        return False
    raise bad_option(name, "true or false", text[:200])


def parse_options(row: Mapping[str, Any], defaults: RequestOptions, num_classes: int,
                  ignore: Tuple[str, ...] = ()) -> RequestOptions:
    """The options of one request (``row``: TorchServe's input entry), on top of the archive's defaults.
    Raises RequestError (400) for a bad value."""
    options = {"ignored": tuple(sorted(str(key)[:64] for key in row if key not in OPTION_NAMES and key not in ignore))}
    values = {name: as_text(row[name]).strip() for name in OPTION_NAMES if name in row}
    if "topk" in values:
        text = values["topk"]
        if not is_small_number(text) or not 1 <= int(text) <= num_classes:
            raise bad_option("topk", f"an integer from 1 to {num_classes}", text[:200])
        options["topk"] = int(text)
    if "scale_policy" in values:
        if values["scale_policy"] not in POLICIES:
            raise bad_option("scale_policy", " or ".join(POLICIES), values["scale_policy"][:200])
        options["scale_policy"] = values["scale_policy"]
    if "scales" in values:
        options["scales"] = request_scales(values["scales"])
    if "flip" in values:
        options["flip"] = parse_bool("flip", values["flip"])
    if "aggregation" in values:
        if defaults.aggregation is None:
            raise bad_option("aggregation", "left out: this archive's adaptive head has no class-score map to "
                                            "aggregate (the fcn head's archives take mean, max or lse)",
                             values["aggregation"][:200])
        if values["aggregation"] not in AGGREGATIONS:
            raise bad_option("aggregation", "one of " + ", ".join(AGGREGATIONS), values["aggregation"][:200])
        options["aggregation"] = values["aggregation"]
    return RequestOptions(**{**defaults.__dict__, **options})


def request_scales(text: str) -> Tuple[int, ...]:
    allowed = (f"'none' or up to {MAX_SCALES} shorter sides in pixels ({SCALE_LIMITS[0]}-{SCALE_LIMITS[1]}), "
               f"comma-separated, e.g. 224,448")
    if text.lower() in ("", "none"):
        return ()
    try:
        scales = parse_scales(text[:200])
    except ValueError:
        raise bad_option("scales", allowed, text[:200]) from None
    if len(scales) > MAX_SCALES or any(not SCALE_LIMITS[0] <= s <= SCALE_LIMITS[1] for s in scales):
        raise bad_option("scales", allowed, text)
    return scales
