"""The benchmark's command: argument parsing and `main`, which runs the parts and writes results and docs."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .. import answer_effects
from ..loadtest import machine_description
from ..paths import DOCS, REPO, RESULTS
from .bare import bare_model, decode_comparison, gpu_description
from .plan import DEFAULT_PARTS, IMAGES_PER_REQUEST, PARTS, bare_key, plan
from .render import write_doc
from .served import failed_run, forms_runs, served_run
from .targets import summary

DOC_DATA = DOCS / "benchmarks.json"  # the numbers behind the doc, so it can be re-rendered from git
SWEEP_DATA = DOCS / "batching-sweep.json"  # ... and behind docs/batching-sweep.md

# The command's --help text.
DESCRIPTION = """The fast-path benchmark: served throughput against the bare model and TorchServe's stock handler, per precision,
at 224x224 and on mixed sizes, plus what the fast-path options do to answers; it checks issue 7's targets.

    make bench                              # the suite for this machine (CPU: about an hour on 2 cores)
    python loadtests/benchmark.py --parts served --match vgg16 --duration 30     # a part, without touching docs
    python loadtests/benchmark.py --parts sweep --doc                            # the batching sweep (40 minutes)
    python loadtests/benchmark.py --parts answers --merge docs/benchmarks.json   # re-measure a no-server part
    python loadtests/benchmark.py --parts forms --merge docs/benchmarks.json     # the request forms (issue 16)
    python loadtests/benchmark.py --render docs/benchmarks.json                  # re-render docs/benchmarks.md
    python loadtests/benchmark.py --render docs/batching-sweep.json              # ... docs/batching-sweep.md

It runs on whatever machine it finds: on a CPU the CPU plan, with a CUDA GPU the GPU plan (larger batches, more
workers, Locust in several processes, the 1080p workload), and writes the same tables either way. Every served run
starts its own TorchServe on free local ports with an archive built for that configuration, warms it up, runs the
project's Locust load test (loadtests/loadtest.py) and stops it. Its Locust report lands in
loadtests/results/benchmark-<ts>/<run>/. The server's logs say where the time went: the frontend logs each
request's queue wait and the worker's time for its batch, the handler logs each batch's stage times.

