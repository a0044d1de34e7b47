"""Read an executed lesson notebook the way a careful reader would: does its prose follow its data?

Two checks (tests/test_lesson_prose.py runs them on every lesson, and on planted errors):

1. **Uncomputed figures.** A number with a unit (%, x, GiB, MB, ms, s, bits, tok/s, …) in a markdown cell must also
   appear in some cell's output (rounded to the precision the markdown gives), or be a cited constant on the
   lesson's allow-list (each with its source). Code spans, math and URLs in markdown are not prose and are skipped.
2. **Directions that contradict their number.** A sentence that carries a signed number (+41.8 ms, −3.2 GiB) and a
   direction word of `minilora.prose.WORDS` must use a word of the right sign: "(+41.8 ms) also saves time" is
   flagged. Sentences written by `minilora.prose.compare` ("41.8 ms slower (Δ +41.8 ms)") are checked the same way.
"""
from __future__ import annotations

import re

from minilora.prose import ANNOTATION, UNIT_KINDS, WORDS, direction

_UNITS = (r"%|x(?![\w])|×(?!\s*[\d(|])|GiB|MiB|KiB|GB/s|TB/s|GB|MB|KB|tok/s|tokens/s|ms|µs|s(?![\w])|"
          r"seconds?|minutes?|min(?![\w])|bits?(?![\w])|bytes(?![\w])")
FIGURE = re.compile(r"(?<![\w.,/])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s?(" + _UNITS + ")")
_NOT_PROSE = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\]\([^)]*\)|https?://\S+", re.S)
SIGNED = re.compile(r"(?<![\w.])([+\-−])(\d[\d,]*(?:\.\d+)?)\s?(" + "|".join(re.escape(u) for u in sorted(
    UNIT_KINDS, key=len, reverse=True)) + r")(?![\w/])")


def _unit(u: str) -> str:
    u = u.strip()
    return {"×": "x", "second": "s", "seconds": "s", "minute": "min", "minutes": "min", "bit": "bits",
            "tokens/s": "tok/s"}.get(u, u)


def cell_texts(nb) -> tuple[list[str], list[str]]:
    """(markdown sources, output texts) of a notebook: streams, text/plain results and errors."""
    markdown, outputs = [], []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            markdown.append(cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"]))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                outputs.append(_join(out.get("text", "")))
            elif "data" in out and "text/plain" in out["data"]:
                outputs.append(_join(out["data"]["text/plain"]))
    return markdown, outputs


def _join(text) -> str:
    return text if isinstance(text, str) else "".join(text)


def _figures(text: str):
    for m in FIGURE.finditer(text):
        whole, frac, unit = m.group(1), m.group(2) or "", m.group(3)
        yield float(whole.replace(",", "") + frac), len(frac) - 1 if frac else 0, _unit(unit), m.group(0)


def uncomputed_figures(nb, allowed: dict[str, str] | None = None) -> list[str]:
    """Figures in markdown that no output shows (at the markdown's precision) and that are not on `allowed`
    (figure text → its source)."""
    allowed = allowed or {}
    markdown, outputs = cell_texts(nb)
    printed: dict[str, list[float]] = {}
    for text in outputs:
        for value, _, unit, _ in _figures(text):
            printed.setdefault(unit, []).append(value)
    problems = []
    for md in markdown:
        prose = _NOT_PROSE.sub(" ", md)
        for value, decimals, unit, shown in _figures(prose):
            if shown.strip() in allowed:
                continue
            if not any(round(p, decimals) == value for p in printed.get(unit, [])):
                line = next((ln for ln in md.splitlines() if shown in ln), md[:80])
                problems.append(f"{shown!r} is in the prose but no cell printed it: {line.strip()[:120]}")
    return problems


_CLAUSE = re.compile(r"[^.;:!?\n]+(?:\.(?=\d)[^.;:!?\n]*)*")


def _words_in(text: str, kind: str):
    up, down = WORDS[kind]
    for word in sorted(up + down, key=len, reverse=True):
        for m in re.finditer(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
            yield m.start(), word


def wrong_directions(nb) -> list[str]:
    """Clauses whose direction word contradicts the sign of the number they carry."""
    markdown, outputs = cell_texts(nb)
    problems = []
    for text in markdown + outputs:
        for clause in _CLAUSE.findall(text):
            for m in list(ANNOTATION.finditer(clause)) or list(SIGNED.finditer(clause)):
                if m.re is ANNOTATION:
                    sign, unit, kind = m.group(1), m.group(3), m.group(4)
                    kind = kind or UNIT_KINDS.get(unit)
                    before = clause[:m.start()]  # compare() puts its word right before the annotation
                    found = list(_words_in(before, kind)) if kind else []
                    found = [max(found)] if found else []
                else:
                    sign, unit = m.group(1), m.group(3)
                    kind = UNIT_KINDS[unit]
                    found = [min(_words_in(clause[m.end():], kind), default=None)]  # the nearest word after it
                    found = [f for f in found if f is not None]
                for _, word in found:
                    want = 1 if sign == "+" else -1
                    if direction(word, kind) != want:
                        problems.append(f"{word!r} contradicts {sign}{m.group(2)} {unit}: {clause.strip()[:140]}")
    return problems
