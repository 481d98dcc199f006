"""The demo models' corpus: the Python documentation sources (PSF licence), as plain English-ish text.

Debian's `python3.11-doc` package installs the reStructuredText sources under `_sources`. Markup that no
reader would type (roles, labels, index entries, heading underlines) is reduced to the words it shows, so the
models learn prose and code rather than Sphinx syntax. Documents are split into train and held-out sets by a
hash of their path, so the split is the same on every machine and independent of file order.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path

DEFAULT_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
HELDOUT_PERCENT = 5

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]*)`")  # :func:`~os.path.join` -> os.path.join
_TARGET = re.compile(r"^(.*?)\s*<[^<>]+>$")  # :ref:`the text <target>` -> the text
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")  # `text <url>`_ -> text
_UNDERLINE = re.compile(r"^([=\-~^*#+\"'`.:_])\1{2,}\s*$")
_DROPPED_DIRECTIVES = ("index", "toctree", "highlight", "sectionauthor", "moduleauthor", "testsetup", "testcleanup")
_KEPT_DIRECTIVES = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}:"}


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1)
    target = _TARGET.match(text)
    if target:
        text = target.group(1)
    return text.lstrip("~!")


def clean_rst(text: str) -> str:
    """reStructuredText -> the text a reader sees, with paragraphs joined onto one line each."""
    out: list[str] = []
    skipping_indent: int | None = None  # inside a dropped directive's indented body
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(" ".join(paragraph))
            paragraph.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        indent = len(line) - len(line.lstrip())
        if skipping_indent is not None:
            if not line or indent > skipping_indent:
                continue
            skipping_indent = None
        stripped = line.strip()
        if _UNDERLINE.match(stripped) or stripped == "::":  # heading rules; a bare "::" only opens code
            continue
        if stripped.startswith(".. "):
            flush()
            directive = re.match(r"\.\. ([a-z-]+)::\s*(.*)", stripped)
            if directive is None or directive.group(1) in _DROPPED_DIRECTIVES:
                skipping_indent = indent  # labels, comments, index entries: drop them and their bodies
                continue
            name, argument = directive.groups()
            if name in _KEPT_DIRECTIVES:
                out.append(_KEPT_DIRECTIVES[name].format(argument))
            elif argument:
                out.append(argument)  # function/class signatures, note titles
            continue
        line = _LINK.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(_role_text, line)))
        if not stripped:
            flush()
            if out and out[-1] != "":
                out.append("")
        elif indent == 0 and not re.match(r"([*+-]|\d+\.|#\.)\s", stripped) and not stripped.startswith(">>>"):
            paragraph.append(line.strip().rstrip(":") + ":" if line.endswith("::") else line.strip())
        else:
            flush()
            out.append(line)
    flush()
    return "\n".join(out).strip() + "\n"


def documents(sources: Path = DEFAULT_SOURCES) -> Iterator[tuple[str, str]]:
    """(relative path, cleaned text) for every document, sorted by path."""
    if not sources.is_dir():
        raise SystemExit(f"error: {sources} not found; install Debian's python3.11-doc package")
    for path in sorted(sources.rglob("*.txt")):
        text = clean_rst(path.read_text(encoding="utf-8", errors="replace"))
        if len(text) > 200:  # skip stubs (contents pages, empty includes)
            yield str(path.relative_to(sources)), text


def is_heldout(relative_path: str) -> bool:
    return zlib.crc32(relative_path.encode()) % 100 < HELDOUT_PERCENT


def split(sources: Path = DEFAULT_SOURCES) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts)."""
    train: list[str] = []
    heldout: list[str] = []
    for relative, text in documents(sources):
        (heldout if is_heldout(relative) else train).append(text)
    return train, heldout


SAMPLE_CHARS = 100_000


def heldout_sample(sources: Path = DEFAULT_SOURCES) -> str:
    """Whole held-out documents, in path order, up to ~100 kB: the fixed sample shipped for tests/benchmarks."""
    out: list[str] = []
    size = 0
    for doc in split(sources)[1]:
        if out and size + len(doc) > SAMPLE_CHARS:
            break
        out.append(doc)
        size += len(doc)
    return "\n\n".join(out)


if __name__ == "__main__":
    import sys

    # python -m training.corpus training/heldout-sample.txt
    Path(sys.argv[1]).write_text(heldout_sample(), encoding="utf-8")
