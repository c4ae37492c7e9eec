"""`make docs-check`: every generated page equals its re-render from its committed data file, every summary a
command wrote beside its raw data still follows from it, every figure a hand-written reading quotes resolves to
the data it names, and every local link points at a committed file.

    .venv/bin/python -m anysize_tools.docs_check          # exit 1 and a list of differences when anything is off

A hand-written figure is a Markdown link whose target is a data file and a selector, so a reader can follow it
and this check can resolve it: ``[93.1 %](resolution-study.json#defaults/fcn/mean)``. The selector walks the
JSON by keys; ``[key=value,other^=prefix]`` picks the first list element (or CSV row) whose fields match, and in
a CSV the rest after the row is the column name (``locust_stats.csv#[Name=Aggregated]/Requests/s``). The link
text's first number must equal the value rounded to the decimals the text shows (or 100 times it, when the text
says %). In the strict sections (`STRICT`) a number with a unit that is not such a link is an error, unless it
is a setting in backticks or a target after a comparison (>=, at most, under, ...).
"""

from __future__ import annotations

import csv
import difflib
import importlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Tuple
from urllib.parse import unquote

from .paths import REPO

RESEARCH = REPO / "scripts" / "research"


def _research(module: str):
    """The study and training scripts are scripts, not a package: import them from their folder."""
    if str(RESEARCH) not in sys.path:
        sys.path.insert(0, str(RESEARCH))
    return importlib.import_module(module)


def _json(path: Path):
    return json.loads(path.read_text())


# Each renderer takes the page's path and reads its data files from the page's folder.
def _benchmarks(page: Path) -> str:
    from .benchmark.render import benchmarks_page

    return benchmarks_page(_json(page.parent / "benchmarks.json"), page.read_text())


def _sweep(page: Path) -> str:
    from .benchmark.render import render_sweep

    return render_sweep(_json(page.parent / "batching-sweep.json"))


def _study(page: Path) -> str:
    return _research("resolution_study").study_page(_json(page.parent / "resolution-study.json"), page.read_text())


def _native_range(page: Path) -> str:
    return _research("native_scale_range").render_markdown(_json(page.parent / "native-scale-range.json"))


def _card(page: Path) -> str:
    return _research("train_demo").model_card(_json(page.parent / "training.json"), page.parent / "demo-vgg.pth")


def _load_report(page: Path) -> str:
    from .load_report import summary_page

    return summary_page(page.parent, page.read_text())


def _capacity(page: Path) -> str:
    from .capacity import render

    return render(page)


@dataclass(frozen=True)
class Page:
    path: str  # relative to the checkout
    data: Tuple[str, ...]  # the committed files it is rendered from, relative to the page
    render: Callable[[Path], str]
    until_run: bool = False  # a page its command has not written yet: neither it nor its data may exist alone


PAGES = (
    Page("docs/benchmarks.md", ("benchmarks.json",), _benchmarks),
    Page("docs/batching-sweep.md", ("batching-sweep.json",), _sweep, until_run=True),
    Page("docs/capacity-plan.md", ("capacity-plan.json", "benchmarks.json"), _capacity),
    Page("docs/resolution-study.md", ("resolution-study.json",), _study),
    Page("docs/native-scale-range.md", ("native-scale-range.json",), _native_range),
    Page("model_store/demo/MODEL_CARD.md", ("training.json", "demo-vgg.pth"), _card),
    Page("docs/loadtest-example/summary.md", ("run.json", "locust_stats.csv"), _load_report),
    Page("docs/soak/summary.md", ("run.json", "locust_stats.csv", "memory.csv"), _load_report),
)


# Summaries a command wrote beside its raw data, which readings quote: each must still follow from that data.
def _soak_memory(path: Path):
    from .load_report import MEMORY_CSV, memory_figures, read_memory

    return memory_figures(read_memory(path.parent / MEMORY_CSV), _json(path.parent / "run.json")["growth_limit"])


def _study_summaries(path: Path):
    study = _research("resolution_study")
    results = _json(path)
    defaults = study.choose_defaults(results["rows"])
    return {**results, "defaults": defaults, "targets": study.issue_targets(results["rows"], defaults)}


