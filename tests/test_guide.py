"""docs/custom-structures.md is runnable: its Python blocks run in order as one session, its
`rtdetr-prune` commands run through the CLI, and its excerpts match the example files they quote.

Markers (an HTML comment on the line before a code block):
- ``<!-- excerpt: PATH -->``: the block is a verbatim part of PATH (which the session runs as a plugin);
- ``<!-- not run by the tests: WHY -->``: shown only (e.g. it needs a dataset).
"""

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
    """One namespace for all Python blocks, run from the repository root; rules registered are undone after."""
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    with rules.scoped():
        yield {"__name__": "guide"}
    mp.undo()


@pytest.mark.parametrize("lang,code,marker", list(_blocks()))
def test_guide_block(session, lang, code, marker):
    if marker.startswith("not run by the tests") or lang == "text":
        pytest.skip(marker or "example output")
    if marker.startswith("excerpt:"):
        path = ROOT / marker.split(":", 1)[1].strip()
        assert code in path.read_text(), f"the guide's excerpt drifted from {path.name}: copy it again"
    elif lang == "python":
        exec(compile(code, str(GUIDE), "exec"), session)  # noqa: S102 - the guide's own example code
    elif lang == "bash":
        for line in code.strip().splitlines():
            assert line.startswith("rtdetr-prune "), line
            assert main(shlex.split(line)[1:]) == 0, line
    else:
        pytest.fail(f"unknown code block language '{lang}'")


def test_guide_names_the_sections_check_refers_to():
    from rtdetr_prune.pruning.analysis.check import ADVICE

    headings = {h.strip() for h in re.findall(r"^#+ (.*)$", GUIDE.read_text(), re.M)}
    cited = {c for advice in ADVICE.values() for c in re.findall(r"'([^']+)'\)", advice)}
    assert cited and cited <= headings, cited - headings
