"""The run configurations: the parts, the served configurations (`Served`), their weights, the plan per machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

from .. import answer_effects
from ..paths import DEMO
from ..workloads import MIXED_LONG_SIDES

PARTS = ("decode", "bare", "served", "stock", "answers", "sweep", "forms")
DEFAULT_PARTS = ("decode", "bare", "served", "stock", "answers")  # `make bench`; the sweep is `make bench-sweep`
IDLE_PAUSE = 0.02  # seconds idle before each timed call of the "after idle" bare figure
SWEEP_USERS = 16  # enough closed-loop users to fill the largest batch
SWEEP_DELAYS = (5, 25, 100)  # maxBatchDelay values, milliseconds
MIXED_USERS = 12  # enough to fill batches of 4 on mixed sizes (not SWEEP_USERS: that number marks sweep runs)
# Our handler and the stock one at fp32 on 224x224 differ by a few per cent, about what this shared machine drifts
# in a few minutes: they run in this many interleaved rounds (ours, ours channels_last, stock, ...), compared by
# their medians. The runs judged by served / bare (bf16 at batch 8, the demo on mixed sizes) run in as many rounds,
# each divided by a bare figure measured just before its round: on a shared machine one run can stall (a served run
# at half its bare rate that a re-run did not repeat, docs/benchmarks.md) and the machine's speed drifts between a
# bare figure and the last round divided by it.
LIKE_ROUNDS = 3
# The forms part: how the images travel (the locustfile's --request-form), raw first as the baseline the others are
# divided by. Each run sends one image per request, so a form's cost is its envelope (base64, JSON, the binary
# extension's header), not batching inside a request.
REQUEST_FORMS = ("raw", "oip-json", "oip-binary", "instances")
IMAGES_PER_REQUEST = 1

SAME_SIZE_WORKLOADS = ("fixed", "1080p")  # every image the same size: the server can batch up to batchSize
WARMUP_SIZES = {"fixed": "224x224", "1080p": "1920x1080"}  # the sizes a workload sends, warmed up at worker start
# Buckets for the mixed workload: a square, a landscape and a portrait size per long side it draws from.
MIXED_BUCKETS = answer_effects.bucket_sizes(MIXED_LONG_SIDES)
FAST = {"precision": "bf16", "channels_last": True}  # the reduced-precision variant measured next to fp32
SHIPPED_DEMO = {"channels_last": True}  # the demo archives as shipped (archive.demo_spec): fp32, channels-last trunk


@dataclass(frozen=True)
class Served:
    """One served configuration; ``handler`` is 'ours' or 'stock'."""
    model: str  # demo or vgg16
    head: str
    workload: str
    batch: int
    delay: int
    workers: int
    users: int
    handler: str = "ours"
    precision: str = "fp32"
    channels_last: bool = False
    buckets: str = ""
    compile: bool = False
    processes: int = 1  # Locust processes: one master and this many workers when above 1
    round: int = 0  # which of the LIKE_ROUNDS interleaved rounds (0: a configuration run once)
    request_form: str = "raw"  # how Locust sends the images (REQUEST_FORMS); only the forms part varies it

    @property
    def variant(self) -> str:
        return variant(asdict(self))

    @property
    def name(self) -> str:
        head = "stock" if self.handler == "stock" else self.head
        suffix = "".join(f"-{part}" for part in self.variant.split() if part != "fp32")
        if self.request_form != "raw":  # raw is every other part's form: their names stay as they were
            suffix += f"-{self.request_form}"
        return (f"{self.model}-{head}-{self.workload}-b{self.batch}-d{self.delay}-w{self.workers}-u{self.users}"
                + suffix.replace("+", "-") + (f"-r{self.round}" if self.round else ""))


@dataclass(frozen=True)
class Bare:
    """One bare-model measurement: the handler's forward pass with no server, at these batch sizes."""
    model: str
    head: str
    workload: str
    batches: Tuple[int, ...]
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def key(self) -> tuple:
        return bare_key(asdict(self))


def bare_key(config: dict) -> tuple:
    """What a bare measurement and the served runs divided by it share: model, head, workload, precision, memory
    format, compilation (a compiled served run is divided by the compiled bare model)."""
    return (config["model"], config["head"], config["workload"], config.get("precision", "fp32"),
            bool(config.get("channels_last")), bool(config.get("compile")))


def base_name(name: str) -> str:
    """A run's name without its round: the configuration the interleaved rounds repeat."""
    head, _, last = name.rpartition("-")
    return head if last[:1] == "r" and last[1:].isdigit() else name


def variant(config: dict) -> str:
    """'fp32', 'bf16+cl', 'fp32 buckets', ... from a configuration (older results lack the newer keys)."""
    text = config.get("precision", "fp32") + ("+cl" if config.get("channels_last") else "")
    if config.get("buckets"):
        text += " buckets"
    if config.get("compile"):
        text += " compiled"
    return text


# ---------------------------------------------------------------------------------------------------- weights
def weights_for(model: str, scratch: Path) -> Dict[str, str]:
    """Builder arguments for the model's weights: the shipped demo weights, or seeded random VGG16 weights saved
    once (speed does not depend on the values)."""
    if model == "demo":
        return {"arch": "demo", "weights": str(DEMO / "demo-vgg.pth"), "labels": str(DEMO / "labels.json")}
    path = scratch / f"{model}-random-seed0.pth"
    if not path.is_file():
        from anysize.weights import random_weights

        random_weights(model, 0, scratch)
    return {"arch": model, "weights": str(path), "labels": None}


# ------------------------------------------------------------------------------------------------------ plan
class Settings(NamedTuple):
    """The served settings per machine: the batchSize of the judged runs and of the fp32 comparison, workers, users
    and Locust processes."""
    batch: int
    fp32_batch: int
    workers: int
    users: int
    processes: int


