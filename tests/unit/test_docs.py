"""The docs hold no hand-written copy of what the code generates, and every link in them resolves."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mm.cli.config import config

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "RELIABILITY.md", REPO / "CHANGELOG.md",
        *sorted((REPO / "docs").glob("*.md"))]
SETTINGS_HEADER = "| variable | type | default | meaning |"
# The header of the table that `MM_RELIABILITY_OUT=RELIABILITY.md pytest -m faults` writes (tests/faults/conftest.py).
RELIABILITY_HEADER = "| scenario | expectation | submitted | completed | failed | ran twice | time to recover |"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def test_docs_settings_md_lists_every_setting_as_mm_config_prints_it():
    table = CliRunner().invoke(config, ["--markdown"]).output
    text = (REPO / "docs" / "settings.md").read_text()
    section = re.search(r"<!-- settings:[^>]*-->\n(.*?)<!-- end: settings -->", text, re.S)
    assert section, "docs/settings.md lacks the generated settings section"
    assert section.group(1) == table, "docs/settings.md is stale: regenerate it with `mm config --markdown`"


def test_no_settings_table_is_written_by_hand_outside_docs_settings_md():
    for doc in DOCS:
        if doc.name == "settings.md" and doc.parent.name == "docs":
            continue
        copied = SETTINGS_HEADER in doc.read_text()
        assert not copied, f"{doc.relative_to(REPO)} copies the settings table: link docs/settings.md"


def test_reliability_md_holds_the_table_the_fault_tests_generate():
    head, mark, table = (REPO / "RELIABILITY.md").read_text().partition("<!-- table -->")
    assert mark, "RELIABILITY.md lacks the <!-- table --> mark the fault tests write after"
    lines = table.strip().splitlines()
    assert lines[:2] == [RELIABILITY_HEADER, "|---|---|---|---|---|---|---|"]
    assert all(line.startswith("| ") and line.count(" | ") == 6 for line in lines[2:]), "a hand-edited row"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Every anchor GitHub gives ``doc``'s headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", doc.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(doc: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", doc.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("doc", [d for d in DOCS if d.exists()], ids=lambda d: str(d.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_and_heading(doc):
    broken = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_the_slug_follows_github():
    assert slug("Submitting jobs from Python") == "submitting-jobs-from-python"
    assert slug("The embedded runtime: `mm runtime`") == "the-embedded-runtime-mm-runtime"
    assert slug("Gateway, Ollama-compatible proxy, metrics and status page") == \
        "gateway-ollama-compatible-proxy-metrics-and-status-page"
    assert slug("[0.1.0] - 2026-11-20") == "010---2026-11-20"
