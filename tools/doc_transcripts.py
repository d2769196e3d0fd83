"""`make docs`: the program output docs/training.md shows, written by running the program.

A transcript pasted by hand drifts from what the program prints; this one is regenerated.
`python -m tools.doc_transcripts` runs TRANSCRIPT_COMMAND's trainer on the bundled data, into a
temporary logdir shown as /tmp/x, and writes all it prints (stdout and stderr, as a terminal
interleaves them) between the markers of docs/training.md, with the machine, date and commit it
ran on. tests/test_docs.py runs the same command and checks the page still shows what it prints,
up to `comparable()`'s blanks: times, thread ids, speeds, and what depends on the CPU's branch.

absl's log prefix names the file and line of each call; the line is left out (`recipe.py]`),
since it moves with every edit above the call and would cite a line that no longer says it.
"""

import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys
import tempfile

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
PAGE = REPOSITORY / "docs" / "training.md"
SHOWN_LOGDIR = "/tmp/x"
# What the page says it shows: make train ARGS="<these>", with --logdir=/tmp/x.
TRANSCRIPT_FLAGS = ("--epochs=1", "--warmup_epochs=0", "--data_source=bundled")
BEGIN = "<!-- make docs writes the lines from here to its end marker: tools/doc_transcripts.py -->"
END = "<!-- end of what make docs writes -->"

LOG_PREFIX = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+?\.py):\d+\]", re.M)


def run_trainer() -> str:
    """All the trainer prints for TRANSCRIPT_FLAGS, as shown: logdir /tmp/x, no line numbers."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # A user's shell.
    with tempfile.TemporaryDirectory() as logdir:
        completed = subprocess.run(
            [sys.executable, "-m", "trainer.train", *TRANSCRIPT_FLAGS, f"--logdir={logdir}"],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"the trainer exited {completed.returncode}:\n{completed.stdout}")
    return without_line_numbers(completed.stdout.replace(logdir, SHOWN_LOGDIR))


def without_line_numbers(text: str) -> str:
    return LOG_PREFIX.sub(r"\1]", text)


def comparable(transcript: str) -> list[str]:
    """The lines of a transcript with what differs run to run or machine to machine blanked:
    the log prefix's date, time and thread, speeds, losses and accuracies (XLA's path rounds
    differently), the weights' fingerprint, and the choice --jit_compile=auto made here."""
    lines = []
    for line in without_line_numbers(transcript).splitlines():
        line = re.sub(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ ", r"\1<time> <thread> ", line)
        line = re.sub(r"(--jit_compile=auto: ).*", r"\1<the choice for this CPU>", line)
        line = re.sub(r"\d[\d,]* ex/s", "<n> ex/s", line)
        line = re.sub(r"\b\d+\.\d+\b", "<x>", line)
        line = re.sub(r"(fingerprint at step \d+: )[0-9a-f]+", r"\1<hex>", line)
        lines.append(line.rstrip())
    return lines


def shown(page_text: str) -> str:
    """The fenced block between the page's markers."""
    start, end = page_text.index(BEGIN), page_text.index(END)
    block = re.search(r"^```\n(.*?)^```$", page_text[start:end], re.M | re.S)
    if block is None:
        raise ValueError(f"{PAGE.name}: no fenced block between its make docs markers")
    return block.group(1)


def section(transcript: str) -> str:
    """What goes between the markers: the command, where it ran, and the transcript."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Not this process's CUDA probes.
    from trainer.common import machine  # TensorFlow's answers for the machine line.

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True
    ).stdout.strip()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    flags = " ".join((*TRANSCRIPT_FLAGS, f"--logdir={SHOWN_LOGDIR}"))
    return (
        f'This is all that `make train ARGS="{flags}"` prints,\nas `make docs` ran it on'
        f" {date} at commit {commit}, on\n`machine: {machine.describe().line()}`:\n\n"
        f"```\n{transcript}```\n"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.doc_transcripts", description=__doc__)
    parser.parse_args(argv)
    text = PAGE.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    PAGE.write_text(text[:start] + "\n" + section(run_trainer()) + text[end:], encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPOSITORY)}'s transcript")


if __name__ == "__main__":
    main()
