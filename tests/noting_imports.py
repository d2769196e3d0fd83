"""`python -m tests.noting_imports MODULE ARGS...` runs `python -m MODULE ARGS...` as Python
would, and as it ends (os._exit too, which the trainer leaves by) writes into the file
$NOTE_IMPORTS_TO whether TensorFlow was loaded: how tests/test_command_lines.py tells which
refusals come before TensorFlow loads."""

import os
import runpy
import sys


def note() -> None:
    with open(os.environ["NOTE_IMPORTS_TO"], "w") as f:
        f.write("tensorflow loaded" if "tensorflow" in sys.modules else "")


def exit_noting(status, _exit=os._exit):
    note()
    _exit(status)


if __name__ == "__main__":
    module, sys.argv = sys.argv[1], sys.argv[1:]
    os._exit = exit_noting
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        note()
