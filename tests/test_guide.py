"""docs/custom-structures.md is runnable: its Python blocks run in order as one session, its
`rtdetr-prune` commands run through the CLI, and its excerpts match the example files they quote.
What it shows as output is what they print:

- a ``text`` block is output of the block run just before it: its lines must appear in that output, in
  order (``...`` in a line stands for anything; a line that is only ``...`` for any number of lines);
- a comment at the end of a ``print(...)`` line is that print's output, checked the same way (the
  comments of a block's prints, in order, against its printed lines).

Markers (an HTML comment on the line before a code block):
- ``<!-- excerpt: PATH -->``: the block is a verbatim part of PATH (which the session runs as a plugin);
- ``<!-- not run by the tests: WHY -->``: shown only (e.g. it needs a dataset).
"""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from rtdetr_prune.cli import main
from rtdetr_prune.pruning import rules

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "custom-structures.md"
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def _blocks():
    text = GUIDE.read_text()
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        yield pytest.param(m["lang"], m["code"], m["marker"] or "", id=f"{m['lang']}-line{line}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One namespace for all Python blocks, run from the repository root; rules registered are undone after.
    ``"<output>"`` holds what the last block run printed."""
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    with rules.scoped():
        yield {"__name__": "guide", "<output>": None}
    mp.undo()


@pytest.mark.parametrize("lang,code,marker", list(_blocks()))
def test_guide_block(session, lang, code, marker):
    if marker.startswith("not run by the tests"):
        pytest.skip(marker)
    if marker.startswith("excerpt:"):
        path = ROOT / marker.split(":", 1)[1].strip()
        assert code in path.read_text(), f"the guide's excerpt drifted from {path.name}: copy it again"
        return
    if lang == "text":
        assert session["<output>"] is not None, "example output must follow the block that prints it"
        assert_shows(session["<output>"], code.splitlines())
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if lang == "python":
            exec(compile(code, str(GUIDE), "exec"), session)  # noqa: S102 - the guide's own example code
        elif lang == "bash":
            for line in code.strip().splitlines():
                assert line.startswith("rtdetr-prune "), line
                assert main(shlex.split(line)[1:]) == 0, line
        else:
            pytest.fail(f"unknown code block language '{lang}'")
    session["<output>"] = printed.getvalue()
    if lang == "python":
        assert_shows(printed.getvalue(), re.findall(r"^\s*print\(.*\)  # (.*)$", code, re.M))


def assert_shows(output: str, expected: list[str]) -> None:
    """Each expected line matches a printed line, in order (``...``: anything; a lone ``...``: any lines)."""
    lines, at = output.splitlines(), 0
    for want in expected:
        if want.strip() in ("", "..."):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.strip().split("...")))
        found = next((i for i in range(at, len(lines)) if pattern.fullmatch(lines[i].strip())), None)
        assert found is not None, f"the guide shows {want.strip()!r}, which is not printed (after line {at}):\n{output}"
        at = found + 1


def test_guide_names_the_sections_check_refers_to():
    from rtdetr_prune.pruning.analysis.check import ADVICE

    headings = {h.strip() for h in re.findall(r"^#+ (.*)$", GUIDE.read_text(), re.M)}
    cited = {c for advice in ADVICE.values() for c in re.findall(r"'([^']+)'\)", advice)}
    assert cited and cited <= headings, cited - headings
