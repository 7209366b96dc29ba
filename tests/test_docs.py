"""The user documentation stays true to the files it quotes and links, and speaks only of the product."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- quickstart-output: begin -->", "<!-- quickstart-output: end -->"
STUDY_REPO = "github.com/mnguyen0226/multitask_learning_vit"
# The replicated study's reported ViT figures: a page that quotes them cites the study.
STUDY_FIGURES = ("67.5 / 94.3", "33.5 / 49.1", "67.5 / 33.5")
# Words about how the work was organised, not about the product.
PROCESS_WORDS = re.compile(r"\bissue \d+|\bissues? \d|\bsessions?\b|\bhelpers?\b|\bthe lead\b|\bdev box\b"
                           r"|\blent\b|\bbranch(es)?\b|(?<!-)\bteam\b", re.IGNORECASE)  # keras-team is a name


def user_docs() -> list[Path]:
    return [REPO / "README.md", REPO / "results" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def product_docs() -> list[Path]:
    return [*user_docs(), REPO / "CHANGELOG.md", REPO / "BUILD_NOTES.md", REPO / "CONTRIBUTING.md"]


def quoted_output(readme: str) -> str:
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1, "README.md needs one quickstart-output marker pair"
    block = readme.split(BEGIN)[1].split(END)[0]
    fenced = re.search(r"^```\n(.*?)^```$", block, re.DOTALL | re.MULTILINE)
    assert fenced, "the quickstart-output markers hold no fenced block"
    return fenced.group(1)


def test_readme_quotes_the_regenerated_quickstart_output():
    # tools/regen_docs.py writes both; a hand edit of one, or a new transcript not copied into README, fails here.
    transcript = (REPO / "docs" / "quickstart_output.txt").read_text()
    assert "PASS" in transcript and "fine_accuracy" in transcript
    assert quoted_output((REPO / "README.md").read_text()) == transcript


def test_readme_stays_a_page_a_newcomer_reads():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 210
    assert "more to come" not in readme
    # the two quick-start commands: the main job on built-in data, and exactly the tests CI runs
    assert "mtl-keras train --config=quickstart" in readme
    ci = (REPO / ".ci" / "run").read_text()
    # CI installs as the README does, then (after the linter) runs the README's pytest command under a time gate.
    install = re.search(r"^python3 -m venv .*", ci, re.MULTILINE).group(0)
    assert re.search(r'"\$TEST_LIMIT_S" \.venv/bin/python -m pytest \|\|', ci)
    assert f"{install} && .venv/bin/python -m pytest" in readme


@pytest.mark.parametrize("page", product_docs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_docs_speak_of_the_product_not_of_the_work(page):
    hits = [f"{page.name}:{n}: {line.strip()}" for n, line in enumerate(page.read_text().splitlines(), 1)
            if PROCESS_WORDS.search(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("page", [*user_docs(), REPO / "CHANGELOG.md"], ids=lambda p: p.relative_to(REPO).as_posix())
def test_user_docs_never_name_the_development_data(page):
    # ../shared exists only beside a development checkout; CONTRIBUTING.md and BUILD_NOTES.md may name it.
    assert "../shared" not in page.read_text()


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_lead_to_files(page):
    text = page.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [link for link in links
               if "://" not in link and not (page.parent / link).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_replicated_study_is_cited_where_its_figures_appear(page):
    text = page.read_text()
    if any(figure in text for figure in STUDY_FIGURES):
        assert STUDY_REPO in text and "Multi-task Learning with Vision Transformers" in text


def test_license_file_matches_the_declared_license():
    setup = (REPO / "setup.cfg").read_text()
    assert re.search(r"^license = Apache-2.0$", setup, re.MULTILINE)
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text


def test_results_index_lists_every_results_folder_with_its_command():
    index = (REPO / "results" / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in index.splitlines() if line.startswith("| [")}
    folders = sorted(p.parent.relative_to(REPO / "results").as_posix() for p in (REPO / "results").rglob("results.md"))
    assert folders, "no results folders found"
    for folder in folders:
        row = next((line for cell, line in rows.items() if f"[{folder}/]" in cell), None)
        assert row, f"results/README.md does not index results/{folder}/"
        assert f"--results_dir=results/{folder}" in row, f"results/{folder}/'s row lacks the command writing it"
