"""The documentation's examples run: every ```python block of docs/**/*.md and README.md.

Each file's blocks run in order in one namespace (later blocks use earlier ones' names), in a temporary
working directory, offline, on the tiny presets. The examples carry their own asserts (reloaded logits
equal the original's, generated shapes, token counts, stage counts), so a passing run means the documented
behaviour holds, not only that the code does not crash. Non-runnable snippets use ```bash or ```text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
# files whose examples are the user's entry points: they must keep at least one runnable block
REQUIRED_RUNNABLE = ("docs/index.md", "docs/model_doc/llava.md")


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, source) of every fenced block whose info string is exactly ``python``."""
    blocks, lines = [], markdown.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening["fence"], opening["info"].lower()
        body_start = index + 1
        index = body_start
        while index < len(lines) and not lines[index].strip().startswith(fence[0] * len(fence)):
            index += 1
        if index >= len(lines):
            raise ValueError(f"unclosed code fence opened on line {body_start}")
        if language == "python":
            indent = len(opening["indent"])
            body = [line[indent:] if line[:indent].isspace() else line for line in lines[body_start:index]]
            blocks.append((body_start + 1, "\n".join(body) + "\n"))
        index += 1
    return blocks


def documentation_files() -> list[Path]:
    return sorted((REPO_ROOT / "docs").glob("**/*.md")) + [REPO_ROOT / "README.md"]


def files_with_examples() -> list[Path]:
    return [path for path in documentation_files() if python_blocks(path.read_text(encoding="utf-8"))]


def test_block_extraction_keeps_only_python_blocks_in_order():
    markdown = (
        "intro\n```python\nx = 1\n```\n"
        "```bash\npython -m something\n```\n"
        "```text\nnot = code\n```\n"
        "````python\ny = '```'\n````\n"
        "- item\n  ```python\n  z = x + 1\n  ```\n"
    )
    assert python_blocks(markdown) == [(3, "x = 1\n"), (12, "y = '```'\n"), (16, "z = x + 1\n")]


def test_block_extraction_rejects_an_unclosed_fence():
    with pytest.raises(ValueError, match="unclosed"):
        python_blocks("```python\nx = 1\n")


@pytest.mark.parametrize("relative_path", REQUIRED_RUNNABLE)
def test_user_guides_have_runnable_examples(relative_path):
    assert python_blocks((REPO_ROOT / relative_path).read_text(encoding="utf-8")), f"{relative_path} lost its examples"


@pytest.mark.parametrize("path", files_with_examples(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_documentation_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    relative = path.relative_to(REPO_ROOT)
    namespace = {"__name__": f"docs_example_{relative.stem}"}
    for line, source in python_blocks(path.read_text(encoding="utf-8")):
        # leading newlines keep line numbers equal to the markdown file's, so tracebacks point into it
        exec(compile("\n" * (line - 1) + source, str(relative), "exec"), namespace)
