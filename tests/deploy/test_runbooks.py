"""Every alert links to its runbook, and every link lands on a section of docs/runbooks.md.

A `runbook_url` is `docs/runbooks.md#<anchor>`, relative to the repository root, in both copies of
the rules. Anchors are computed as GitHub renders headings: lowercased, punctuation dropped,
spaces turned into hyphens, a repeated heading numbered `-1`, `-2`...
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
RULE_FILES = {
    "config": REPO_ROOT / "config" / "alerts.yml",
    "chart": REPO_ROOT / "helm" / "registry-proxy" / "files" / "alerts.yml",
}
PREFIX = "docs/runbooks.md#"

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading (before numbering repeats)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # inline code keeps its text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # punctuation goes; letters, digits, _ and - stay
    return text.replace(" ", "-")


def anchors(markdown: str) -> list[str]:
    """The anchors of all headings outside code fences, repeats numbered like GitHub does."""
    seen: dict[str, int] = {}
    found: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.append(base if count == 0 else f"{base}-{count}")
    return found


def _rules(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("RegistryProxyBreakerOpen", "registryproxybreakeropen"),
        ("Before anything else", "before-anything-else"),
        ("What `GET /v1/status` says!", "what-get-v1status-says"),
        ("Journal: full, or failed?", "journal-full-or-failed"),
        ("a_b-c d", "a_b-c-d"),
        ("See [the README](../README.md) first", "see-the-readme-first"),
    ],
)
def test_anchors_are_computed_as_github_does(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_repeated_headings_and_code_fences() -> None:
    text = "# Notes\n## Notes\n```sh\n# not a heading\n```\n### Notes\n#hashtag\n"
    assert anchors(text) == ["notes", "notes-1", "notes-2"]


@pytest.mark.parametrize("name", sorted(RULE_FILES))
def test_every_alert_has_a_runbook_url_that_resolves(name: str) -> None:
    available = set(anchors(RUNBOOKS.read_text()))
    rules = _rules(RULE_FILES[name])
    assert rules
    for rule in rules:
        url = rule.get("annotations", {}).get("runbook_url")
        assert url, f"{rule['alert']} in {name} has no runbook_url annotation"
        assert url.startswith(PREFIX), f"{rule['alert']}: {url!r} does not start with {PREFIX}"
        anchor = url.removeprefix(PREFIX)
        assert anchor in available, (
            f"{rule['alert']}: docs/runbooks.md has no heading with the anchor #{anchor}"
        )


def test_each_alert_links_to_its_own_section() -> None:
    """A section is named after its alert, so a link can be checked by eye and by grep."""
    for rule in _rules(RULE_FILES["config"]):
        assert rule["annotations"]["runbook_url"] == PREFIX + github_anchor(rule["alert"])


def test_every_runbook_section_has_the_five_parts() -> None:
    text = RUNBOOKS.read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    by_title = {section.splitlines()[0].strip(): section for section in sections}
    for rule in _rules(RULE_FILES["config"]):
        section = by_title.get(rule["alert"])
        assert section is not None, f"no section for {rule['alert']}"
        for part in (
            "**What it means.**",
            "**What the host app sees.**",
            "**How to confirm.**",
            "**What to do.**",
            "**When it is safe to do nothing.**",
        ):
            assert part in section, f"{rule['alert']}: the section lacks {part}"


def test_no_section_for_an_alert_that_does_not_exist() -> None:
    """A renamed or removed alert must not leave its runbook behind."""
    alerts = {rule["alert"] for rule in _rules(RULE_FILES["config"])}
    titles = re.findall(r"^## (RegistryProxy\w+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    assert len(titles) == len(set(titles))
    assert set(titles) <= alerts, set(titles) - alerts


def test_links_inside_the_runbooks_resolve() -> None:
    text = RUNBOOKS.read_text()
    available = set(anchors(text))
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in available, f"docs/runbooks.md links to #{target}, which is no heading"
    for path in re.findall(r"\]\((?!#|https?:)([^)#]+)(?:#[^)]*)?\)", text):
        assert (RUNBOOKS.parent / path).exists(), f"docs/runbooks.md links to {path}"
