"""Where this repository is, for the files that name its code (git commit, PYTHONPATH)."""

import pathlib

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
