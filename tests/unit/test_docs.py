"""The README's settings table is generated from mm/settings.py and must not drift from it."""

import re
from pathlib import Path

from click.testing import CliRunner

from mm.cli.config import config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_setting_as_mm_config_prints_it():
    table = CliRunner().invoke(config, ["--markdown"]).output
    section = re.search(r"<!-- settings:[^>]*-->\n(.*?)<!-- end: settings -->", README.read_text(), re.S)
    assert section, "README lacks the generated settings section"
    assert section.group(1) == table, "README settings table is stale: regenerate with `mm config --markdown`"
