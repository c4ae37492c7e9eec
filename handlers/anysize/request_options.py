"""Per-request options: their format, their parser and their defaults, in one place.

Which parts of a request reach a TorchServe 0.12 handler (read in its frontend, InferenceRequestHandler.java,
and measured by tests/test_demo_model.py):

- request headers, on every inference path: the portable way, ``X-Topk: 3``, ``X-Scale-Policy: native``, ...;
- multipart or url-encoded form fields, as extra entries of the request's input (next to ``data``/``body``);
- query parameters only on ``/models/{name}/invoke`` (and the legacy ``/{name}/predict``). On
  ``/predictions/{name}`` TorchServe drops them before the worker sees them (``handlePredictions`` passes no
  query decoder) and the handler cannot tell they were sent. TorchServe is archived, so this stays.

    curl -H 'X-Topk: 3' -H 'X-Scales: 224,448' -T cat.jpg .../predictions/demo-fcn
    curl -X POST -T cat.jpg '.../models/demo-fcn/invoke?topk=3&scales=224,448'

| option (header) | values | default |
|---|---|---|
| ``topk`` (``X-Topk``) | 1 .. number of classes | the archive's ``topk`` |
| ``scale_policy`` (``X-Scale-Policy``) | ``working`` (rescale into the archive's working range), ``native`` (the image's own size) | the archive's |
| ``scales`` (``X-Scales``) | shorter sides in px, comma-separated (at most 6, each 32-4096): multi-scale evaluation; ``none``: single scale | the archive's |
| ``flip`` (``X-Flip``) | true / false: also classify the mirrored image | the archive's |
| ``view_aggregation`` (``X-View-Aggregation``) | ``mean``, ``max`` or ``top2``: how the views and mirrors become one answer (scale_policy) | the archive's |
| ``aggregation`` (``X-Aggregation``) | fcn head only: ``mean``, ``max``, ``lse`` | the archive's |
| ``heatmap`` (``X-Heatmap``) | true / false, fcn head only: the answer also carries the class-score maps of its top-k classes (heatmaps.py) | false |

A parameter or form field wins over the header of the same option. A bad value is the request's own 400
``bad_option`` naming the option and its allowed values. Other parameters and form fields are not refused, since
clients send extra form fields; the response lists them under ``ignored_parameters``, so a misspelt ``top_k``
shows. Unknown headers are not listed: proxies and clients add many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from .request_errors import RequestError
from .scale_policy import POLICIES, VIEW_AGGREGATIONS, parse_scales
from .vgg_models import AGGREGATIONS

OPTION_NAMES = ("topk", "scale_policy", "scales", "flip", "view_aggregation", "aggregation", "heatmap")
MAX_SCALES = 6
SCALE_LIMITS = (32, 4096)
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option_header(name: str) -> str:
    """The header that carries option ``name``: ``scale_policy`` -> ``X-Scale-Policy``."""
    return "X-" + "-".join(part.capitalize() for part in name.split("_"))


def options_from_headers(headers: Mapping[str, Any]) -> dict:
    """{option name: value} of the option headers among ``headers`` (names in any case). TorchServe's header
    mapping also holds per-field content types as dicts; only text values are headers."""
    wanted = {option_header(name).lower(): name for name in OPTION_NAMES}
    return {wanted[str(key).lower()]: value for key, value in headers.items()
            if str(key).lower() in wanted and isinstance(value, (str, bytes))}


@dataclass(frozen=True)
class RequestOptions:
    topk: int
    scale_policy: str
    scales: Tuple[int, ...]  # () = one view, chosen by scale_policy
    flip: bool
    aggregation: str | None  # None for the adaptive head, which has no score map to aggregate
    view_aggregation: str = "mean"  # how the views (scales, mirrors) become one answer: scale_policy.combine_views
    ignored: Tuple[str, ...] = ()  # parameters of the request that are not options
    heatmap: bool = False  # also return the top-k classes' score maps (fcn head only)


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
                  ignore: Tuple[str, ...] = (), headers: Mapping[str, Any] | None = None) -> RequestOptions:
    """The options of one request (``row``: TorchServe's input entry, ``headers``: its request headers), on top
    of the archive's defaults. Raises RequestError (400) for a bad value."""
    options = {"ignored": tuple(sorted(str(key)[:64] for key in row if key not in OPTION_NAMES and key not in ignore))}
    given = {**options_from_headers(headers or {}), **{name: row[name] for name in OPTION_NAMES if name in row}}
    values = {name: as_text(value).strip() for name, value in given.items()}
    for name in ("scale_policy", "view_aggregation", "aggregation"):  # names, in any case, like flip's and scales'
        if name in values:
            values[name] = values[name].lower()
    if "topk" in values:
        text = values["topk"]
        if not is_small_number(text) or not 1 <= int(text) <= num_classes:
            raise bad_option("topk", f"an integer from 1 to {num_classes}", text[:200])
        options["topk"] = int(text)
    if "scale_policy" in values:
        options["scale_policy"] = one_of("scale_policy", values["scale_policy"], POLICIES, " or ".join(POLICIES))
    if "scales" in values:
        options["scales"] = request_scales(values["scales"])
    if "flip" in values:
        options["flip"] = parse_bool("flip", values["flip"])
    if "heatmap" in values:
        options["heatmap"] = parse_bool("heatmap", values["heatmap"])
        if options["heatmap"] and defaults.aggregation is None:
            raise bad_option("heatmap", "false: this archive's adaptive head averages its features into a fixed 7x7 "
                                        "grid before classifying and has no class-score map to show (the fcn head's "
                                        "archives have one)", values["heatmap"][:200])
    if "view_aggregation" in values:
        options["view_aggregation"] = one_of("view_aggregation", values["view_aggregation"], VIEW_AGGREGATIONS,
                                             ", ".join(VIEW_AGGREGATIONS))
    if "aggregation" in values:
        if defaults.aggregation is None:
            raise bad_option("aggregation", "left out: this archive's adaptive head has no class-score map to "
                                            "aggregate (the fcn head's archives take mean, max or lse)",
                             values["aggregation"][:200])
        options["aggregation"] = one_of("aggregation", values["aggregation"], AGGREGATIONS,
                                        "one of " + ", ".join(AGGREGATIONS))
    return RequestOptions(**{**defaults.__dict__, **options})


def one_of(name: str, value: str, choices: Tuple[str, ...], allowed: str) -> str:
    if value not in choices:
        raise bad_option(name, allowed, value[:200])
    return value


def request_scales(text: str) -> Tuple[int, ...]:
    allowed = (f"'none' or up to {MAX_SCALES} shorter sides in pixels ({SCALE_LIMITS[0]}-{SCALE_LIMITS[1]}), "
               f"comma-separated, e.g. 224,448")
    if len(text) > 200:  # six sides of four digits need 29 characters; refuse, do not parse a cut-off prefix
        raise bad_option("scales", allowed, text[:200] + "...")
    try:
        scales = parse_scales(text)
    except ValueError:
        raise bad_option("scales", allowed, text) from None
    if len(scales) > MAX_SCALES or any(not SCALE_LIMITS[0] <= s <= SCALE_LIMITS[1] for s in scales):
        raise bad_option("scales", allowed, text)
    return scales
