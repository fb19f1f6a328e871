"""The leaderboard: ranking rule, rebuilt files, the HTML page in headless Chromium."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_submission import benchmark_run, other_checkpoint

from mibench import scoring
from mibench.records import Record
from mibench.results.leaderboard import (
    build,
    entry_for,
    leaderboard_main,
    load_board,
    markdown,
    md,
    rank,
)
from mibench.results.submission import (
    RECORDS_GZ,
    Submission,
    build_submission,
    validate_main,
    validate_submission,
    write_submission,
)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.fixture(scope="module")
def results(tiny_checkpoint, tmp_path_factory) -> Path:
    """A results folder with two accepted submissions of two different tiny checkpoints."""
    root = tmp_path_factory.mktemp("board")
    for name, checkpoint in (("tiny-a", tiny_checkpoint),
                             ("tiny-b", other_checkpoint(root / "ckpt-b"))):
        run_dir = benchmark_run(checkpoint, root / f"run-{name}")
        document, rows = build_submission(run_dir, name)
        path = write_submission(document, rows, root / f"sub-{name}")
        assert validate_main([str(path), "--accept", str(root / "results")]) == 0
    return root / "results"


# -- the ranking rule on hand-made records -------------------------------------------------
def synthetic(name: str, accuracy: float, flips: float, attack_flips: float = 0.0,
              n: int = 40) -> Submission:
    """One image-heavy task of 4-option samples: clean accuracy and flip shares as given."""
    def records(condition: str, flipped: int) -> list[Record]:
        out = []
        for i in range(n):
            clean_pred = 0 if i < round(accuracy * n) else 1
            pred = (clean_pred + 2) % 4 if i < flipped else clean_pred
            probs = tuple(0.7 if k == pred else 0.1 for k in range(4))
            out.append(Record("ih", condition, f"s{i:02d}", probs, pred, 0))
        return out

    clean = records("clean", 0)
    cells = {"c1": records("c1", round(flips * n)), "c2": records("c2", round(flips * n)),
             "atk": records("atk", round(attack_flips * n))}
    results = {"ih": {"clean": {k: e.to_json() for k, e in scoring.clean_metrics(clean).items()}}}
    for cond, perturbed in cells.items():
        results["ih"][cond] = {k: e.to_json()
                               for k, e in scoring.condition_metrics(clean, perturbed).items()}
    document = {"name": name, "results": results, "seed": 0,
                "condition_kinds": {"c1": "heuristic", "c2": "heuristic", "atk": "attack"}}
    return Submission(Path(name), document, clean + [r for rs in cells.values() for r in rs])


def test_rank_by_interference_score_only_above_chance():
    entries = rank([entry_for(synthetic("steady", accuracy=0.9, flips=0.3)),
                    entry_for(synthetic("robust", accuracy=0.8, flips=0.1, attack_flips=1.0)),
                    entry_for(synthetic("ignores-input", accuracy=0.25, flips=0.0))])
    assert [(e.name, e.rank) for e in entries] == [
        ("robust", 1), ("steady", 2), ("ignores-input", None)]
    robust = entries[0]
    assert robust.score == pytest.approx(0.1)  # the attack cell (flip 1.0) is not averaged in
    assert robust.attack_score == pytest.approx(1.0)
    assert set(robust.components) == {"ih/c1", "ih/c2"}
    assert robust.clean_accuracy == pytest.approx(0.8)
    assert entries[2].chance["ih"] == pytest.approx(0.25)
    assert entries[2].unranked_reason == "clean accuracy not above chance on ih"
    # both cells flip the same 4 of 40 samples: the bootstrap sees one 0/1 column, p = 0.1,
    # se = sqrt(0.1 * 0.9 / 40) = 0.047, so a 95% interval about 0.19 wide around 0.1
    low, high = robust.interval
    assert low < 0.1 < high
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.1 * 0.9 / 40), abs=0.04)
    assert entries[2].interval == (0.0, 0.0)


def test_ties_go_to_the_more_accurate_model():
    entries = rank([entry_for(synthetic("b", accuracy=0.7, flips=0.2)),
                    entry_for(synthetic("a", accuracy=0.9, flips=0.2))])
    assert [e.name for e in entries] == ["a", "b"]


# -- the rebuilt board from real submissions -----------------------------------------------
def test_leaderboard_rebuilds_markdown_and_html(results, capsys):
    assert leaderboard_main(["--results", str(results)]) == 0
    printed = capsys.readouterr().out
    md = (results / "LEADERBOARD.md").read_text()
    board = load_board(results)
    (entries,) = board.values()
    assert {e.name for e in entries} == {"tiny-a", "tiny-b"}
    for entry in entries:
        doc = validate_submission(results / "submissions" / entry.name).document
        flips = [m["flip_rate"]["value"] for t in doc["results"].values()
                 for c, m in t.items() if c != "clean"]
        assert len(flips) == 6 and entry.score == pytest.approx(np.mean(flips))
        clean = {t: m["clean"]["accuracy"] for t, m in doc["results"].items()}
        assert entry.clean_accuracy == pytest.approx(np.mean([e["value"] for e in
                                                              clean.values()]))
        chance = {t: np.mean([1 / len(r.probs) for r in entry.submission.records
                              if r.task == t and r.condition == "clean"]) for t in clean}
        assert entry.above_chance == all(clean[t]["low"] > chance[t] for t in clean)
        status = str(entry.rank) if entry.rank else "unranked"
        assert f"| {status} | {entry.name} |" in md
        assert f"interference {100 * entry.score:5.1f}%" in printed
    assert "**Interference score** (lower is better)" in md
    assert "## Benchmark `toy`" in md and "### tiny-a" in md
    html = (results / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + 2  # the bars and one radar per model
    assert "<script>" in html and "src=\"http" not in html  # self-contained


def test_leaderboard_refuses_a_tampered_accepted_submission(results, tmp_path, capsys):
    copy = tmp_path / "results"
    shutil.copytree(results / "submissions", copy / "submissions")
    gz = copy / "submissions" / "tiny-a" / RECORDS_GZ
    lines = gzip.decompress(gz.read_bytes()).splitlines(keepends=True)
    gz.write_bytes(gzip.compress(b"".join(lines[:-1])))
    assert leaderboard_main(["--results", str(copy)]) == 1
    assert "the records were changed" in capsys.readouterr().err


def test_empty_results_give_an_empty_board(tmp_path):
    md, page, board = build(tmp_path)
    assert board == {} and "No accepted submissions yet." in md.read_text()
    assert "No accepted submissions yet." in page.read_text()


# -- the page in a real browser ------------------------------------------------------------
def headless(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and every console message Chromium logged."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr",
         "--v=0", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, re.findall(r":CONSOLE[^\]]*\] (.*)", out.stderr)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install -y chromium)")
def test_console_check_catches_a_script_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>notDefined();</script></body></html>")
    _, console = headless(page.as_uri(), tmp_path)
    assert any("Uncaught ReferenceError: notDefined is not defined" in m for m in console)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install -y chromium)")
def test_html_page_loads_without_errors_and_shows_the_models(results, tmp_path):
    build(results)
    dom, console = headless((results / "leaderboard.html").as_uri(), tmp_path)
    assert console == []
    tables = dom.count("<table")
    assert tables == 1 + 2  # the ranking and one detail table per model
    assert dom.count('data-sortable="ready"') == tables  # the script ran over every table
    assert dom.count('aria-sort="ascending"') == tables
    ranking = dom[dom.index("<table"):dom.index("</table>")]
    for name in ("tiny-a", "tiny-b"):
        assert f"<td class=\"text\">{name}</td>" in ranking
        assert f'alt="radar {name}"' in dom


# -- the committed leaderboard -------------------------------------------------------------
COMMITTED = sorted((REPO / "results" / "submissions").glob("*/submission.json"))


@pytest.mark.skipif(not COMMITTED, reason="no committed submissions in results/")
def test_committed_submissions_validate_and_the_board_is_current():
    for path in COMMITTED:
        validate_submission(path)
    board = load_board(REPO / "results")
    assert (REPO / "results" / "LEADERBOARD.md").read_text() == markdown(board), (
        "results/LEADERBOARD.md is stale: run `mibench leaderboard`")


# -- text a submitter controls -------------------------------------------------------------
def _copy_board(results: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(results / "submissions", copy / "submissions")
    return copy


def _edit(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _structure(markdown_text: str) -> list[str]:
    """Every block and inline token type of a Markdown text (its shape, not its words)."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    out = []
    for token in parser.parse(markdown_text):
        out.append(token.type)
        out += [child.type for child in token.children or []]
    return out


