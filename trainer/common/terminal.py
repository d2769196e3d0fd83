"""What a user's terminal shows: our own log lines, warnings and errors, not the libraries'
chatter (oneDNN and CUDA probes, XLA service lines, "Sharding callback duration" after every
checkpoint, SavedModel signature renames, ...), and one line, not a traceback, for a Ctrl-C.

Every entry point imports this module first, before anything that may load TensorFlow:

    # Before the imports that may load TensorFlow: it sets up what the terminal shows of it.
    from trainer.common import terminal  # isort: split

because TensorFlow's C++ logging reads its level (TF_CPP_MIN_LOG_LEVEL) once, as it loads. It
loads TensorFlow itself through `load_tensorflow()`: at its start, by importing
trainer.common.quiet_tensorflow, if it needs TensorFlow throughout; or only once its flags are
checked (trainer.train, launch.sweep), so that a bad flag is refused without waiting for it.
absl's --verbosity decides what the user sees:

    0 (the default)   our INFO lines, and every line at WARNING or above
    1 (-v 1)          also our DEBUG lines and the libraries' INFO lines, C++ and Python
    2                 also the libraries' Python DEBUG lines (matplotlib's font search, ...)
    -1                warnings and errors only (absl's own meaning of the flag)

A TF_CPP_MIN_LOG_LEVEL the user exported is kept, and launch.local's workers decide for
themselves from their own flags (user_environ). The C++ side follows --verbosity on the
command line, not in a --flagfile: it is read before absl parses flags. The lines TensorFlow
writes while it loads are held back until it has loaded; were it to abort while loading (a
FATAL line), they would go with it, and -v 1 shows them as they come.
"""

import functools
import logging
import os
import re
import sys
import tempfile
from typing import NoReturn

from absl import flags
from absl import logging as absl_logging

from trainer.common.paths import REPOSITORY

CPP_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
# C++ lines hidden by default: INFO, WARNING and ERROR, leaving FATAL. TensorFlow's C++ errors
# that matter come back to Python as exceptions, which the entry points report; the ERROR
# lines that stop nothing are probes, such as "failed call to cuInit" on a machine without GPU.
QUIET_CPP_LEVEL = "3"

_VENV = os.path.realpath(sys.prefix)
_SEVERITIES = "IWEF"  # absl's C++ severities, in the order of TF_CPP_MIN_LOG_LEVEL's values.
# A C++ log record's first line, in absl's format or TensorFlow's older one:
#   I0000 00:00:1795516774.653724   24051 port.cc:153] oneDNN custom operations are on...
#   2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could...
_CPP_RECORD = re.compile(
    r"([IWEF])\d{4} [\d:.]+ +\d+ [^\]]+\] "
    r"|\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) [^\]]+\] "
)
# Each copy of absl's C++ logging in TensorFlow's libraries writes this once, at INFO's level.
_CPP_PREINIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"


def exit_with_error(message: object) -> NoReturn:
    """Ends the program with exit code 1 and one line, `<program>: error: <message>`, the way
    every entry point reports what the user can fix."""
    sys.exit(f"{program_name()}: error: {message}")


def refuse_arguments(argv: list[str]) -> None:
    """Exits with one line if the command line holds arguments that are not flags (absl's
    UsageError would print the whole help before the error)."""
    if len(argv) > 1:
        exit_with_error(
            f"unexpected argument {argv[1]!r}: settings are flags, "
            "e.g. --epochs=2 (--helpshort lists them)"
        )


