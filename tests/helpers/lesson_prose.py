"""Read an executed lesson notebook the way a careful reader would: does its prose follow its data?

Two checks (tests/test_lesson_prose.py runs them on every lesson, and on planted errors):

1. **Uncomputed figures.** A number with a unit (%, x, GiB, MB, ms, s, bits, tok/s, …) in a markdown cell must also
   appear in some cell's output (rounded to the precision the markdown gives), or be a cited constant on the
   lesson's allow-list (each with its source). Code spans, math and URLs in markdown are not prose and are skipped.
2. **Directions that contradict their number.** A sentence that carries a signed number (+41.8 ms, −3.2 GiB) and a
   direction word of `minilora.prose.WORDS` must use a word of the right sign: "(+41.8 ms) also saves time" is
   flagged. Sentences written by `minilora.prose.compare` ("41.8 ms slower (Δ +41.8 ms)") are checked the same way.
3. **Interpretations without a check.** A sentence that interprets a measurement must rest on a `claim()` of the
   lesson (`minilora.prose.claim`: the sentence is printed with its numbers and the lesson fails when they
   contradict it). Flagged: (a) a sentence of markdown or of printed output with an interpretive verb ("needs",
   "costs", "saves", "fits", "4x smaller") and a figure or a count ("8 GPUs", "six decades") that no claim of the
   lesson states, unless it names its source (a README, a paper, "by definition"); (b) anywhere, also in the
   comments of library source the lesson shows, a verdict word ("memorizes", "ruins", "costs time") that no claim of
   the lesson uses. Counts in markdown ("40 steps", "six decades") must also be printed, like any figure (check 1).
"""
from __future__ import annotations

import re

from minilora.prose import ANNOTATION, CLAIM_METADATA, UNIT_KINDS, WORDS, direction
from minilora.show import SOURCE_METADATA

_UNITS = (r"%|x(?![\w])|×(?!\s*[\d(|])|GiB|MiB|KiB|GB/s|TB/s|GB|MB|KB|tok/s|tokens/s|ms|µs|s(?![\w])|"
          r"seconds?|minutes?|min(?![\w])|bits?(?![\w])|bytes(?![\w])")
# Counted things: a number of them is a measurement or a setting the lesson must show, as digits or as a word.
COUNT_UNITS = r"(?:steps?|GPUs?|cards?|decades?|layers?|sequences?|epochs?)(?![\w-])"
# ("one" is left out: "that one layer", "one layer at a time" name a thing, not a count)
NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                           "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
                                           .split()) if i > 1}
FIGURE = re.compile(r"(?<![\w.,/])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s?(" + _UNITS + ")")
COUNT = re.compile(r"(?<![\w.,/-])(\d{1,3}(?:,\d{3})+|\d+|" + "|".join(NUMBER_WORDS) + r")\s+(?-i:[a-z][a-z-]*\s+)?("
                   + COUNT_UNITS + ")", re.I)
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
            markdown.append(_join(cell["source"]))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                outputs.append(_join(out.get("text", "")))
            elif "data" in out and "text/plain" in out["data"]:
                outputs.append(_join(out["data"]["text/plain"]))
    return markdown, outputs


def output_kinds(nb) -> dict[str, list]:
    """The outputs sorted by who wrote them: ``claims`` (records of minilora.prose.claim), ``source`` (library code
    shown by minilora.show.show) and ``printed`` (everything else a cell printed or displayed)."""
    kinds: dict[str, list] = {"claims": [], "source": [], "printed": []}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            meta = out.get("metadata") or {}
            if CLAIM_METADATA in meta:
                kinds["claims"].append(meta[CLAIM_METADATA])
            elif out.get("output_type") == "stream":
                kinds["printed"].append(_join(out.get("text", "")))
            elif "data" in out and "text/plain" in out["data"]:
                text = _join(out["data"]["text/plain"])
                kinds["source" if SOURCE_METADATA in meta else "printed"].append(text)
    return kinds


def _join(text) -> str:
    return text if isinstance(text, str) else "".join(text)


def _figures(text: str, counts: bool = True):
    """(value, decimals, unit, text) of every figure with a unit, and (if `counts`) every count of things."""
    for m in FIGURE.finditer(text):
        whole, frac, unit = m.group(1), m.group(2) or "", m.group(3)
        yield float(whole.replace(",", "") + frac), len(frac) - 1 if frac else 0, _unit(unit), m.group(0)
    if counts:
        for m in COUNT.finditer(text):
            number = m.group(1).lower()
            if number in NUMBER_WORDS and m.group(2).lower().startswith("step"):
                continue  # "in three steps" names the parts of a procedure; a run's steps are written in digits
            value = NUMBER_WORDS[number] if number in NUMBER_WORDS else float(number.replace(",", ""))
            yield float(value), 0, m.group(2).lower().rstrip("s"), m.group(0)


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


