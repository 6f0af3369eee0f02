"""README's python code blocks run as written.

Every ```python block either runs here, in a fresh interpreter in an empty folder, or is preceded by a
`<!-- readme-test: skip (reason) -->` line saying why it cannot (a real checkpoint path, the network, a trained
model in memory). Nothing is skipped silently: a block without the marker runs, and a marker with no python block
after it, or without a reason, fails.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def python_blocks(text: str) -> list[dict]:
    """[{line, code, skip}] for every ```python block; `skip` is the marker's reason or None."""
    blocks, lines, index, pending = [], text.splitlines(), 0, None
    while index < len(lines):
        line = lines[index]
        marker = MARKER.search(line)
        if marker:
            pending = (index + 1, marker.group("reason").strip())
            index += 1
            continue
        fence = FENCE.match(line)
        if fence:
            start, body = index + 1, []
            index += 1
            while index < len(lines) and not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            if fence.group(1) == "python":
                blocks.append({"line": start, "code": "\n".join(body) + "\n",
                               "skip": pending[1] if pending else None})
            elif pending:
                raise AssertionError(f"README line {pending[0]}: skip marker before a ```{fence.group(1)} block")
            pending = None
        elif line.strip() and pending:
            raise AssertionError(f"README line {pending[0]}: skip marker not directly before a python block")
        index += 1
    if pending:
        raise AssertionError(f"README line {pending[0]}: skip marker at the end of the file")
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_every_block_runs_or_says_why_not():
    assert BLOCKS, "README has no python blocks"
    assert any(block["skip"] is None for block in BLOCKS), "every README block is skipped"
    for block in BLOCKS:
        assert block["skip"] is None or len(block["skip"]) > 10, block


def test_markers_are_read():
    text = "<!-- readme-test: skip (needs a real checkpoint) -->\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    assert [b["skip"] for b in python_blocks(text)] == ["needs a real checkpoint", None]
    with pytest.raises(AssertionError, match="not directly before"):
        python_blocks("<!-- readme-test: skip (why) -->\ntext\n```python\nx = 1\n```\n")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b["skip"] is None], ids=lambda b: f"line{b['line']}")
def test_block_runs(block, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", block["code"]], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"README block at line {block['line']} failed:\n{result.stderr[-3000:]}"
