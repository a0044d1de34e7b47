"""Exercise 1.3 — reference solution."""

IGNORE_INDEX = -100


def find_subsequence(ids, marker, start=0):
    n = len(marker)
    for i in range(start, len(ids) - n + 1):
        if ids[i:i + n] == marker:
            return i
    return -1


def mask_labels(input_ids, response_marker, instruction_marker=None):
    labels = [IGNORE_INDEX] * len(input_ids)
    pos = find_subsequence(input_ids, response_marker)
    if pos < 0:
        raise ValueError("the response marker does not occur in the example: every label would be masked")
    while pos >= 0:
        start = pos + len(response_marker)  # the answer begins after the marker
        end = find_subsequence(input_ids, instruction_marker, start) if instruction_marker else -1
        end = len(input_ids) if end < 0 else end
        labels[start:end] = input_ids[start:end]
        pos = find_subsequence(input_ids, response_marker, end)
    return labels