def _view_choice_summary(path: Path):
    choice = _research("view_aggregation_choice")
    results = _json(path)
    return {**results, "summary": {method: {rule: choice.summarise(by_condition, rule) for rule in choice.RULES}
                                   for method, by_condition in results["accuracy"].items()}}


def _native_range_summaries(path: Path):
    return _research("native_scale_range").derive(_json(path))


def _benchmark_summary(path: Path):
    from .benchmark.targets import summary

    results = _json(path)
    return {**results, "summary": summary(results)}


DERIVED = (
    ("docs/soak/memory.json", _soak_memory),
    ("docs/benchmarks.json", _benchmark_summary),
    ("docs/resolution-study.json", _study_summaries),
    ("docs/view-aggregation-choice.json", _view_choice_summary),
    ("docs/native-scale-range.json", _native_range_summaries),
)
# Hand-written text where every figure must be a reference: (page, heading of the section, or None: the whole page)
STRICT = (
    ("docs/resolution-study.md", "## Reading"),
    ("docs/benchmarks.md", "## Reading"),
    ("docs/design.md", "## The fast path (issue 7)"),
    ("docs/design.md", "## The forward pass per image size"),
    ("docs/reliability.md", "## A worker killed under load"),
    ("docs/deploy.md", "## Capacity plan (on paper)"),
)
CHECKED_TEXT = ("README.md", "docs", "loadtests/README.md", "model_store/demo/MODEL_CARD.md", "deploy")


def markdown_files(root: Path = REPO) -> List[Path]:
    files = []
    for name in CHECKED_TEXT:
        path = root / name
        files += sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.is_file() else []
    return files


# ------------------------------------------------------------------------------------------ references
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+(?:\([^)\s]*\)[^)\s]*)*)\)")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
DATA_SUFFIXES = (".json", ".csv")


def _match(item: dict, conditions: str) -> bool:
    for condition in conditions.split(","):
        key, _, value = condition.partition("=")
        field = str(item.get(key.rstrip("^"), ""))
        if not (field.startswith(value) if key.endswith("^") else field == value):
            return False
    return True


