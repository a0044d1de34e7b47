import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex1_3
ex = exercise("ex1_3_response_masking")

USER, ASSISTANT = [1, 10], [1, 11]  # "<|im_start|>user\n" and "<|im_start|>assistant\n" as token ids


def test_find_subsequence():
    assert ex.find_subsequence([5, 1, 2, 7, 1, 2], [1, 2]) == 1
    assert ex.find_subsequence([5, 1, 2, 7, 1, 2], [1, 2], start=2) == 4
    assert ex.find_subsequence([5, 1, 2], [2, 5]) == -1


def test_one_turn_masks_the_prompt_and_keeps_the_answer():
    ids = USER + [20, 21, 2] + ASSISTANT + [30, 31, 2]
    assert ex.mask_labels(ids, ASSISTANT, USER) == [-100] * 7 + [30, 31, 2]


def test_two_turns_mask_the_second_question_too():
    ids = USER + [20, 2] + ASSISTANT + [30, 2] + USER + [21, 2] + ASSISTANT + [31, 2]
    want = [-100] * 6 + [30, 2] + [-100] * 6 + [31, 2]
    assert ex.mask_labels(ids, ASSISTANT, USER) == want


def test_without_an_instruction_marker_the_answer_runs_to_the_end():
    ids = USER + [20, 21] + ASSISTANT + [30, 31, 2]
    assert ex.mask_labels(ids, ASSISTANT) == [-100] * 6 + [30, 31, 2]  # instruction_marker defaults to None
    assert ex.mask_labels(ids, ASSISTANT, None) == [-100] * 6 + [30, 31, 2]


def test_missing_marker_is_an_error():
    with pytest.raises(ValueError, match="response marker"):
        ex.mask_labels(USER + [20, 21], ASSISTANT, USER)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(20, 99), min_size=1, max_size=6),
                          st.lists(st.integers(20, 99), min_size=1, max_size=6)), min_size=1, max_size=3))
def test_exactly_the_answer_tokens_are_kept(turns):
    ids, want = [], []
    for question, answer in turns:
        ids += USER + question + ASSISTANT + answer
        want += [-100] * (len(USER) + len(question) + len(ASSISTANT)) + answer
    assert ex.mask_labels(ids, ASSISTANT, USER) == want
