"""The documentation stays true to the tree: README.md, docs/*.md and the results index.

Every relative Markdown link resolves (a file or folder, and a `#anchor` to a heading of the
target, slugged as GitHub does); every `make <target>` named in code resolves to a Makefile
target; every dotted `resflax.xxx` path in backticks imports (module prefix by importlib, the
rest as attributes); README.md stays a front door (at most 15,000 bytes, linking every docs
page); every file in experiments/results/ is linked from experiments/results/README.md.
Each failure names the file, line and the broken item.
"""

from __future__ import annotations

import importlib
import re
import warnings
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "experiments" / "results"
RESULTS_INDEX = RESULTS / "README.md"
PAGES = [README, *DOCS, RESULTS_INDEX]
README_LIMIT = 15_000

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
MAKE = re.compile(r"(?<![\w./-])make[ \t]+([a-z][\w-]*)")
DOTTED = re.compile(r"^(resflax(?:\.[A-Za-z_]\w*)+)")
TARGET = re.compile(r"^([A-Za-z0-9_][\w./-]*(?:[ \t]+[A-Za-z0-9_][\w./-]*)*)[ \t]*:(?!=)", re.M)


def _blank(match: re.Match) -> str:
    """The match with every character but newlines blanked: offsets and lines stay put."""
    return re.sub(r"[^\n]", " ", match.group(0))


def prose(text: str) -> str:
    """`text` without fenced code blocks and inline code (which hold no links)."""
    return INLINE.sub(_blank, FENCE.sub(_blank, text))


def code(text: str) -> list[tuple[int, str]]:
    """(offset, text) of every fenced block and inline code span."""
    spans = [(m.start(), m.group(0)) for m in FENCE.finditer(text)]
    rest = FENCE.sub(_blank, text)
    return spans + [(m.start(1), m.group(1)) for m in INLINE.finditer(rest)]


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub(_blank, path.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def links(path: Path) -> list[tuple[str, str]]:
    """(where, target) of every relative link in `path` (web and mail links left out)."""
    text = path.read_text()
    out = []
    for m in LINK.finditer(prose(text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        out.append((where(path, text, m.start()), target))
    return out


def resolve(page: Path, target: str) -> tuple[Path, str]:
    file, _, anchor = target.partition("#")
    return ((page.parent / file).resolve() if file else page.resolve()), anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    broken = []
    for at, target in links(page):
        path, anchor = resolve(page, target)
        if not path.exists():
            broken.append(f"{at}: link {target!r}: no file {path.relative_to(ROOT)}")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(
                f"{at}: link {target!r}: no heading #{anchor} in {path.relative_to(ROOT)}"
                f" (headings: {sorted(anchors(path)) if path.suffix == '.md' else 'none'})"
            )
    assert not broken, "broken links:\n" + "\n".join(broken)


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for m in TARGET.finditer(text) for t in m.group(1).split()}


def test_make_targets_exist():
    targets = makefile_targets()
    assert {"train", "test"} <= targets, f"Makefile targets: {sorted(targets)}"
    missing = []
    for page in PAGES:
        text = page.read_text()
        for offset, snippet in code(text):
            for m in MAKE.finditer(snippet):
                if m.group(1) not in targets:
                    at = where(page, text, offset + m.start())
                    missing.append(f"{at}: `make {m.group(1)}` is not a Makefile target")
    assert not missing, "\n".join(missing) + f"\n(targets: {sorted(targets)})"


def resolves(dotted: str) -> str | None:
    """None if `dotted` is an importable module, or a module plus attributes; else why not."""
    parts = dotted.split(".")
    module, error = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(parts), 0, -1):
            try:
                module = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError as e:
                error = e
                continue
            except Exception as e:  # an import that fails for another reason is broken too
                return f"importing {'.'.join(parts[:i])} raised {type(e).__name__}: {e}"
            break
    if module is None:
        return f"no module ({error})"
    obj = module
    for j, name in enumerate(parts[i:], start=i):
        if not hasattr(obj, name):
            return f"{'.'.join(parts[:j])} has no attribute {name!r}"
        obj = getattr(obj, name)
    return None


def test_resflax_paths_import():
    broken = []
    for page in [README, *DOCS, RESULTS_INDEX]:
        text = page.read_text()
        for offset, span in code(text):
            m = DOTTED.match(span)
            if m and (why := resolves(m.group(1))):
                broken.append(f"{where(page, text, offset)}: `{m.group(1)}`: {why}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (
        f"README.md is {size:,} bytes, over {README_LIMIT:,}: move to docs/"
    )
    text = README.read_text()
    for command in ("make train", "make test"):
        assert command in text, f"README.md no longer names `{command}`"
    linked = {resolve(README, t)[0] for _, t in links(README)}
    unlinked = [str(d.relative_to(ROOT)) for d in DOCS if d.resolve() not in linked]
    assert not unlinked, f"docs pages README.md does not link: {unlinked}"


def test_every_result_is_indexed():
    linked = {resolve(RESULTS_INDEX, t)[0] for _, t in links(RESULTS_INDEX)}
    files = sorted(
        p
        for p in RESULTS.rglob("*")
        if p.is_file()
        and p != RESULTS_INDEX
        and not any(part.startswith((".", "__")) for part in p.relative_to(RESULTS).parts)
    )
    unlinked = [str(p.relative_to(ROOT)) for p in files if p.resolve() not in linked]
    assert not unlinked, (
        f"files in experiments/results/ that {RESULTS_INDEX.relative_to(ROOT)} does not link "
        f"(add a line each: what it holds and the command that made it): {unlinked}"
    )