def resolve(data_file: Path, selector: str):
    """The value ``selector`` names in ``data_file`` (see the module's docstring); KeyError when nothing matches."""
    selector = unquote(selector)
    if data_file.suffix == ".csv":
        with open(data_file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        row_part, _, column = selector.partition("/")
        if not (row_part.startswith("[") and row_part.endswith("]")):
            raise KeyError(f"a CSV selector starts with [column=value]: {selector}")
        row = next((r for r in rows if _match(r, row_part[1:-1])), None)
        if row is None or column not in row:
            raise KeyError(selector)
        return float(row[column])
    value = _json(data_file)
    for part in filter(None, selector.split("/")):
        if part.startswith("[") and part.endswith("]"):
            value = next((item for item in value if isinstance(item, dict) and _match(item, part[1:-1])), None)
            if value is None:
                raise KeyError(f"{part} matches nothing")
        elif isinstance(value, list):
            value = value[int(part)]
        else:
            value = value[part]
    return value


def agrees(text: str, value) -> bool:
    """Whether the figure written in ``text`` is ``value`` as displayed (its decimals; % may mean 100x)."""
    found = NUMBER.search(text)
    if found is None or isinstance(value, (dict, list, bool)) or value is None:
        return False
    written = found.group().replace(",", "")
    decimals = len(written.partition(".")[2])
    candidates = [float(value)] + ([100 * float(value)] if "%" in text else [])
    return any(abs(round(c, decimals) - float(written)) < 1e-9 for c in candidates)


def without_code(text: str) -> str:
    """``text`` with fenced blocks and inline code blanked out (same length): examples there are not claims."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group())  # noqa: E731
    return re.sub(r"`[^`\n]*`", blank, re.sub(r"^```.*?^```", blank, text, flags=re.M | re.S))


def check_references(path: Path, root: Path = REPO) -> Iterator[str]:
    text = without_code(path.read_text())
    for match in LINK.finditer(text):
        label, target = match.group(2), match.group(3)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor
        file_part, _, selector = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve()
        where = f"{path.relative_to(root)}: [{label}]({target})"
        if not linked.exists():
            yield f"{where}: {file_part} does not exist"
            continue
        if linked.suffix in DATA_SUFFIXES and selector and not match.group(1):
            try:
                value = resolve(linked, selector)
            except (KeyError, IndexError, ValueError, TypeError) as error:
                yield f"{where}: the selector resolves to nothing ({error})"
                continue
            if not agrees(label, value):
                yield f"{where}: the data says {value!r}"


# ------------------------------------------------------------------------------------------ bare figures
FIGURE = re.compile(r"(?<![\w.\-])[-+]?\d[\d,]*(?:\.\d+)?\s?(?:%|ms\b|req/s|s\b|MiB\b|MB\b|GiB\b|(?<=\d\.\d)x\b|"
                    r"(?<=\d\.\d\d)x\b)")
TARGET = re.compile(r"(>=|<=|≥|≤|<|>|at most|at least|under|below|above|within|targets?)\s*$")


def section(text: str, heading: str | None) -> Tuple[str, int]:
    """The section under ``heading`` (None: the whole text) and the number of lines before it."""
    if heading is None:
        return text, 0
    if heading not in text:
        return "", 0
    before, rest = text.split(heading, 1)
    level = heading.split(" ")[0]
    ends = [m.start() for m in re.finditer(rf"^{level} ", rest, re.M)]
    return (rest[:ends[0]] if ends else rest), before.count("\n")


def bare_figures(text: str, first_line: int = 0) -> Iterator[str]:
    """Numbers with a unit outside reference links, code spans and target phrases."""
    masked = LINK.sub(lambda m: " " * len(m.group()) if Path(m.group(3).partition("#")[0]).suffix in DATA_SUFFIXES
                      and "#" in m.group(3) else m.group(), text)
    masked = without_code(masked)
    masked = re.sub(r"<!--.*?-->", lambda m: " " * len(m.group()), masked, flags=re.S)
    for match in FIGURE.finditer(masked):
        if TARGET.search(masked[max(0, match.start() - 12):match.start()]):
            continue
        line = first_line + text.count("\n", 0, match.start()) + 1
        yield f"line {line}: {match.group().strip()}"


# ------------------------------------------------------------------------------------------ the check
def problems(root: Path = REPO) -> List[str]:
    """Everything wrong under ``root`` (a checkout, or a copy of part of one: absent pages are skipped there)."""
    found = []
    for page in PAGES:
        path = root / page.path
        missing = [name for name in page.data if not (path.parent / name).is_file()]
        if (root != REPO or page.until_run) and not path.is_file() and len(missing) == len(page.data):
            continue
        if not path.is_file() or missing:
            found.append(f"{page.path}: missing {', '.join(missing) or 'the page itself'}")
            continue
        try:
            expected = page.render(path)
        except (KeyError, ValueError, TypeError, IndexError) as error:  # data of another shape than the renderer's
            found.append(f"{page.path}: cannot be rendered from {', '.join(page.data)} ({type(error).__name__}: "
                         f"{error})")
            continue
        actual = path.read_text()
        if expected != actual:
            diff = difflib.unified_diff(actual.splitlines(), expected.splitlines(), "committed", "re-rendered",
                                        n=0, lineterm="")
            found.append(f"{page.path} differs from its re-render:\n  " + "\n  ".join(list(diff)[2:14]))
    for name, derive in DERIVED:
        path = root / name
        if not path.is_file():
            if root == REPO:
                found.append(f"{name}: missing")
            continue
        try:
            if derive(path) != _json(path):
                found.append(f"{name}: its summaries no longer follow from its raw data (edited by hand?)")
        except (KeyError, ValueError, TypeError, IndexError) as error:
            found.append(f"{name}: cannot be recomputed ({type(error).__name__}: {error})")
    for path in markdown_files(root):
        found += list(check_references(path, root))
    for name, heading in STRICT:
        if (root / name).is_file():
            for figure in bare_figures(*section((root / name).read_text(), heading)):
                found.append(f"{name} ({heading or 'whole page'}): a figure without a reference, {figure}")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem)
    print(f"docs-check: {len(found)} problem(s) in {len(PAGES)} generated pages and {len(markdown_files())} "
          "Markdown files", flush=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