# Words that turn a number into a verdict about it. A comparative ("4x smaller") counts when a ratio precedes it.
# (third person only: "save the adapter", "you need" are instructions, "X saves 3 GiB" is a verdict)
INTERPRETIVE = re.compile(r"(?<![\w-])(?:memori[sz]\w*|ruins|ruined|needs|needed|costs|pays|saves|wins|beats|"
                          r"fits|\d+(?:\.\d+)?\s?[x×]\s+(?:smaller|larger|faster|slower|less|more|cheaper))(?![\w-])",
                          re.I)
# Verdicts that need a claim even without a number beside them (the stem a claim must also use).
VERDICTS = {"memoriz": re.compile(r"memori[sz]", re.I), "ruin": re.compile(r"(?<![\w])ruin", re.I),
            "cost": re.compile(r"(?<![\w])costs? (?:time|memory)", re.I),
            "the number of": re.compile(r"(?:multipl\w+ by|grows? with|scales? with) the number of", re.I)}
ATTRIBUTION = re.compile(r"README|paper|claims?\b|publishe|promises|advertis|according to|by definition|cites?\b",
                         re.I)
# a sentence ends at . ! ? followed by a space or the end (not in "README.md", "e.g.", "0.98"), or at a line break
_SENTENCE = re.compile(r"(?:[^.!?\n]|[.!?](?=[^\s\n]))+[.!?]?")
_QUOTED = re.compile(r"“[^”]*”|\"[^\"\n]*\"")  # a quotation is a citation, not the lesson's own interpretation


def _prose(markdown: str) -> str:
    """A markdown cell as sentences: no code, math or links; wrapped lines joined (list items and table rows stay
    on their own lines)."""
    text = _NOT_PROSE.sub(" ", markdown)
    return re.sub(r"(?<!\n)\n(?!\n|\s*(?:[-*|#>]|\d+\.)\s)", " ", text)


def _claimed_numbers(claims) -> tuple[dict[str, list[float]], list[float]]:
    """Figures the claims state (unit -> values, from their sentences) and the raw numbers of their data."""
    stated: dict[str, list[float]] = {}
    data = []
    for record in claims:
        for value, _, unit, _ in _figures(record["text"]):
            stated.setdefault(unit, []).append(value)
        for value in record.get("data", {}).values():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    data.append(float(v))
    return stated, data


def _backed(value: float, decimals: int, unit: str, claimed) -> bool:
    """A figure is backed when a claim's sentence states it with the same unit, or (for a figure precise enough
    not to match by chance: one with decimals) when a claim's data holds it."""
    stated, data = claimed
    if any(round(c, decimals) == value for c in stated.get(unit, [])):
        return True
    return decimals > 0 and any(round(abs(c), decimals) == value for c in data)


def unbacked_interpretations(nb) -> list[str]:
    """Sentences that interpret a measurement without a claim() behind them (see check 3 of the module doc)."""
    kinds = output_kinds(nb)
    markdown, _ = cell_texts(nb)
    claimed = _claimed_numbers(kinds["claims"])
    claim_text = " ".join(record["text"] for record in kinds["claims"])
    problems = []
    for where, texts in (("markdown", [_QUOTED.sub(" ", _prose(md)) for md in markdown]),
                         ("output", kinds["printed"])):
        for text in texts:
            for sentence in _SENTENCE.findall(text):
                if not INTERPRETIVE.search(sentence) or ANNOTATION.search(sentence) or ATTRIBUTION.search(sentence):
                    continue
                loose = [shown for value, decimals, unit, shown in _figures(sentence)
                         if not _backed(value, decimals, unit, claimed)]
                if loose:
                    problems.append(f"{where}: {', '.join(repr(x) for x in dict.fromkeys(loose))} interpreted "
                                    f"without a claim(): {sentence.strip()[:140]}")
    for where, texts in (("markdown", [_prose(md) for md in markdown]), ("output", kinds["printed"]),
                         ("shown source", kinds["source"])):
        for text in texts:
            for sentence in _SENTENCE.findall(text):
                for stem, pattern in VERDICTS.items():
                    if pattern.search(sentence) and not pattern.search(claim_text) \
                            and not ATTRIBUTION.search(sentence):
                        problems.append(f"{where}: the verdict {stem!r} rests on no claim() of the lesson: "
                                        f"{sentence.strip()[:140]}")
    return problems