def program_name() -> str:
    """The entry point's name as users type it: `trainer.train`, `trainer.convergence`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec else os.path.basename(sys.argv[0])
    return name.removesuffix(".__main__")


def interrupted_line() -> str:
    """What an entry point says when Ctrl-C ends it before it has anything to save."""
    return f"{program_name()}: interrupted (Ctrl-C)"


def _one_line_for_ctrl_c(excepthook):
    """`excepthook`, but a KeyboardInterrupt nobody caught is one line, not a traceback.
    Python still ends the process by SIGINT, as shells and launchers expect (exit 130)."""

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(interrupted_line(), file=sys.stderr)
        else:
            excepthook(kind, value, traceback)

    return hook


def tensorboard_command(logdir: str) -> str:
    """The command that shows `logdir`, as this Python's own `tensorboard` (the one in .venv
    when run from it), for the hints our programs print."""
    program = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(program):
        program = "tensorboard"  # Installed elsewhere: whichever PATH finds.
    elif not os.path.relpath(program).startswith(".."):
        program = os.path.relpath(program)
    return f"{program} --logdir {logdir}"


def verbosity_from(argv: list[str]) -> int:
    """absl's --verbosity (or -v) as given in `argv` before flags are parsed; 0 if not given.

    Arguments after `--` belong to another program (launch.local's workers), so they are not read.
    """
    verbosity = 0
    for index, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        match = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
        if match:
            value = match.group(1)
            if value is None:
                value = argv[index + 1] if index + 1 < len(argv) else ""
            try:
                verbosity = int(value)
            except ValueError:
                pass  # absl refuses it with its own message once it parses the flags.
    return verbosity


def cpp_lines_to_show(text: str, min_level: int) -> str:
    """The lines of C++ log `text` whose record is at `min_level` (TF_CPP_MIN_LOG_LEVEL's
    scale) or above; a record's continuation lines go with it, other lines are kept."""
    shown, keep = [], True
    for line in text.splitlines(keepends=True):
        match = _CPP_RECORD.match(line)
        if match:
            keep = _SEVERITIES.index(match.group(1) or match.group(2)) >= min_level
        elif line.startswith(_CPP_PREINIT_NOTICE):
            keep = min_level <= 0
        if keep:
            shown.append(line)
    return "".join(shown)


def _cpp_level() -> int:
    try:
        return int(os.environ.get(CPP_LEVEL, "0"))
    except ValueError:
        return 0  # What TensorFlow makes of it too.


def load_tensorflow() -> None:
    """Imports TensorFlow, if not yet, and passes on only the C++ lines it writes while loading
    that are at TF_CPP_MIN_LOG_LEVEL or above: some of its libraries log (the oneDNN notice,
    the CUDA probe) before they read the level. Python's own writes (warnings) go straight
    through."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as held, open(terminal_fd, "w", buffering=1) as terminal:
        os.dup2(held.fileno(), 2)
        sys.stderr = terminal
        loaded = False
        try:
            import tensorflow  # noqa: F401

            loaded = True
        finally:
            # If the import failed, every line it wrote may explain why: all are shown.
            terminal.flush()
            os.dup2(terminal_fd, 2)
            sys.stderr = python_stderr
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.write(cpp_lines_to_show(text, _cpp_level()) if loaded else text)
            sys.stderr.flush()


@functools.cache
def _is_ours(path: str) -> bool:
    """A file of this repository's code, not of a package installed in its virtualenv."""
    path = os.path.realpath(path)
    return path.startswith(f"{REPOSITORY}{os.sep}") and not path.startswith(_VENV + os.sep)


def _shown(record: logging.LogRecord) -> bool:
    """Python log records: all of ours that absl's --verbosity lets through; the libraries'
    one level above ours: WARNING by default, INFO with -v 1, DEBUG with -v 2."""
    verbosity = max(flags.FLAGS["verbosity"].value, 0)
    return _is_ours(record.pathname) or record.levelno >= logging.WARNING - 10 * verbosity


def user_environ() -> dict[str, str]:
    """The environment as the user gave it, for programs started from here: without the C++
    log level this module chose, so that each decides from its own --verbosity."""
    environ = dict(os.environ)
    if _USER_CPP_LEVEL is None:
        environ.pop(CPP_LEVEL, None)
    return environ


def _set_up() -> None:
    sys.excepthook = _one_line_for_ctrl_c(sys.excepthook)
    if verbosity_from(sys.argv) < 1:
        os.environ.setdefault(CPP_LEVEL, QUIET_CPP_LEVEL)
    # Every Python log line through absl's handler, which app.run would install anyway: there
    # before TensorFlow loads, TensorFlow's logger adds no handler of its own, which would print
    # each of its lines a second time ("INFO:tensorflow:Assets written to: ...").
    absl_logging.use_absl_handler()
    absl_logging.get_absl_handler().addFilter(_shown)


_USER_CPP_LEVEL = os.environ.get(CPP_LEVEL)
# Only an entry point's first import sets up; imported after TensorFlow (a test process that
# imports launch.local), it would be too late for the C++ side and changes nothing.
if "tensorflow" not in sys.modules:
    _set_up()
