"""The prose of every executed lesson follows its data (see tests/helpers/lesson_prose.py for the three checks), and the
checks really catch what they look for: planted wrong directions, uncomputed figures and unchecked interpretations
(the nine sentences of tests/helpers/lesson_prose_planted.py) fail; their corrected versions pass."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers.lesson_prose import unbacked_interpretations, uncomputed_figures, wrong_directions
from helpers.lesson_prose_planted import CASES
from helpers.lesson_runner import execute_lesson, lesson_files

from minilora.prose import ClaimFailed, cite, claim, compare, ratio

# Figures a lesson's prose may state without computing them: each a constant with its source.
CITED = {
    "*": {
        "2 bytes": "the width of bf16 / fp16 (IEEE 754 binary16, bfloat16): 16 bits",
        "4 bytes": "the width of float32",
        "8 bytes": "two float32 numbers (AdamW's two moments kept in fp32)",
        "8 bits": "one byte",
        "16 bits": "the width of bf16 / fp16",
    },
    "week1_big_picture": {
        "70%": "Unsloth README: “70% less memory” (github.com/unslothai/unsloth, README.md)",
        "80%": "Unsloth README: “70-80% less VRAM” (github.com/unslothai/unsloth, README.md)",
        "5x": "Unsloth README: “2-5x faster” (github.com/unslothai/unsloth, README.md)",
        "2x": "Unsloth README: “2x faster” (github.com/unslothai/unsloth, README.md)",
    },
    "week3_nf4": {
        "5 bits": "a hypothetical in the journal question, not a measurement",
        "0.5 bits": "32 bits of float32 absmax / 64 values per block: the definition of the format",
        "0.127 bits": "8/64 + 32/(64·256): QLoRA paper (Dettmers et al. 2023, section 3, Double Quantization)",
    },
    "week5_saving": {
        "34 bytes": "GGUF's Q8_0 block layout (ggml block_q8_0): 32 int8 codes + one fp16 scale, by definition",
    },
    "week4_memory": {
        "80 GiB": "the memory of an 80 GB A100/H100, the card size the allocator example talks about",
        "2x": "Unsloth README: “2x faster” (github.com/unslothai/unsloth, README.md)",
        "70%": "Unsloth README: “70% less memory” (github.com/unslothai/unsloth, README.md)",
    },
    "week5_capstone": {
        "2x": "Unsloth README: “2x faster” (github.com/unslothai/unsloth, README.md)",
        "70%": "Unsloth README: “70% less memory” (github.com/unslothai/unsloth, README.md)",
    },
}
LESSONS = lesson_files()


def _notebook(path):
    result = execute_lesson(path)
    return json.loads(result.notebook_path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_prose_follows_its_data(path):
    nb = _notebook(path)
    allowed = {**CITED["*"], **CITED.get(path.stem, {})}
    problems = uncomputed_figures(nb, allowed) + wrong_directions(nb) + unbacked_interpretations(nb)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def _all_checks(nb, allowed) -> list[str]:
    return uncomputed_figures(nb, allowed) + wrong_directions(nb) + unbacked_interpretations(nb)


@pytest.mark.parametrize("name", list(CASES))
def test_each_planted_sentence_is_flagged_and_its_fix_is_not(name):
    wrong, fixed, allowed = CASES[name]
    assert _all_checks(wrong, allowed), f"the planted sentence of {name!r} passed the checks"
    assert _all_checks(fixed, allowed) == [], f"the corrected {name!r} was flagged"


# --- the checks catch what they look for ---------------------------------------------------------------------------
def _synthetic(markdown: list[str], outputs: list[str]) -> dict:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": m} for m in markdown]
    cells += [{"cell_type": "code", "metadata": {}, "source": "print(...)", "execution_count": 1,
               "outputs": [{"output_type": "stream", "name": "stdout", "text": o}]} for o in outputs]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_planted_errors_are_flagged():
    """A notebook with a sentence whose word contradicts its sign, another generated the wrong way round, and a
    figure in prose that no cell computed: every one is reported."""
    nb = _synthetic(
        markdown=["The fused kernel keeps 0.875 GiB out of memory per layer.",
                  "Measured below: the step takes 120.0 ms."],
        outputs=["step 120.0 ms\nthe fused loss (+41.8 ms) also saves time\n",
                 "fused loss: 41.8 ms faster (Δ +41.8 ms)\n"])
    figures, directions = uncomputed_figures(nb), wrong_directions(nb)
    assert len(figures) == 1 and "0.875 GiB" in figures[0]  # 120.0 ms was printed: not flagged
    assert len(directions) == 2
    assert any("'saves'" in d and "+41.8" in d for d in directions)
    assert any("'faster'" in d and "+41.8" in d for d in directions)


def test_a_truthful_notebook_passes():
    nb = _synthetic(
        markdown=["Below, the fused loss is compared with the eager one (about 41.8 ms apart)."],
        outputs=[f"fused loss: {compare(41.8, 'ms')}\noffload: {compare(-32.9, 'ms', more='costs time')}\n",
                 f"peak {compare(-1.25, 'GiB', fmt='.2f')}; throughput {ratio(210, 100, kind='throughput')}\n"])
    assert uncomputed_figures(nb) == [] and wrong_directions(nb) == []


def test_allow_list_admits_only_what_it_names():
    nb = _synthetic(markdown=["Unsloth claims 70% less memory and 2x the speed."], outputs=["nothing\n"])
    assert len(uncomputed_figures(nb)) == 2
    assert uncomputed_figures(nb, {"70%": "Unsloth README", "2x": "Unsloth README"}) == []


# --- the wording helper ----------------------------------------------------------------------------------------------
def test_compare_picks_the_word_from_the_sign():
    assert compare(41.8, "ms") == "41.8 ms slower (Δ +41.8 ms)"
    assert compare(-41.8, "ms") == "41.8 ms faster (Δ −41.8 ms)"
    assert compare(-0.01, "ms") == "no different (Δ +0.0 ms)"
    assert compare(3.0, "tok/s").startswith("3.0 tok/s faster")
    assert compare(-2.5, "GiB", less="saves") == "2.5 GiB saves (Δ −2.5 GiB)"
    assert compare(12.0, "%", kind="memory") == "12.0% more (Δ +12.0%, memory)"
    assert ratio(50, 100, kind="time").startswith("2.00x faster")
    assert cite("2-5x faster", "Unsloth README").startswith("“2-5x faster”")


def test_compare_refuses_what_it_cannot_check():
    with pytest.raises(ValueError, match="kind="):
        compare(1.0, "%")  # is 1% more good or bad? the unit alone does not say
    with pytest.raises(ValueError, match="more= must be one of"):
        compare(1.0, "ms", more="faster")  # +ms is never faster
    with pytest.raises(TypeError):
        compare(float("nan"), "ms")


# --- claims that run ---------------------------------------------------------------------------------------------
def test_claim_prints_the_sentence_with_its_numbers(capsys):
    text = claim("the loss falls from {first:.3f} to {last:.3f}", True, first=4.5583, last=3.4171)
    assert text == "the loss falls from 4.558 to 3.417"
    assert capsys.readouterr().out == "the loss falls from 4.558 to 3.417  [first=4.558, last=3.417]\n"


def test_a_false_claim_stops_the_lesson_with_its_numbers():
    with pytest.raises(ClaimFailed, match=r"memorizes.*last=3.417"):
        claim("the model memorizes the sequences (loss {last:.3f})", 3.417 < 0.1, last=3.417)


def test_claim_refuses_a_condition_that_is_not_a_comparison():
    import torch
    with pytest.raises(TypeError, match="bool condition"):
        claim("faster", 1.7)  # a number would silently mean "nonzero"
    assert claim("smaller", torch.tensor(1.0) < 2) == "smaller"  # a 0-d tensor comparison is read with .item()
    with pytest.raises(KeyError, match="no such keyword"):
        claim("{missing} GPUs", True)


def test_in_a_notebook_a_claim_is_marked_for_the_prose_check(monkeypatch):
    """The metadata claim() attaches in a kernel is what lets check 3 tell a checked sentence from a printed one."""
    import IPython.display

    import minilora.show
    from minilora.prose import CLAIM_METADATA
    shown = []
    monkeypatch.setattr(minilora.show, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **kw: shown.append((a, kw)))
    claim("{n} decades", True, n=7)
    (args, kwargs), = shown
    assert args[0] == {"text/plain": "7 decades  [n=7]"} and kwargs["raw"] is True
    assert kwargs["metadata"][CLAIM_METADATA] == {"text": "7 decades", "data": {"n": 7}}
