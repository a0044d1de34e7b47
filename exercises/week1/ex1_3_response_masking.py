"""Exercise 1.3 — response-only training: mask the prompt so the loss only teaches the answer.

Read lessons/week1_big_picture.py first (the "text → tokens → masked labels" cells). Replace each
`raise NotImplementedError(...)` with your code, then run `pytest -m ex1_3` until it is green.
"""

IGNORE_INDEX = -100


def find_subsequence(ids: list[int], marker: list[int], start: int = 0) -> int:
    """Index of the first occurrence of the token list ``marker`` inside ``ids`` at or after ``start``; -1 if absent.

    Example: find_subsequence([5, 1, 2, 7, 1, 2], [1, 2], start=2) == 4.
    """
    raise NotImplementedError("Exercise 1.3: find_subsequence — see lessons/week1_big_picture.py")


def mask_labels(input_ids: list[int], response_marker: list[int],
                instruction_marker: list[int] | None = None) -> list[int]:
    """Labels for ``input_ids`` (same length): IGNORE_INDEX (-100) on every prompt token, the token id itself on
    every answer token.

    An answer starts right AFTER each occurrence of ``response_marker`` (e.g. the ids of "<|im_start|>assistant\\n")
    and runs until the next ``instruction_marker`` (e.g. "<|im_start|>user\\n"), which is masked again, or to the
    end. Markers themselves are prompt (masked). If ``response_marker`` never occurs, raise ValueError whose
    message contains "response marker": masking every label silently would train on nothing.
    """
    raise NotImplementedError("Exercise 1.3: mask_labels — see lessons/week1_big_picture.py")