The bare model is the handler's own ImageClassifier.forward (same model, precision, memory format,
normalisation) on images decoded beforehand from the same cached files, with no server. The stock handler is
TorchServe's built-in ``image_classifier`` (resize 256, centre-crop 224) serving the same VGG16 weights through a
torchvision model file. The forms part (not in `make bench`) runs vgg16-fcn fp32 at 224x224 under each request form
(raw body, OIP v2 JSON and binary, instances), interleaved in rounds against one TorchServe, and checks issue 16's
target on their cost against the raw body. Results go to results.json; a run of the default parts also copies them to
docs/benchmarks.json and renders docs/benchmarks.md from them, keeping its hand-written "## Reading".
"""


def bare_matches(bare, match: str) -> bool:
    """A bare measurement is kept by --match when its model-head-workload matches, or is the start of the match
    (the bare run behind a matched served run)."""
    key = f"{bare.model}-{bare.head}-{bare.workload}"
    return match in key or match.startswith(key)


# Measured apart from the served and bare runs (without a server, or the forms part: its runs are compared only with
# each other, against its own server): re-measuring them leaves the served runs' meaning.
MERGEABLE = ("decode", "answers", "forms")


def no_server_parts(parts) -> dict:
    results = {}
    if "decode" in parts:
        results["decode"] = decode_comparison()
    if "answers" in parts:
        # On a GPU: TF32 and half precision on its kernels, nvJPEG against Pillow (issue 15).
        results["answers"] = answer_effects.effects(answer_effects.default_device())
    return results


def command() -> str:
    return " ".join(["python loadtests/benchmark.py", *sys.argv[1:]])


def new_results_dir() -> Path:
    """Where a sitting's Locust reports and results.json go (not committed)."""
    out_dir = RESULTS / time.strftime("benchmark-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    return out_dir


def sitting(out_dir: Path) -> dict:
    """What a sitting records about itself: machine, versions, GPU, command, where its reports went, date."""
    from importlib.metadata import version  # importing locust here would monkey-patch this process with gevent

    import torch

    return {"machine": machine_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "torchserve": version("torchserve"), "locust": version("locust"), "gpu": gpu_description(),
            "command": command(), "results_dir": str(out_dir.relative_to(REPO)), "date": time.strftime("%Y-%m-%d")}


def forms_part(gpu: bool, out_dir: Path, scratch: Path, duration: int) -> dict:
    """The forms part's runs with their own record of the sitting: the part is measured apart and merged into
    the published results, whose meta describes another sitting."""
    started = time.time()
    reports = out_dir / "forms"  # its raw runs have the names of the served part's runs like them
    runs = forms_runs(plan(["forms"], gpu)["forms"], scratch, reports, duration)
    meta = {**sitting(reports), "duration": duration, "images_per_request": IMAGES_PER_REQUEST,
            "minutes": (time.time() - started) / 60}
    return {"meta": meta, "runs": runs}


def merge_parts(published: Path, parts, gpu: bool, duration: int) -> int:
    """Re-measure parts measured apart into a published results.json; its meta lists each re-measurement."""
    if not set(parts) <= set(MERGEABLE):
        raise SystemExit(f"--merge takes only --parts among {MERGEABLE}: served and bare runs are measured together")
    results = json.loads(published.read_text())
    results.update(no_server_parts(parts))
    failed = 0
    if "forms" in parts:
        with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
            results["forms"] = forms_part(gpu, new_results_dir(), Path(scratch), duration)
        failed = sum(run["status"] != 0 for run in results["forms"]["runs"])
    results["meta"].setdefault("remeasured", []).append(
        {"parts": list(parts), "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
         "command": command()})
    results["summary"] = summary(results)  # the forms' costs and target rows derive from its runs
    published.write_text(json.dumps(results, indent=1))
    write_doc(results)
    refresh_capacity_plan(published)
    return 1 if failed else 0


def refresh_capacity_plan(data: Path) -> None:
    """docs/capacity-plan.md takes its CPU rates from the published benchmark: re-render it when that changed."""
    if data.resolve() == DOC_DATA.resolve():
        from .. import capacity

        capacity.PAGE.write_text(capacity.render())
        print(f"[benchmark] wrote {capacity.PAGE}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per served run")
    parser.add_argument("--mixed-duration", type=int, default=30,
                        help="seconds of load per run of the mixed workload (a 2048 px image takes about 1 s)")
    parser.add_argument("--match", default="", help="only runs whose name contains this, e.g. demo-fcn-mixed")
    parser.add_argument("--render", type=Path, help="only render docs/benchmarks.md from this results.json")
    parser.add_argument("--merge", type=Path,
                        help="measure only --parts among decode/answers/forms (measured apart from the served runs) "
                             "and replace them in this published results.json, noting the re-measurement in its "
                             "meta; then render the page")
    parser.add_argument("--doc", action="store_true",
                        help="write docs/benchmarks.{md,json} even from a partial run (the default parts always do)")
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.render.read_text())
        results["summary"] = summary(results)  # derived from the runs: recomputed, never edited
        args.render.write_text(json.dumps(results, indent=1))
        write_doc(results)
        return 0

    import torch

    started = time.time()
    gpu = torch.cuda.is_available()
    if args.merge:
        return merge_parts(args.merge, args.parts, gpu, args.duration)
    out_dir = new_results_dir()
    results = {"meta": {**sitting(out_dir), "duration": args.duration, "mixed_duration": args.mixed_duration},
               "bare": [], "served": []}
    runs = plan(args.parts, gpu)
    failed = 0

    def save():
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))

    results.update(no_server_parts(args.parts))
    save()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch_name:
        scratch = Path(scratch_name)
        # Each bare measurement is taken just before the first served run divided by it (the machine's speed
        # drifts by a few per cent over a sitting), once per round for runs in rounds; the ones no matched run
        # needs come last.
        wanted = {bare.key: bare for bare in runs["bare"] if bare_matches(bare, args.match)}
        measured = set()  # (key, round) of the bare figures taken

        def measure_bare(key, round_=0):
            bare = wanted.get(key)
            if bare is None or (key, round_) in measured or (not round_ and any(k == key for k, _ in measured)):
                return  # a run outside rounds is divided by any figure of its configuration
            measured.add((key, round_))
            entry = bare_model(bare.model, bare.head, bare.workload, list(bare.batches), scratch, bare.precision,
                               bare.channels_last, compile=bare.compile)
            results["bare"].append({**entry, "round": round_} if round_ else entry)
            save()

        for config in runs["served"]:
            if args.match not in config.name:
                continue
            measure_bare(bare_key(asdict(config)), config.round)
            try:
                duration = args.mixed_duration if config.workload == "mixed" else args.duration
                run = served_run(config, scratch, out_dir, duration)
            except Exception as error:
                run = failed_run(config, error)
            failed += run["status"] != 0
            results["served"].append(run)
            save()
        if "forms" in args.parts:
            results["forms"] = forms_part(gpu, out_dir, scratch, args.duration)
            failed += sum(run["status"] != 0 for run in results["forms"]["runs"])
            save()
        for key in list(wanted):
            measure_bare(key)
    results["meta"]["minutes"] = (time.time() - started) / 60
    results["summary"] = summary(results)
    save()
    print(f"[benchmark] results: {out_dir / 'results.json'}", flush=True)
    for row in results["summary"]["targets"]:
        print(f"[target] {row['machine']}: {row['target']}: {row['measured']} "
              f"({ {True: 'met', False: 'NOT MET', None: '-'}[row['met']] })", flush=True)
    default = not args.match and set(args.parts) == set(DEFAULT_PARTS)
    if default or args.doc:  # a partial run would replace the published tables with a subset
        if default:
            DOC_DATA.write_text(json.dumps(results, indent=1))
            refresh_capacity_plan(DOC_DATA)
        elif set(args.parts) == {"sweep"} and not args.match:  # a whole sweep: its data beside its page
            SWEEP_DATA.write_text(json.dumps(results, indent=1))
        write_doc(results)
    return 1 if failed else 0
