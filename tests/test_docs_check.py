"""`make docs-check`: the committed docs agree with their data, and the check catches a hand edit of a generated
page, of a data file, of a quoted figure, and a figure quoted without a reference."""

from __future__ import annotations

import json
import shutil

from anysize_tools import docs_check
from anysize_tools.paths import REPO

EXAMPLE = "docs/loadtest-example"


def test_every_generated_page_and_every_quoted_figure_agree_with_the_committed_data():
    assert docs_check.problems() == []


def copy_of(tmp_path, *names):
    for name in names:
        source, target = REPO / name, tmp_path / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    assert docs_check.problems(tmp_path) == []  # the untouched copy passes
    return tmp_path


def test_a_hand_edited_generated_table_fails_the_check(tmp_path):
    root = copy_of(tmp_path, EXAMPLE)
    page = root / EXAMPLE / "summary.md"
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| **all** |"))
    cells = row.split(" | ")
    cells[3] = f"{float(cells[3]) + 1:.2f}"  # a better req/s than measured
    page.write_text(text.replace(row, " | ".join(cells)))
    assert any("summary.md differs from its re-render" in p for p in docs_check.problems(root))


def test_an_edited_data_file_fails_the_check_against_its_page(tmp_path):
    root = copy_of(tmp_path, EXAMPLE)
    stats = root / EXAMPLE / "locust_stats.csv"
    lines = stats.read_text().splitlines()
    lines[-1] = lines[-1].replace(",0,", ",3,", 1)  # failures where there were none
    stats.write_text("\n".join(lines) + "\n")
    assert any("summary.md differs from its re-render" in p for p in docs_check.problems(root))


def test_a_quoted_figure_must_match_the_value_its_reference_names(tmp_path):
    root = copy_of(tmp_path, EXAMPLE)
    reading = root / "docs" / "reading.md"
    rps = docs_check.resolve(root / EXAMPLE / "locust_stats.csv", "[Name=Aggregated]/Requests/s")
    good = f"[{rps:.2f} req/s](loadtest-example/locust_stats.csv#[Name=Aggregated]/Requests/s)"
    reading.write_text(f"The demo served {good} in the example run.\n")
    assert docs_check.problems(root) == []
    reading.write_text(f"The demo served {good.replace(f'{rps:.2f}', f'{rps + 1:.2f}', 1)}.\n")
    assert any("the data says" in p for p in docs_check.problems(root))
    reading.write_text("The demo served [7 req/s](loadtest-example/locust_stats.csv#[Name=Nothing]/Requests/s).\n")
    assert any("resolves to nothing" in p for p in docs_check.problems(root))


def test_json_selectors_pick_list_items_by_their_fields(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"rows": [{"mode": "zoom", "condition": "896x896", "acc": 0.9},
                                         {"mode": "canvas", "condition": "896x896 (8x)", "acc": 0.775}]}))
    assert docs_check.resolve(data, "rows/[mode=canvas,condition^=896x896]/acc") == 0.775
    assert docs_check.resolve(data, "rows/0/acc") == 0.9
    assert docs_check.agrees("77.5 %", 0.775) and docs_check.agrees("0.78", 0.775)
    assert not docs_check.agrees("77.4 %", 0.775) and not docs_check.agrees("78 ms", 77.4)


def test_a_strict_reading_refuses_figures_without_references_but_not_settings_or_targets():
    text = ("Accuracy fell to 81.3 % at 8x [93.1 %](d.json#a) with `600 s` of timeout;\n"
            "the target is >= 95 % and a 12 MP photo costs at most 2x.\n")
    assert [f.split(": ")[1] for f in docs_check.bare_figures(text)] == ["81.3 %"]


def test_a_summary_that_no_longer_follows_from_its_raw_data_fails_the_check(tmp_path):
    study = "docs/resolution-study"
    root = copy_of(tmp_path, "docs", "model_store/demo")  # the reading links to other pages and data
    data = json.loads((root / f"{study}.json").read_text())
    data["targets"]["fcn"]["scenes"]["canvas_worst"]["accuracy"] = 0.95  # a target met on paper
    (root / f"{study}.json").write_text(json.dumps(data, indent=1) + "\n")
    assert any("no longer follow from its raw data" in p for p in docs_check.problems(root))


def test_the_native_band_is_the_widest_run_of_radius_bins_at_or_above_the_floor():
    summarise = docs_check._research("native_scale_range").summarise
    edges = docs_check._research("native_scale_range").EDGES
    right = (95, 80, 92, 93, 91, 50)  # of 100 pictures per bin: two runs at or above 90 %, the second wider
    cells = [{"side": 256, "low": edges[k], "high": edges[k + 1], "images": 100,
              "right": {"adaptive": r, "fcn-mean": r, "fcn-max": r}} for k, r in enumerate(right)]
    data = summarise({"seed": 0, "radius_fraction": [0.16, 0.42], "cells": cells})
    assert data["band"]["fcn-max"] == {"low": edges[2], "high": edges[5], "ratio": round(edges[5] / edges[2], 2)}
    assert data["needed_ratio"] == 21.0  # sides S..8S show radii 0.16 S .. 0.42 x 8 S


def test_a_native_band_that_no_longer_follows_from_its_cells_fails_the_check(tmp_path):
    name = "docs/native-scale-range.json"
    root = copy_of(tmp_path, "docs", "model_store/demo")
    data = json.loads((root / name).read_text())
    data["sources"]["scenes"]["band"]["fcn-max"]["ratio"] = 8.0  # the native range met on paper
    (root / name).write_text(json.dumps(data, indent=1) + "\n")
    assert any("no longer follow from its raw data" in p for p in docs_check.problems(root))
