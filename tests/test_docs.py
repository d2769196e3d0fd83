"""The documents hold together and hold to the code: README.md, WORKSPACE.md and docs/*.md.

Every relative link names a file or folder that exists, every `#anchor` names a heading (GitHub's
slugs), every `python -m <module>` they show names a module that exists (found, not imported),
and every `make <target>` a target of the Makefile. Every repository path they name exists, and
every name a path is said to hold (`recipe.py`'s `train_and_evaluate`); no source is cited by
line number. Every `--flag` is one its program defines. A log line a page shows comes from a
logging call of the file its prefix names; docs/training.md's transcript is what the trainer
prints (`make docs` writes it, tools/doc_transcripts.py). Only WORKSPACE.md maps files.

The tests marked slow start processes: the trainer for the transcript, git for the commits a
page cites, every module shown for its `--help`. The rest are part of `make test-fast`.
"""

import ast
import concurrent.futures
import dataclasses
import functools
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import urllib.parse

import pytest
from absl import app, flags
from absl import logging as absl_logging

from tools import doc_transcripts
from trainer.config import TrainConfig

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


# --- What the documents say of the code: paths, names, flags, log lines, commits. ---

# A path shown that is to be written, not read: the example of writing-an-optimizer.md.
FILES_TO_WRITE = {"trainer/optimizers/rmsprop.py"}
REPOSITORY_PATH = re.compile(
    r"(?<![\w/.~<-])((?:trainer|launch|tests|tools|models|data|docs)/[\w./*<>{}-]*)"
)
POSSESSIVE = re.compile(r"`([\w/.]+\.py)`'s `(\w+)")
LINE_CITATION = re.compile(r"\b[\w/.-]+\.py:\d+|#L\d+\b|\blines? \d+(?:-\d+)? of\b")
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ ([\w.]+\.py)(:\d+)?\] (.*)$")
FLAG = re.compile(r"(?<![\w<-])--([a-z][\w-]*)")
PROGRAM = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)|\bmake\s+([a-z][\w-]*)")
MAKE_PROGRAMS = {
    "train": "trainer.train",
    "bench": "trainer.bench",
    "convergence": "trainer.convergence",
    "chaos": "tests.chaos",
}
LAUNCHERS = {"launch.local", "launch.sweep", "launch.kubernetes", "launch.slurm"}  # Pass `-- ...`.
# Programs whose arguments are a command line to run, `--help` included: no usage to print.
COMMAND_RUNNERS = {"launch.private_network"}
# Flags of other programs the pages show, by program.
OTHER_PROGRAMS_FLAGS = {
    "XLA_FLAGS": {"xla_cpu_max_isa", "xla_dump_to"},
    "sbatch, srun": {"signal", "gres", "open-mode", "requeue", "job-name", "ntasks-per-node"}
    | {"chdir", "gpu-bind", "kill-on-bad-exit", "exclusive", "distribution", "wait", "array"},
    "pip, uv": {"require-hashes", "upgrade", "upgrade-package", "universal", "generate-hashes"}
    | {"no-deps", "prefix"},
    "kubectl": {"for", "timeout"},
    "podman, buildah": {"variant", "isolation", "network", "build-arg", "secret", "pull"},
    "tensorboard": {"bind_all", "logdir", "port"},
    "iptables": {"dport"},
    "ruff": {"check", "fix"},
    "pytest": {"dist", "durations"},
}
OTHER_FLAGS = set().union(*OTHER_PROGRAMS_FLAGS.values())


def repository_paths(path: pathlib.Path):
    """(line number, path) of every repository path a document names outside fenced blocks."""
    for line in read(path):
        if line.in_code:
            continue
        for text in (line.text, *line.code_spans):
            for match in REPOSITORY_PATH.finditer(text):
                if not re.search(r"[*<>{}]", match.group(1)):  # A pattern, not a path.
                    yield line.number, match.group(1).rstrip(".-")


def missing_path(shown: str) -> str | None:
    if shown in FILES_TO_WRITE or (REPOSITORY / shown).exists():
        return None
    return f"{shown} does not exist"


