"""docs/optimizers.md: its Python runs as the page shows it, and its assertions hold."""

import pathlib
import re

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "optimizers.md"


def test_the_pages_python_runs_and_its_assertions_hold():
    text = PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), {})
