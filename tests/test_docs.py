"""Citations of docs/PROTOCOLS.md in code, tests, the AGI script and the dialplan.

Every mention of ``PROTOCOLS.md`` must read ``docs/PROTOCOLS.md §N[.M]`` (more sections
may follow: ``§2.1, §2.5`` or ``§1.5 and §5``), and every cited section must exist as a
numbered heading (``## N. Title`` or ``### N.M Title``) in docs/PROTOCOLS.md.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PROTOCOLS.md"
SCANNED = ("audiosocket_gw", "agi", "dialplan", "tests")
SUFFIXES = {".py", ".conf", ".toml", ".md", ".txt", ".cfg", ".sh"}

_HEADING = re.compile(r"^#{2,4}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", re.MULTILINE)
_MENTION = re.compile(r"(\S*)PROTOCOLS\.md")
_SECTIONS = re.compile(r"[ \t]*§(\d+(?:\.\d+)*)((?:(?:,[ \t]*|[ \t]+and[ \t]+)§\d+(?:\.\d+)*)*)")
_MORE = re.compile(r"§(\d+(?:\.\d+)*)")


def doc_sections(text: str) -> set[str]:
    return set(_HEADING.findall(text))


def citations(text: str) -> list[tuple[int, str, list[str]]]:
    """``(line, problem, sections)`` for each mention of PROTOCOLS.md in ``text``.

    ``problem`` is "" for a well-formed citation, else what is wrong with it.
    """
    out: list[tuple[int, str, list[str]]] = []
    for m in _MENTION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        prefix = m.group(1)
        # Punctuation may open the citation ("(docs/..."); no other directory may.
        if prefix.lstrip("`'\"([*") != "docs/":
            out.append((line, f"cites {prefix}PROTOCOLS.md: write docs/PROTOCOLS.md", []))
            continue
        sec = _SECTIONS.match(text, m.end())
        if sec is None:
            out.append((line, "no section: write docs/PROTOCOLS.md §N or §N.M", []))
            continue
        out.append((line, "", [sec.group(1), *_MORE.findall(sec.group(2))]))
    return out


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts:
                files.append(p)
    return files


def problems() -> list[str]:
    sections = doc_sections(DOC.read_text(encoding="utf-8"))
    found = []
    for path in scanned_files():
        if path == Path(__file__).resolve():
            continue  # this file talks about citations without making any
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT)
        for line, problem, cited in citations(text):
            if problem:
                found.append(f"{rel}:{line}: {problem}")
            for s in cited:
                if s not in sections:
                    found.append(f"{rel}:{line}: §{s} is not a heading in docs/PROTOCOLS.md")
    return found


def test_every_citation_names_an_existing_section():
    assert problems() == []


def test_the_code_cites_the_document():
    """The check above is not vacuous: the package really cites sections."""
    cited = [c for p in scanned_files() if p != Path(__file__).resolve()
             for c in citations(p.read_text(encoding="utf-8", errors="replace"))]
    assert len(cited) >= 25


def test_doc_headings_are_numbered_and_unique():
    text = DOC.read_text(encoding="utf-8")
    numbers = _HEADING.findall(text)
    assert len(numbers) == len(set(numbers)), "a section number is used twice"
    for n in ("1", "1.1", "1.3", "1.7", "2", "2.7", "3", "5.3", "7", "8", "9"):
        assert n in numbers


def test_checker_catches_bad_citations():
    sections = doc_sections("## 1. A\n### 1.3 Hangup\n## 2. B\n")
    assert sections == {"1", "1.3", "2"}
    assert citations("see docs/PROTOCOLS.md §1.3.") == [(1, "", ["1.3"])]
    assert citations("(docs/PROTOCOLS.md §1.3, §2 and §1)") == [(1, "", ["1.3", "2", "1"])]
    assert citations("x\n(docs/PROTOCOLS.md §1)") == [(2, "", ["1"])]
    [(_, problem, _)] = citations("see PROTOCOLS.md §1.3")
    assert "docs/PROTOCOLS.md" in problem
    [(_, problem, _)] = citations("see other/PROTOCOLS.md §1.3")
    assert problem
    [(_, problem, _)] = citations("see docs/PROTOCOLS.md section 2b")
    assert "no section" in problem
    [(_, _, cited)] = citations("docs/PROTOCOLS.md §4.9")
    assert cited == ["4.9"] and "4.9" not in sections
