"""#10.12 / #10.6: the WebUI docs link images that exist and claim only what the hosts do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "webui.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_image_links_resolve(doc):
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8"))
    assert links, doc
    for link in links:
        assert (doc.parent / link).is_file(), f"{doc.name}: {link} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_claim_that_the_webui_progress_bar_shows_training(doc):
    """The WebUI's progress bar follows generation tasks only (modules/progress.py); the run is mirrored
    into shared.state (/sdapi/v1/progress) and shown in the tab."""
    text = " ".join(doc.read_text(encoding="utf-8").split())
    assert "Progress shows in the WebUI's own progress bar" not in text
    assert "/sdapi/v1/progress" in text


def test_webui_section_is_the_same_in_readme_and_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "webui.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The LoRA Training tab"):readme.index("\n## CLI")]
    assert section.replace("](docs/webui-", "](webui-").strip() in doc