@functools.cache
def python_files() -> dict[str, list[pathlib.Path]]:
    """Our Python files by name (recipe.py), for what a page names by its file's name alone."""
    found = {}
    for folder in ("trainer", "launch", "tools", "tests", "models", "data"):
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            found.setdefault(path.name, []).append(path)
    return found


def resolve(shown: str) -> list[pathlib.Path]:
    return [REPOSITORY / shown] if "/" in shown else python_files().get(shown, [])


def defines(path: pathlib.Path, name: str) -> bool:
    """Whether a Python file defines `name` at any depth: a function, class or assignment."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return True
    return False


def missing_name(shown_path: str, name: str) -> str | None:
    paths = [path for path in resolve(shown_path) if path.suffix == ".py" and path.is_file()]
    if not paths:
        return f"{shown_path} is no Python file of ours"
    if not any(defines(path, name) for path in paths):
        return f"{shown_path} defines no {name}"
    return None


def cited_line_numbers(path: pathlib.Path):
    """(line number, citation) of every source line cited by number: `recipe.py:74`, `#L74`,
    "line 74 of"; in a log line shown too, where absl's prefix would carry one."""
    for line in read(path):
        for match in LINE_CITATION.finditer(line.raw):
            yield line.number, match.group(0)


def log_lines(path: pathlib.Path):
    """(line number, file name, line number or None, message) of every absl log line shown."""
    for line in read(path):
        if line.in_code and (match := LOG_LINE.match(line.raw.strip())):
            yield line.number, match.group(1), match.group(2), match.group(3)


@functools.cache
def logged_formats(path: pathlib.Path) -> tuple[re.Pattern, ...]:
    """What a file's logging calls can print: each call's message (its first argument, a
    %-format, an f-string or a literal), as a pattern its arguments match anything in."""
    patterns = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "logging"
            and node.args
        ):
            continue
        message = node.args[0]
        if isinstance(message, ast.Constant) and isinstance(message.value, str):
            parts = re.split(r"%[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]", message.value)
        elif isinstance(message, ast.JoinedStr):
            parts = [[]]
            for value in message.values:
                if isinstance(value, ast.Constant):
                    parts[-1].append(value.value)
                else:
                    parts.append([])
            parts = ["".join(part) for part in parts]
        else:
            parts = ["", ""]  # A message computed elsewhere: any line.
        patterns.append(re.compile(".*".join(map(re.escape, parts)), re.S))
    return tuple(patterns)


def unlogged(file_name: str, message: str) -> str | None:
    """Why no logging call of a file of that name prints `message`; None when one does."""
    paths = python_files().get(file_name, [])
    if not paths:
        return f"no file of ours is named {file_name}"
    if any(pattern.fullmatch(message) for path in paths for pattern in logged_formats(path)):
        return None
    return f"no logging call in {', '.join(name(path) for path in paths)} prints it"


