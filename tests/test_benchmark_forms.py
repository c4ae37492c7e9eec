"""The benchmark's forms part without a server: its plan (the request forms interleaved in rounds on one shared
configuration, that of the fp32 comparison with the stock handler), one TorchServe for all its runs, issue 16's
target and the page's section on a synthetic results dict, and its merge into published results."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import asdict, replace

import pytest

from anysize_tools.benchmark import cli, served
from anysize_tools.benchmark.plan import DEFAULT_PARTS, LIKE_ROUNDS, REQUEST_FORMS, plan
from anysize_tools.benchmark.render import forms_section, render
from anysize_tools.benchmark.targets import FORMS_TARGET, form_costs, summary, targets

META = {"machine": "test CPU, 2 logical CPUs", "torch": "2.x", "threads": 2, "torchserve": "0.12.0",
        "locust": "2.x", "gpu": "none (CPU only)", "command": "python loadtests/benchmark.py --parts forms",
        "results_dir": "loadtests/results/benchmark-x/forms", "date": "2026-12-08", "duration": 15,
        "images_per_request": 1, "minutes": 6.0}


@pytest.mark.parametrize("gpu", (False, True))
def test_the_forms_interleave_round_after_round_on_the_fp32_comparisons_configuration(gpu):
    runs = plan(["forms"], gpu)["forms"]
    assert [(c.round, c.request_form) for c in runs] == [(r, f) for r in range(1, LIKE_ROUNDS + 1)
                                                         for f in REQUEST_FORMS]
    assert REQUEST_FORMS[0] == "raw" and len(set(REQUEST_FORMS)) == 4
    shared = {replace(c, request_form="raw", round=0) for c in runs}
    assert len(shared) == 1  # one archive and server configuration: only the form and the round differ
    like = {replace(c, round=0) for c in plan(["served"], gpu)["served"]
            if c.round and c.model == "vgg16" and c.head == "fcn" and c.precision == "fp32" and not c.channels_last}
    assert shared == like  # the users, batchSize, delay, workers of the served fp32 224x224 rows
    assert len({c.name for c in runs}) == len(runs)


def test_the_forms_part_is_not_in_make_bench_and_leaves_other_names_alone():
    default = plan(list(DEFAULT_PARTS), False)
    assert default["forms"] == [] and "forms" not in DEFAULT_PARTS
    assert all(c.request_form == "raw" and not c.name.endswith(("json", "binary", "instances"))
               for c in default["served"])


def test_every_form_runs_against_one_server_started_once(tmp_path, monkeypatch):
    events = []

    @contextmanager
    def fake_serving(config, scratch):
        events.append(("start", config.name))
        yield "server", "model"
        events.append(("stop",))

    monkeypatch.setattr(served, "serving", fake_serving)
    monkeypatch.setattr(served, "warm_up_form", lambda server, name, config, out_dir:
                        events.append(("warm", config.request_form)))
    monkeypatch.setattr(served, "drain", lambda server, name, workload: events.append(("drain",)))

    def fake_load_run(server, name, config, out_dir, duration):
        if config.request_form == "instances" and config.round == 2:
            raise RuntimeError("broken")
        events.append(("run", config.request_form, config.round))
        return {"config": asdict(config), "name": config.name, "status": 0}

    monkeypatch.setattr(served, "load_run", fake_load_run)
    configs = plan(["forms"], False)["forms"]
    runs = served.forms_runs(configs, tmp_path, tmp_path / "out", 1)
    assert events[0] == ("start", "vgg16-fcn-fixed-b1-d5-w1-u16") and events[-1] == ("stop",)
    assert [e for e in events if e[0] == "start"] == [events[0]]
    assert [e[1] for e in events if e[0] == "warm"] == list(REQUEST_FORMS)
    assert events.index(("warm", "instances")) < events.index(("run", "raw", 1))
    # Every Locust run starts on an empty queue, after what the previous one abandoned was answered.
    measured = [i for i, e in enumerate(events) if e[0] in ("warm", "run")]
    assert all(events[i - 1] == ("drain",) for i in measured)
    assert [r["name"] for r in runs] == [c.name for c in configs]  # the broken run recorded in its place
    assert [r["status"] for r in runs].count(1) == 1


def run(form: str, round_: int, rps: float, failures: int = 0, p50: float = 1000.0) -> dict:
    config = asdict(replace(plan(["forms"], False)["forms"][0], request_form=form, round=round_))
    return {"config": config, "name": f"{form}-r{round_}", "status": 1 if failures else 0, "rps": rps,
            "requests": int(rps * 15), "failures": failures, "p50_ms": p50, "p95_ms": 2 * p50}


def synthetic() -> dict:
    """Raw at a median 10 req/s; oip-json costs 2 %, oip-binary nothing, instances 8 %; rounds drift alike."""
    rates = {"raw": (10.0, 9.5, 10.2), "oip-json": (9.8, 9.4, 9.9), "oip-binary": (10.1, 9.6, 10.0),
             "instances": (9.2, 8.8, 9.4)}
    runs = [run(form, r + 1, rates[form][r], p50=1000 + r) for r in range(3) for form in REQUEST_FORMS]
    return {"meta": {**META, "duration": 15, "mixed_duration": 30}, "bare": [], "served": [],
            "forms": {"meta": META, "runs": runs}}


def test_costs_are_medians_over_rounds_against_raws_median():
    rows = {row["form"]: row for row in form_costs(synthetic())}
    assert list(rows) == list(REQUEST_FORMS)
    assert rows["raw"]["median"] == 10.0 and rows["raw"]["ratio"] == 1.0
    assert rows["oip-json"]["median"] == 9.8 and rows["oip-json"]["cost"] == pytest.approx(0.02)
    assert rows["oip-binary"]["cost"] == pytest.approx(0.0)
    assert rows["instances"]["cost"] == pytest.approx(0.08)
    assert rows["raw"]["rps"] == [10.0, 9.5, 10.2] and rows["raw"]["p50_ms"] == 1001


def test_the_target_is_judged_per_form_other_than_raw_in_the_issues_words():
    rows = [row for row in targets(synthetic()) if FORMS_TARGET in row["target"]]
    assert [(row["name"], row["met"]) for row in rows] == [("oip-json", True), ("oip-binary", True),
                                                          ("instances", False)]
    assert all(row["machine"] == "cpu" and row["target"].startswith(FORMS_TARGET + ":") for row in rows)
    assert FORMS_TARGET == "the cost of base64 and JSON must stay under 5 % at 224 px on this CPU"


def test_failures_fail_the_target_and_a_gpu_sitting_is_not_judged():
    results = synthetic()
    results["forms"]["runs"][1] = run("oip-json", 1, 9.9, failures=3)
    met = {row["name"]: row["met"] for row in targets(results) if FORMS_TARGET in row["target"]}
    assert met == {"oip-json": False, "oip-binary": True, "instances": False}
    results["forms"]["runs"][0] = run("raw", 1, 10.0, failures=1)  # raw's failures spoil every comparison
    assert not any(row["met"] for row in targets(results) if FORMS_TARGET in row["target"])
    results = synthetic()
    results["forms"]["meta"] = {**META, "gpu": "NVIDIA H100"}
    assert all(row["met"] is None for row in targets(results) if FORMS_TARGET in row["target"])


def test_the_section_renders_one_row_per_form_from_the_data():
    results = synthetic()
    results["summary"] = summary(results)
    assert [row["form"] for row in results["summary"]["forms"]] == list(REQUEST_FORMS)
    section = forms_section(results)
    table = [line for line in section if line.startswith("| ") and not line.startswith("| form")]
    assert [line.split(" | ")[0][2:] for line in table] == list(REQUEST_FORMS)
    assert table[0].endswith("| the baseline |") and table[3].endswith("| **not met** |")
    assert "| 9.80 | 0.980 | 1001 |" in table[1]
    assert "## Request forms" in render(results)
    del results["forms"]  # published results without the part: no section, no summary entry (docs-check)
    assert forms_section(results) == [] and "forms" not in summary(results)
    assert "## Request forms" not in render(results)


def test_merging_the_forms_part_keeps_the_other_parts(tmp_path, monkeypatch):
    published = tmp_path / "benchmarks.json"
    old = synthetic()
    del old["forms"]
    old |= {"decode": [{"image": "jpeg"}], "answers": {"precision": []}, "summary": summary(old)}
    published.write_text(json.dumps(old))
    written = []
    monkeypatch.setattr(cli, "forms_part", lambda gpu, out_dir, scratch, duration: synthetic()["forms"])
    monkeypatch.setattr(cli, "write_doc", written.append)
    monkeypatch.setattr(cli, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--parts", "forms", "--merge", str(published)])
    assert cli.merge_parts(published, ["forms"], False, 15) == 0
    merged = json.loads(published.read_text())
    assert all(merged[key] == old[key] for key in ("decode", "answers", "bare", "served"))
    assert [r["name"] for r in merged["forms"]["runs"]] == [r["name"] for r in synthetic()["forms"]["runs"]]
    assert merged["meta"]["remeasured"][-1]["parts"] == ["forms"] and written
    assert merged["summary"] == json.loads(json.dumps(summary(merged)))  # recomputed, as docs-check expects
    assert any(FORMS_TARGET in row["target"] for row in merged["summary"]["targets"])
    with pytest.raises(SystemExit):  # the served runs are measured together with their bare figures
        cli.merge_parts(published, ["forms", "served"], False, 15)
