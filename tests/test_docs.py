"""The documentation is tested: every example in README.md and docs/*.md runs,
and so does every docstring example in ``src/sluice``.

How code blocks run:

- Each Markdown file runs in its own empty working directory (``tmp_path``),
  with its blocks executed **in order in one namespace**, like a notebook: a
  page may define ``rows`` in one block and use it in the next. Blocks that need
  files write them first.
- ```` ```python ```` blocks are executed. ```` ```pycon ```` blocks (``>>>``
  prompts) are run as doctests in the same namespace, so the output they show
  is checked.
- ```` ```python no-run ```` (or a ``<!-- no-run -->`` line just before the
  fence) marks a block that cannot run unattended (it waits for Ctrl-C, for
  example). Use it sparingly; ``test_no_run_blocks_are_rare`` keeps count.
- Other blocks (``bash``, ``console``, ``text``) are not run.
- Line numbers in tracebacks are those of the Markdown file.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sluice

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
NO_RUN_COMMENT = "<!-- no-run -->"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # line of the first code line in the file (1-based)
    lang: str
    flags: tuple[str, ...]
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language and flags."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").split()
        if not info:
            continue
        line = text.count("\n", 0, m.start("body")) + 1
        flags = tuple(info[1:])
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1].strip()
        if before == NO_RUN_COMMENT:
            flags += ("no-run",)
        out.append(Block(path, line, info[0], flags, m.group("body")))
    return out


def _run_python(block: Block, ns: dict[str, Any]) -> None:
    # pad so that tracebacks point at the right line of the Markdown file
    src = "\n" * (block.line - 1) + block.code
    exec(compile(src, str(block.path), "exec"), ns)


def _run_pycon(block: Block, ns: dict[str, Any]) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.code, ns, block.where, str(block.path), block.line - 1)
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    out: list[str] = []
    runner.run(test, out=out.append, clear_globs=False)
    if runner.failures:
        pytest.fail(f"doctest in {block.where} failed:\n" + "".join(out), pytrace=False)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ns: dict[str, Any] = {"__name__": "__docs__"}
    for block in code_blocks(path):
        if "no-run" in block.flags:
            continue
        if block.lang == "python":
            _run_python(block, ns)
        elif block.lang == "pycon":
            _run_pycon(block, ns)


def test_every_docs_page_has_examples() -> None:
    for path in DOC_FILES:
        runnable = [b for b in code_blocks(path) if b.lang in ("python", "pycon")]
        assert runnable, f"{path.name} has no python example"


def test_code_blocks_are_found_with_their_flags(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```python\nx = 1\n```\n\n```python no-run\nwait()\n```\n\n"
        "<!-- no-run -->\n```python\nwait()\n```\n\n```bash\nls\n```\n"
    )
    blocks = [(b.line, b.lang, b.flags, b.code) for b in code_blocks(page)]
    assert blocks == [
        (4, "python", (), "x = 1\n"),
        (8, "python", ("no-run",), "wait()\n"),
        (13, "python", ("no-run",), "wait()\n"),
        (17, "bash", (), "ls\n"),
    ]


def test_no_run_blocks_are_rare() -> None:
    skipped = [b.where for p in DOC_FILES for b in code_blocks(p) if "no-run" in b.flags]
    assert len(skipped) <= 3, f"too many no-run blocks: {skipped}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text(encoding="utf-8")[:600]
    assert "make demo" in head and "make test" in head


def test_docs_links_resolve() -> None:
    link = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)")
    for path in DOC_FILES:
        for target in link.findall(path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def _sluice_modules() -> list[str]:
    names = ["sluice"]
    for info in pkgutil.walk_packages(sluice.__path__, prefix="sluice."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _sluice_modules())
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=DOCTEST_FLAGS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_docstring_examples_exist() -> None:
    finder = doctest.DocTestFinder()
    total = 0
    for name in _sluice_modules():
        module = importlib.import_module(name)
        total += sum(len(t.examples) for t in finder.find(module))
    assert total > 20, f"only {total} docstring examples in src/sluice"