def program_path(module: str) -> pathlib.Path | None:
    """The file `python -m module` runs, when it is ours."""
    path = REPOSITORY.joinpath(*module.split("."))
    for candidate in (path / "__main__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def program_flags(module: str) -> frozenset[str] | None:
    """The flags a program of ours defines: the trainer's TrainConfig fields, and for the
    others the flags their file defines (absl's DEFINE_*, argparse's add_argument); with
    absl's own, and for a launcher the trainer's that it passes through. None: not ours."""
    if module == "trainer.train":
        return frozenset({field.name for field in dataclasses.fields(TrainConfig)}) | absl_flags()
    path = program_path(module)
    if path is None:
        return None
    found = set(absl_flags())
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attribute, args = node.func.attr, node.args
        if attribute.startswith("DEFINE_") and args and isinstance(args[0], ast.Constant):
            found.add(args[0].value)
        elif attribute == "DEFINE" and len(args) > 1 and isinstance(args[1], ast.Constant):
            found.add(args[1].value)
        elif attribute == "add_argument":
            found.update(
                arg.value[2:]
                for arg in args
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
            )
    if module in LAUNCHERS:
        found |= program_flags("trainer.train")
    return frozenset(found)


@functools.cache
def absl_flags() -> frozenset[str]:
    """absl's own flags: its logging's (--verbosity, -v), its app's, its help and flagfile."""
    by_module = flags.FLAGS.flags_by_module_dict()
    own = {
        flag_name
        for module in (app.__name__, absl_logging.__name__)
        for flag in by_module.get(module, [])
        for flag_name in (flag.name, flag.short_name)
        if flag_name
    }
    return frozenset(own | {"flagfile", "undefok", "help", "helpfull", "helpshort", "helpxml"})


def all_program_flags() -> frozenset[str]:
    modules = {"trainer.train", *MAKE_PROGRAMS.values(), *LAUNCHERS, "data.build_mnist"}
    modules |= {f"tools.{path.stem}" for path in (REPOSITORY / "tools").glob("[a-z]*.py")}
    return frozenset().union(*(program_flags(module) or () for module in modules))


def is_flag_of(flag: str, known: frozenset[str] | set[str]) -> bool:
    return flag in known or (flag.startswith("no") and flag[2:] in known)  # --noxla_update


def unknown_flags(text: str):
    """(flag, program) of each --flag in a line that the program it is given to does not
    define. A flag after `python -m <ours>` or `make train` (bench, ...) is that program's; one
    elsewhere must be a flag of one of our programs, or of a program OTHER_PROGRAMS_FLAGS names."""
    programs = [
        (match.start(), match.group(1) or MAKE_PROGRAMS.get(match.group(2)))
        for match in PROGRAM.finditer(text)
    ]
    for match in FLAG.finditer(text):
        given_to = [module for start, module in programs if start < match.start()]
        module = given_to[-1] if given_to else None
        known = program_flags(module) if module else None
        if known is None:
            known = all_program_flags() | OTHER_FLAGS
        if not is_flag_of(match.group(1), known):
            yield match.group(1), module or "any program of ours"


def shown_flags(path: pathlib.Path):
    """(line number, flag, program) of every --flag in a document that its program lacks: in
    each line of a fenced block, each code span, and the prose around them (where a flag
    belongs to no program shown beside it)."""
    for line in read(path):
        pieces = [line.raw] if line.in_code else [*line.code_spans, PROGRAM.sub("", line.text)]
        for piece in pieces:
            for flag, program in unknown_flags(piece):
                yield line.number, flag, program


def file_map_tables(path: pathlib.Path):
    """(line number) of each table whose rows, three or more, begin with a repository path:
    a map of files, which is WORKSPACE.md's alone."""
    rows, start = [], None
    for line in [*read(path), Line(0, "", "", False, "", ())]:
        if not line.in_code and line.raw.lstrip().startswith("|"):
            start = start or line.number
            first_cell = line.raw.strip().strip("|").split("|")[0].strip()
            rows.append(bool(REPOSITORY_PATH.fullmatch(first_cell.strip("`").split("`")[0])))
            continue
        if sum(rows) >= 3:
            yield start
        rows, start = [], None


HEX = re.compile(r"(?<![\w/.-])([0-9a-f]{7,40})(?![\w/-])")


def cited_commits(path: pathlib.Path):
    """(line number, abbreviated hash) of every commit a document cites: a word of 7-40 hex
    digits with a letter and a digit, outside code (a hash inside code is an example's)."""
    for line in read(path):
        if line.in_code:
            continue
        for match in HEX.finditer(line.text):
            word = match.group(1)
            if re.search(r"[a-f]", word) and re.search(r"\d", word):
                yield line.number, word


def missing_commits(hashes: set[str]) -> set[str]:
    """The hashes that name no commit of this repository (`git cat-file -e <hash>^{commit}`)."""
    ordered = sorted(hashes)
    answer = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objecttype)"],
        input="".join(f"{sha}^{{commit}}\n" for sha in ordered),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {sha for sha, found in zip(ordered, answer, strict=True) if found != "commit"}


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


def path_and_name_problems(document):
    """Code moves: a page naming trainer/loop/exiting.py after it went to trainer/common/, or
    `recipe.py`'s `Resumable` after it left."""
    for number, shown in repository_paths(document):
        if reason := missing_path(shown):
            yield number, reason
    for line in read(document):
        for match in POSSESSIVE.finditer(line.raw):
            if reason := missing_name(match.group(1), match.group(2)):
                yield line.number, f"`{match.group(1)}`'s `{match.group(2)}`: {reason}"


