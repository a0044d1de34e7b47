"""`Tokenizer.apply_chat_template` takes transformers' arguments and defaults (tokenize=True, return_dict=True,
add_generation_prompt=False), so code copied from a transformers or Unsloth notebook gets ids, not a string.
transformers' own tokenizer, loaded from the same files, is the reference."""
import pytest
import torch
from helpers.train import tiny_tokenizer

transformers = pytest.importorskip("transformers")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "March 5, 2021"}]
ANSWERED = CHAT + [{"role": "assistant", "content": "2021-03-05"}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    ours = tiny_tokenizer()
    ours.save_pretrained(d)
    return ours, transformers.AutoTokenizer.from_pretrained(d)


def plain(x):
    """BatchEncoding / dict / tensor → comparable Python values."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "keys"):
        return {k: plain(x[k]) for k in x.keys()}
    return x


@pytest.mark.parametrize("kw", [
    {}, dict(add_generation_prompt=True), dict(tokenize=False), dict(tokenize=False, add_generation_prompt=True),
    dict(return_dict=False), dict(return_tensors="pt"), dict(return_tensors="pt", return_dict=False),
    dict(tokenize=False, continue_final_message=True), dict(truncation=True, max_length=5),
    dict(padding="max_length", max_length=40, return_dict=True),
])
def test_same_result_as_transformers(pair, kw):
    ours, theirs = pair
    convo = ANSWERED if kw.get("continue_final_message") else CHAT
    assert plain(ours.apply_chat_template(convo, **kw)) == plain(theirs.apply_chat_template(convo, **kw))


@pytest.mark.parametrize("kw", [dict(return_dict=False), dict(tokenize=False), dict(padding=True),
                                dict(padding=True, return_tensors="pt")])
def test_batches_like_transformers(pair, kw):
    ours, theirs = pair
    assert plain(ours.apply_chat_template([CHAT, ANSWERED], **kw)) == \
        plain(theirs.apply_chat_template([CHAT, ANSWERED], **kw))


def test_the_default_is_ids_not_text(pair):
    out = pair[0].apply_chat_template(CHAT)
    assert not isinstance(out, str) and isinstance(out["input_ids"][0], int)


def test_contradictory_arguments_are_refused(pair):
    with pytest.raises(ValueError, match="one of them"):
        pair[0].apply_chat_template(ANSWERED, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ValueError, match="not supported"):
        pair[0].apply_chat_template(ANSWERED, return_assistant_tokens_mask=True)
