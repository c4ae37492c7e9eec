"""The benchmark's method, without running it: which runs go in rounds, and which bare figure each run is divided by.

A served / bare ratio judged on one run of a shared machine can be a stall or the machine's drift between the bare
figure and the run (docs/benchmarks.md): every run a target judges goes in rounds, each round divided by a bare
figure measured just before it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from anysize_tools.benchmark import cli
from anysize_tools.benchmark.plan import DEFAULT_PARTS, LIKE_ROUNDS, base_name, plan
from anysize_tools.benchmark.targets import bare_entry, by_configuration, like_with_like


def judged(config: dict) -> bool:
    """The runs the served / bare target judges (targets.targets: ours, several users, no size buckets)."""
    return (config["handler"] == "ours" and config["users"] > 1 and not config.get("buckets")
            and (config["model"], config["workload"]) in (("vgg16", "fixed"), ("demo", "mixed"), ("vgg16", "1080p")))


def test_every_run_a_served_over_bare_target_judges_goes_in_rounds():
    for gpu in (False, True):
        served = [asdict(config) | {"name": config.name} for config in plan(list(DEFAULT_PARTS), gpu)["served"]]
        groups = by_configuration({"served": [{"config": c, "name": c["name"]} for c in served]}, judged)
        assert len(groups) >= 8
        for name, runs in groups.items():
            assert [r["config"]["round"] for r in runs] == list(range(1, LIKE_ROUNDS + 1)), name
            assert all(base_name(r["name"]) == name for r in runs)


def test_a_run_is_divided_by_its_own_rounds_bare_figure_else_by_the_first():
    key = {"model": "demo", "head": "fcn", "workload": "mixed", "precision": "fp32", "channels_last": True,
           "compile": False}
    results = {"bare": [{**key, "round": r, "kinds": {}, "figure": r} for r in (1, 2, 3)]}
    for round_ in (1, 2, 3):
        assert bare_entry(results, {**key, "round": round_})["figure"] == round_
    assert bare_entry(results, {**key, "round": 0})["figure"] == 1
    older = {"bare": [{**key, "kinds": {}, "figure": 0}]}  # results from before bare figures had rounds
    assert bare_entry(older, {**key, "round": 2})["figure"] == 0
    assert bare_entry(results, {**key, "precision": "bf16", "round": 1}) is None


def test_each_round_measures_its_bare_figure_just_before_its_first_run(tmp_path, monkeypatch):
    calls = []

    def fake_bare(model, head, workload, batches, scratch, precision, channels_last, compile=False):
        calls.append(("bare", model, head, workload, precision, compile))
        return {"model": model, "head": head, "workload": workload, "precision": precision,
                "channels_last": channels_last, "compile": compile, "kinds": {}}

    def fake_served(config, scratch, out_dir, duration):
        calls.append(("served", config.name))
        return {"config": asdict(config), "name": config.name, "status": 0, "rps": 1.0, "requests": 10,
                "failures": 0}

    monkeypatch.setattr(cli, "bare_model", fake_bare)
    monkeypatch.setattr(cli, "served_run", fake_served)
    monkeypatch.setattr(cli, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(cli, "REPO", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--parts", "bare", "served", "--match", "demo-fcn-mixed"])
    assert cli.main() == 0
    for precision in ("fp32", "bf16"):
        name = f"demo-fcn-mixed-b4-d5-w1-u12-{precision}-cl"
        runs = [calls.index(("served", f"{name}-r{r}")) for r in range(1, LIKE_ROUNDS + 1)]
        bares = [i for i, call in enumerate(calls) if call == ("bare", "demo", "fcn", "mixed", precision, False)]
        assert len(bares) == LIKE_ROUNDS
        for r, (bare, run) in enumerate(zip(bares, runs)):
            assert (runs[r - 1] if r else -1) < bare < run  # after the previous round's run, before this one's
    (out,) = (tmp_path / "results").glob("benchmark-*/results.json")
    bare = json.loads(out.read_text())["bare"]
    rounds = sorted((e["precision"], e.get("round", 0)) for e in bare if e["workload"] == "mixed")
    assert rounds == [(p, r) for p in ("bf16", "fp32") for r in range(1, LIKE_ROUNDS + 1)]


def test_mixed_sizes_are_timed_in_turn_as_a_worker_meets_them():
    """One image of each request name after another, every round, not one image's passes back to back."""
    import torch

    from anysize_tools.benchmark.bare import in_turn_ms

    seen = []

    def view(tag):
        return torch.full((2, 2, 3), tag, dtype=torch.uint8)

    groups = {"a": [[[view(1)]], [[view(2)], [view(4), view(4)]]], "b": [[[view(3)]]]}  # per name, image, pass
    ms = in_turn_ms(lambda batch: seen.append((int(batch[0, 0, 0, 0]), len(batch))), groups, 0.0)
    one_round = [(1, 1), (3, 1), (2, 1), (4, 2)]
    assert len(seen) >= 3 * len(one_round) and seen == one_round * (len(seen) // len(one_round))
    assert set(ms) == {"a", "b"} and all(value >= 0 for value in ms.values())


def test_only_runs_like_the_stock_one_are_compared_with_it():
    """The demo model's mixed-size fp32 runs go in rounds for their own served / bare figure, not to be set against
    the stock handler's vgg16 at 224x224."""
    served = [asdict(config) | {"name": config.name} for config in plan(list(DEFAULT_PARTS), False)["served"]]
    results = {"served": [{"config": c, "name": c["name"], "rps": 1.0, "failures": 0, "status": 0} for c in served]}
    compared = like_with_like(results)
    stock = next(c for c in served if c["handler"] == "stock" and c["round"])
    assert compared and {row["stock_name"] for row in compared} == {base_name(stock["name"])}
    assert all(row["config"]["model"] == "vgg16" and row["config"]["workload"] == "fixed" for row in compared)
    assert any(c["model"] == "demo" and c["round"] and c["precision"] == "fp32" for c in served)  # there to leave out
    ours = next(c for c in served if c["name"] == compared[0]["name"] + "-r1")
    for field, other in (("users", ours["users"] + 1), ("processes", 4), ("batch", 8)):
        changed = ours | {field: other, "name": f"{field}-changed-r1"}
        more = {"served": results["served"] + [{"config": changed, "name": changed["name"], "rps": 1.0,
                                                "failures": 0, "status": 0}]}
        assert {row["name"] for row in like_with_like(more)} == {row["name"] for row in compared}, field