def line_number_problems(document):
    """A line number moves with every edit above it; a page names the function or class."""
    for number, citation in cited_line_numbers(document):
        yield number, f"{citation}: cite the name (`recipe.py`'s `train_and_evaluate`), not a line"


def log_line_problems(document):
    """A log line shown is printed by a logging call of the file its prefix names, whatever
    the arguments: a message reworded, or moved to another file, is caught."""
    for number, file_name, _, message in log_lines(document):
        if reason := unlogged(file_name, message):
            yield number, f"{file_name}] {message[:60]}...: {reason}"


def flag_problems(document):
    for number, flag, program in shown_flags(document):
        yield number, f"--{flag}: not a flag of {program}"


def file_map_problems(document):
    """One fact, one place: what each file holds is said once, in WORKSPACE.md."""
    if document.name != "WORKSPACE.md":
        for number in file_map_tables(document):
            yield number, "a table of files; link to WORKSPACE.md instead"


CODE_CHECKS = (
    path_and_name_problems,
    line_number_problems,
    log_line_problems,
    flag_problems,
    file_map_problems,
)


@pytest.mark.parametrize("check", CODE_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_what_a_document_says_of_the_code_holds(document, check):
    problems = [f"{name(document)}:{number}: {problem}" for number, problem in check(document)]
    assert not problems, "\n".join(problems)


def test_the_readme_fits_in_120_lines():
    """The front door is read in five minutes; reference material belongs in docs/."""
    lines = len((REPOSITORY / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= 120, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.slow
def test_the_training_transcript_is_what_the_trainer_prints():
    """docs/training.md shows what `make train ARGS=...` prints now, line for line, up to the
    times, speeds and values comparable() blanks. After a change of what a run logs: make docs."""
    page = doc_transcripts.shown(doc_transcripts.PAGE.read_text(encoding="utf-8"))
    printed = doc_transcripts.run_trainer()
    assert doc_transcripts.comparable(page) == doc_transcripts.comparable(printed), (
        f"docs/training.md's transcript is not what the trainer prints now (make docs):\n{printed}"
    )


@pytest.mark.slow
def test_every_commit_cited_exists():
    cited = {
        (document, number, sha) for document in DOCUMENTS for number, sha in cited_commits(document)
    }
    missing = missing_commits({sha for _, _, sha in cited})
    problems = [
        f"{name(document)}:{number}: {sha}: no such commit in this repository"
        for document, number, sha in sorted(cited)
        if sha in missing
    ]
    assert not problems, "\n".join(problems)
    assert missing_commits({"dd591dc", "bafd38f"}) == {"dd591dc"}  # One that never landed.


@pytest.mark.slow
def test_every_python_m_module_shown_runs_its_help():
    """Each program of ours a page shows starts and prints its usage (absl's --help exits 1,
    argparse's 0); in threads, since most of the time is each one's imports."""
    modules = sorted(
        {
            module
            for document in DOCUMENTS
            for _, text, _ in shown_code(document)
            for module in PYTHON_M.findall(text)
            if program_path(module) is not None and module not in COMMAND_RUNNERS
        }
    )

    def help_of(module):
        return subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = dict(zip(modules, pool.map(help_of, modules)))
    problems = [
        f"python -m {module} --help: exit {answer.returncode}\n{answer.stderr[-2000:]}"
        for module, answer in answers.items()
        if answer.returncode not in (0, 1)
        or "usage" not in (answer.stdout + answer.stderr).lower()
        and "flags:" not in answer.stdout + answer.stderr
    ]
    assert "trainer.train" in modules and "launch.local" in modules
    assert not problems, "\n\n".join(problems)


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


def test_the_checks_of_the_code_catch_its_drifts(tmp_path):
    """One of each drift the checks against the code are for, put back into a page."""
    page = tmp_path / "page.md"
    page.write_text(
        "`trainer/loop/exiting.py` holds `trainer/common/exiting.py`'s `exit_promptly`;\n"
        "`trainer/recipe.py`'s `Resumable` left; `tests/test_*.py` is a pattern.\n"
        "See recipe.py:74 and [the loop](../trainer/recipe.py#L74).\n"
        "```\n"
        "I1202 02:44:56.468739 140039514405760 export.py:74] run directory: /tmp/x\n"
        "I1202 02:44:56.468739 140039514405760 recipe.py] OneDeviceStrategy with 1 replica(s): x\n"
        "I1202 02:44:56.468739 140039514405760 export.py] a message no call logs\n"
        "I1202 03:21:46.136759 140624625822592 training.py] [throughput] batch 128: round 2/5\n"
        "python -m launch.local --workers=2 -- --epochs=2 --no_such_flag\n"
        "python -m trainer.convergence --sweep_dir=runs\n"
        "```\n"
        "`make train ARGS=--noxla_update`, `make bench ARGS=--epochs=1`, `--bind_all`\n\n"
        "| file | what |\n|---|---|\n| `trainer/recipe.py` | a |\n| `trainer/train.py` | b |\n"
        "| `trainer/loop/` | c |\n\n"
        "Cited: 39aed24 and 1234abc; `0cce9da725aa9a04` is a fingerprint.\n"
    )
    assert [shown for _, shown in repository_paths(page) if missing_path(shown)] == [
        "trainer/loop/exiting.py"
    ]
    assert missing_name("trainer/common/exiting.py", "exit_promptly") is None
    assert missing_name("trainer/recipe.py", "Resumable") is not None
    assert missing_name("recipe.py", "train_and_evaluate") is None  # Found by its file's name.
    assert [citation for _, citation in cited_line_numbers(page)] == [
        "recipe.py:74",
        "#L74",
        "export.py:74",
    ]
    assert [
        (message[:20], bool(unlogged(file_name, message)))
        for _, file_name, _, message in log_lines(page)
    ] == [
        ("run directory: /tmp/", True),  # directory.py logs it, not export.py.
        ("OneDeviceStrategy wi", False),
        ("a message no call lo", True),
        ("[throughput] batch 1", False),  # "%s: round %d/%d%s", a multi-line call.
    ]
    assert [(flag, program) for _, flag, program in shown_flags(page)] == [
        ("no_such_flag", "launch.local"),
        ("sweep_dir", "trainer.convergence"),
        ("epochs", "trainer.bench"),
    ]
    assert list(file_map_tables(page)) == [14]
    assert [sha for _, sha in cited_commits(page)] == ["39aed24", "1234abc"]

    # The transcript: a line the trainer prints and the page lacks (the --jit_compile=auto line
    # before make docs), or a changed message, differs; times, speeds and the CPU's choice do not.
    printed = (
        "I1207 22:46:10.141577 140210862250880 recipe.py:64] OneDeviceStrategy with 1 replica(s)\n"
        "I1207 22:46:10.166795 140210862250880 machine_fit.py:105] --jit_compile=auto: no XLA\n"
        "epoch 1/1  step 390/390  14,044 ex/s  loss 0.1012  acc 0.9694  ETA 0:00\n"
    )
    elsewhere = (
        "I1202 02:44:56.468739 140039514405760 recipe.py] OneDeviceStrategy with 1 replica(s)\n"
        "I1202 02:44:56.468739 140039514405760 machine_fit.py] --jit_compile=auto: XLA for both\n"
        "epoch 1/1  step 390/390  9,876 ex/s  loss 0.1013  acc 0.9690  ETA 0:00\n"
    )
    assert doc_transcripts.comparable(printed) == doc_transcripts.comparable(elsewhere)
    without_jit_line = "".join(elsewhere.splitlines(keepends=True)[::2])
    assert doc_transcripts.comparable(printed) != doc_transcripts.comparable(without_jit_line)
    assert doc_transcripts.comparable(printed) != doc_transcripts.comparable(
        printed.replace("step 390/390", "step 390/391")
    )
    shown = doc_transcripts.shown(doc_transcripts.PAGE.read_text(encoding="utf-8"))
    assert "--jit_compile=auto: " in shown and not doc_transcripts.LOG_PREFIX.search(shown)
