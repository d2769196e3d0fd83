"""The documents hold together: README.md, WORKSPACE.md and docs/*.md.

Every relative link names a file or folder that exists, every `#anchor` names a heading (GitHub's
slugs), every `python -m <module>` they show names a module that exists (found, not imported),
and every `make <target>` a target of the Makefile. No subprocess: part of `make test-fast`.
"""

import dataclasses
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import sys
import urllib.parse

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [REPOSITORY / "README.md", REPOSITORY / "WORKSPACE.md", *(REPOSITORY / "docs").glob("*.md")]
)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ID = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"")
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*(?:href|src)=\"([^\"]+)\"")
PYTHON_M = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)")
MAKE = re.compile(r"^\s*(?:\$\s+)?make\s+([A-Za-z][\w-]*)")
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}


@dataclasses.dataclass(frozen=True)
class Line:
    number: int
    raw: str
    text: str  # With inline code blanked out when `in_code` is False.
    in_code: bool  # Inside a fenced block.
    fence: str  # The block's language, when in_code.
    code_spans: tuple[str, ...]  # The inline code spans of a line outside blocks.


def read(path: pathlib.Path) -> list[Line]:
    lines, fence, language = [], None, ""
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(text)
        if opening and fence is None:
            fence, language = opening.group(1), text.strip()[3:].strip().lower()
            continue
        if opening and text.strip().startswith(fence) and not text.strip()[3:].strip():
            fence = None
            continue
        if fence is not None:
            lines.append(Line(number, text, text, True, language, ()))
            continue
        spans = tuple(match.group(2).strip() for match in CODE_SPAN.finditer(text))
        blanked = CODE_SPAN.sub(lambda match: " " * len(match.group(0)), text)
        lines.append(Line(number, text, blanked, False, "", spans))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation but '-' and '_' dropped,
    each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # A link's text stays.
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """Every anchor of a document: its headings' slugs (a repeated one gets -1, -2, ...) and
    the ids of its HTML anchors."""
    found, seen = set(), {}
    for line in read(path):
        if line.in_code:
            continue
        found.update(HTML_ID.findall(line.text))
        heading = HEADING.match(line.text)
        if heading:
            base = slug(HEADING.match(line.raw).group(2))  # With its code spans' text.
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: pathlib.Path):
    """(line number, target) of every link and image outside code."""
    for line in read(path):
        if line.in_code:
            continue
        for match in LINK.finditer(line.text):
            yield line.number, match.group(1)
        for target in HTML_LINK.findall(line.text):
            yield line.number, target
        reference = REFERENCE.match(line.text)
        if reference:
            yield line.number, reference.group(1)


def shown_code(path: pathlib.Path):
    """(line number, text, is a shell line) of every line of code a document shows: each line
    of a fenced block, and each inline code span."""
    for line in read(path):
        if line.in_code:
            yield line.number, line.text, line.fence in SHELL_FENCES
        for span in line.code_spans:
            yield line.number, span, True


def broken_link(document: pathlib.Path, target: str) -> str | None:
    """Why `target`, linked from `document`, does not resolve; None when it does."""
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme or parsed.netloc:  # http(s), mailto: not checked here.
        return None
    path, anchor = urllib.parse.unquote(parsed.path), urllib.parse.unquote(parsed.fragment)
    if path.startswith("/"):
        resolved = REPOSITORY / path.lstrip("/")  # GitHub reads these from the repository root.
    else:
        resolved = (document.parent / path) if path else document
    if not resolved.exists():
        return f"{os.path.relpath(resolved, REPOSITORY)} does not exist"
    if anchor:
        if resolved.is_dir() or resolved.suffix != ".md":
            return f"#{anchor} points into {resolved.name}, which is not a markdown document"
        if anchor not in anchors(resolved):
            return (
                f"{os.path.relpath(resolved, REPOSITORY)} has no heading with the anchor #{anchor}"
            )
    return None


def module_exists(name: str) -> bool:
    """Whether `python -m name` finds something to run, without importing it (or its parents):
    a module, or a package with a __main__."""
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [str(REPOSITORY), *sys.path])
    if spec is None:
        spec = importlib.util.find_spec(parts[0])  # Built-in and frozen modules.
    for depth in range(1, len(parts) + 1):
        if spec is None:
            return False
        if depth == len(parts):
            break
        if spec.submodule_search_locations is None:
            return False  # A module has no submodules.
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[: depth + 1]), spec.submodule_search_locations
        )
    if spec.submodule_search_locations is not None:
        return (
            importlib.machinery.PathFinder.find_spec(
                f"{name}.__main__", spec.submodule_search_locations
            )
            is not None
        )
    return True


def make_targets() -> set[str]:
    targets = set()
    for line in (REPOSITORY / "Makefile").read_text(encoding="utf-8").splitlines():
        rule = re.match(r"^([^\s#:=][^:=]*?)\s*::?(?!=)", line)
        if rule and not line.startswith("\t"):
            targets.update(rule.group(1).split())
    return {target for target in targets if not target.startswith(".") and "$" not in target}


def name(path: pathlib.Path) -> str:
    return str(path.relative_to(REPOSITORY))


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_relative_link_and_anchor_resolves(document):
    problems = [
        f"{name(document)}:{number}: link ({target}): {reason}"
        for number, target in links(document)
        if (reason := broken_link(document, target))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_python_m_shown_names_a_module_that_exists(document):
    problems = [
        f"{name(document)}:{number}: python -m {module}: no such module (or package __main__)"
        for number, text, _ in shown_code(document)
        for module in PYTHON_M.findall(text)
        if not module_exists(module)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_make_target_shown_is_in_the_makefile(document):
    targets = make_targets()
    problems = [
        f"{name(document)}:{number}: make {match.group(1)}: no such target in the Makefile "
        f"(it has {', '.join(sorted(targets))})"
        for number, text, is_shell in shown_code(document)
        if is_shell and (match := MAKE.match(text)) and match.group(1) not in targets
    ]
    assert not problems, "\n".join(problems)


def test_the_readme_fits_in_200_lines():
    """The front door stays a few screenfuls; reference material belongs in docs/."""
    lines = len((REPOSITORY / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= 200, f"README.md has {lines} lines; move reference material to docs/"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The checks themselves: GitHub's slugs, a missing file or anchor, a missing module."""
    assert slug("Flags, reruns and resuming") == "flags-reruns-and-resuming"
    assert slug("`launch.local`: one machine") == "launchlocal-one-machine"
    assert slug("What listens, and where (gRPC_port)") == "what-listens-and-where-grpc_port"
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n## Part\n\n## Part\n\n```\n# not a heading\n[a](gone.md)\n```\n"
        '[b](missing.md) `[c](in-code.md)` <img src="gone.png">\n'
    )
    assert anchors(page) == {"top", "part", "part-1"}
    assert [target for _, target in links(page)] == ["missing.md", "gone.png"]
    assert broken_link(page, "#part-1") is None
    assert broken_link(page, "#not-a-heading") is not None
    assert broken_link(page, "missing.md") is not None
    assert broken_link(page, "https://example.com/missing") is None
    assert module_exists("trainer.train") and module_exists("trainer.convergence")
    assert not module_exists("trainer.no_such_module")
    assert not module_exists("trainer")  # A package without __main__ cannot be run.
    assert {"train", "test", "bench"} <= make_targets()