INJECTION = ("x |\n| 1 | fake-model | 0 |\n# Owned [click](http://evil.example) `code` "
             "<script>alert(1)</script> ![i](x) **b** _i_ ~~s~~ > q\n- item")


def test_submitted_text_cannot_inject_markdown_or_html(results, tmp_path):
    """A revision string that would add a ranking row, a heading, a link and HTML leaves the
    board's Markdown structure exactly as it was; only the text differs."""
    pytest.importorskip("markdown_it")
    board_dir = _copy_board(results, tmp_path)
    clean = build(board_dir)[0].read_text()
    for revision in (INJECTION[i:i + 12] for i in range(0, len(INJECTION), 6)):
        _edit(board_dir / "submissions" / "tiny-a" / "submission.json",
              lambda doc, r=revision: doc["model"].update(revision=r, commit=None))
        md_path, page_path, _ = build(board_dir)
        assert _structure(md_path.read_text()) == _structure(clean), revision
        assert "<script>" not in page_path.read_text().split("<script>", 1)[0]


@pytest.mark.skipif(__import__("importlib").util.find_spec("markdown_it") is None,
                    reason="needs markdown-it-py")
@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab |\\`*_[]()<>#-+=!~.:/\n1&;hw")), max_size=40))
def test_escaped_text_is_one_table_cell_of_plain_text(text):
    """Whatever a submitter writes renders as exactly its own words in one table cell."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(
        f"| head |\n|---|\n| {md(text)} |\n")
    cells = [t for t in tokens if t.type == "inline"][1:]
    children = [c for t in cells for c in t.children or []]
    assert [t.type for t in tokens].count("tr_open") == 2 and len(cells) == 1
    assert {c.type for c in children} <= {"text"}
    assert "".join(c.content for c in children) == " ".join(text.split())


def test_names_outside_the_registry_are_refused(results, tmp_path, capsys):
    board_dir = _copy_board(results, tmp_path)
    _edit(board_dir / "submissions" / "tiny-b" / "submission.json",
          lambda doc: doc["threat_models"].update(
              {"evil\n| 1 |": doc["threat_models"]["black_image"]}))
    assert leaderboard_main(["--results", str(board_dir)]) == 1
    assert "condition 'evil\\n| 1 |' is not a condition of this suite" in capsys.readouterr().err


def test_the_title_comes_from_the_benchmark_not_the_submitter(results, tmp_path):
    board_dir = _copy_board(results, tmp_path)
    for name in ("tiny-a", "tiny-b"):  # a registered name, but not the one measured
        _edit(board_dir / "submissions" / name / "submission.json",
              lambda doc: doc["benchmark"].update(name="cai2025"))
    text = build(board_dir)[0].read_text()
    assert "## Benchmark `toy`" in text and "cai2025" not in text


def test_the_same_weights_are_ranked_once(results, tmp_path):
    board_dir = _copy_board(results, tmp_path)
    twin = board_dir / "submissions" / "tiny-a-again"
    shutil.copytree(board_dir / "submissions" / "tiny-a", twin)
    _edit(twin / "submission.json", lambda doc: doc.update(name="tiny-a-again"))
    (entries,) = load_board(board_dir).values()
    by_name = {e.name: e for e in entries}
    first, second = sorted(("tiny-a", "tiny-a-again"),
                           key=lambda n: by_name[n].duplicate_of is not None)
    assert by_name[second].rank is None and by_name[second].duplicate_of == first
    assert "the same weights (sha256" in by_name[second].unranked_reason
    ranks = [e.rank for e in entries if e.rank]
    assert ranks == list(range(1, len(ranks) + 1))


def test_html_headers_wrap_between_words_only(results):
    _, page_path, _ = build(results)
    page = page_path.read_text()
    assert "overflow-wrap: anywhere" not in page and "word-break: break-all" not in page
    assert "<th>toy_<wbr>image_<wbr>heavy/<wbr>unrelated_<wbr>text flip %</th>" in page