def settings(gpu: bool) -> Settings:
    if gpu:
        return Settings(batch=64, fp32_batch=64, workers=2, users=256, processes=4)
    # fp32 gains nothing from batching on this CPU (bare vgg16: 190 ms per image at batch 1, 204 at batch 8),
    # bf16 halves its time per image at batch 8.
    return Settings(batch=8, fp32_batch=1, workers=1, users=16, processes=1)


def fixed_fp32(head: str, gpu: bool, **options) -> Served:
    """VGG16 at fp32 on the `fixed` 224x224 workload with this machine's settings: the runs compared with the stock
    handler (``options``: handler, memory format) and the forms part's one configuration."""
    machine = settings(gpu)
    return Served("vgg16", head, "fixed", machine.fp32_batch, 5, machine.workers, machine.users,
                  processes=machine.processes, **options)


def plan(parts: List[str], gpu: bool) -> Dict[str, list]:
    """The bare-model measurements (``Bare``) and the served configurations (``Served``), for this machine. On a
    CPU, VGG16 runs at 224x224 only (a 2048 px image takes about 16 s) and mixed sizes use the demo model; on a
    GPU, VGG16 also runs the 1080p workload, with bigger batches, several workers and Locust in several processes
    (above about a thousand requests per second one process is the limit). The comparison with the stock handler at
    fp32 runs in LIKE_ROUNDS interleaved rounds. The forms part (``forms``: the same request forms' runs against one
    server) is one of those fp32 configurations under each of REQUEST_FORMS, interleaved in LIKE_ROUNDS rounds."""
    runs: Dict[str, list] = {"bare": [], "served": [], "forms": []}
    heads = ("fcn", "adaptive")
    batch, fp32_batch, workers, users, processes = settings(gpu)
    big = {"batch": 8, "users": 32}  # the 1080p workload, GPU only
    batches = tuple(sorted({1, batch}))
    if "bare" in parts:
        for head in heads:
            for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", True)):
                runs["bare"].append(Bare("vgg16", head, "fixed", batches, precision, channels_last))
            runs["bare"].append(Bare("vgg16", head, "fixed", batches, **FAST, compile=True))
            for precision in ("fp32", "bf16"):
                runs["bare"].append(Bare("demo", head, "mixed", (1,), precision, channels_last=True))
            if gpu:
                for precision, channels_last in (("fp32", False), ("bf16", True)):
                    runs["bare"].append(Bare("vgg16", head, "1080p", (1, big["batch"]), precision, channels_last))
        runs["bare"] += [Bare("demo", "fcn", "fixed", (1,), **SHIPPED_DEMO), Bare("demo", "fcn", "formats", (1, 4), **SHIPPED_DEMO)]
    if "served" in parts or "stock" in parts:
        # The same workers and Locust processes for ours and the stock handler, so the ratio compares handlers.
        like = []
        if "served" in parts:
            like += [fixed_fp32(head, gpu, channels_last=channels_last) for head in heads
                     for channels_last in (False, True)]
        if "stock" in parts:
            like += [fixed_fp32("adaptive", gpu, handler="stock")]
        runs["served"] += [replace(config, round=r) for r in range(1, LIKE_ROUNDS + 1) for config in like]
    if "served" in parts:
        judged = []  # served / bare targets: run in rounds, like the fp32 comparison
        for head in heads:
            judged += [
                Served("vgg16", head, "fixed", batch, 5, workers, users, processes=processes, **FAST),
                Served("vgg16", head, "fixed", batch, 5, workers, users, processes=processes, compile=True, **FAST),
                Served("demo", head, "mixed", 4, 5, 1, MIXED_USERS, **SHIPPED_DEMO),
                Served("demo", head, "mixed", 4, 5, 1, MIXED_USERS, **FAST)]
            if gpu:
                judged += [Served("vgg16", head, "1080p", big["batch"], 5, workers, big["users"], **FAST)]
        runs["served"] += [replace(config, round=r) for r in range(1, LIKE_ROUNDS + 1) for config in judged]
        runs["served"] += [Served("demo", "fcn", "mixed", 4, 5, 1, MIXED_USERS, buckets=MIXED_BUCKETS, **SHIPPED_DEMO)]
        runs["served"] += [Served("demo", "fcn", "formats", 4, 5, 1, 8, **SHIPPED_DEMO)]
        # One user, nothing queued: client latency minus the logged queue and worker time is the frontend's own cost.
        runs["served"] += [Served("demo", "fcn", "fixed", 1, 5, 1, 1, **SHIPPED_DEMO), Served("vgg16", "fcn", "fixed", 1, 5, 1, 1)]
    if "stock" in parts and fp32_batch != batch:
        runs["served"] += [Served("vgg16", "adaptive", "fixed", batch, 5, workers, users, handler="stock",
                                  processes=processes)]
    if "sweep" in parts:
        # maxBatchDelay means nothing at batchSize 1 (a batch of one never waits), so it is swept above that.
        runs["served"] += [Served("demo", "fcn", workload, batch, delay, workers, SWEEP_USERS, **SHIPPED_DEMO)
                           for workload in ("fixed", "mixed") for workers in (1, 2) for batch in (1, 4, 8, 16)
                           for delay in ((5,) if batch == 1 else SWEEP_DELAYS)]
    if "forms" in parts:
        # Form after form in each round (raw, oip-json, ..., raw, ...), so the machine's drift reaches every form
        # alike, as in the comparison with the stock handler.
        runs["forms"] = [replace(fixed_fp32("fcn", gpu), request_form=form, round=r)
                         for r in range(1, LIKE_ROUNDS + 1) for form in REQUEST_FORMS]
    return runs
