"""CITATION.cff: valid CFF 1.2.0 fields, the repository URL and licence from pyproject.toml,
and a reference for every paper the course reproduces."""

from __future__ import annotations

import sys

import pytest
import yaml

from safealign_lib.config import REPO_ROOT
from safealign_lib.course import launch

PAPERS = {  # first author's family name, year, a distinctive word of the title
    ("Qi", 2024, "Fine-tuning"),
    ("Li", 2025, "SaLoRA"),
    ("Hsu", 2024, "Safe LoRA"),
    ("Ao", 2025, "Pruning"),
    ("Tessari", 2024, "DIEM"),
    ("Qi", 2024, "Few Tokens Deep"),
    ("Arditi", 2024, "Single Direction"),
}


@pytest.fixture(scope="module")
def cff() -> dict:
    if REPO_ROOT is None:
        pytest.skip("not a checkout: no CITATION.cff")
    return yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())


def test_required_fields_and_pyproject_metadata(cff):
    assert cff["cff-version"] == "1.2.0"
    assert cff["message"] and cff["title"]
    assert cff["authors"] == [{"name": "SafeAlign course contributors"}]
    assert cff["repository-code"] == launch.repository_url()
    if sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
        assert cff["license"] == project["license"]
        assert str(cff["version"]) == project["version"]


def test_every_paper_is_referenced(cff):
    refs = cff["references"]
    found = {
        (r["authors"][0]["family-names"], r["year"], word)
        for r in refs
        for (_, _, word) in PAPERS
        if word.lower() in r["title"].lower()
    }
    assert PAPERS <= found
    for r in refs:  # the fields CFF requires of a reference
        assert {"type", "title", "authors"} <= set(r), r["title"]
