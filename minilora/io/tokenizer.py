"""The tokenizer: text <-> token ids, special tokens, and the model's chat template.

The heavy lifting (byte-level BPE) is done by the Rust `tokenizers` library; this class adds what a chat model
needs around it: which ids are BOS/EOS/padding, and the Jinja chat template that turns a list of messages into
the exact text the model was fine-tuned on (for SmolLM2, ChatML: ``<|im_start|>user\\n…<|im_end|>``).

It can be built from a GGUF file's metadata (a GGUF carries no ``tokenizer.json``: only the vocabulary, the merge
list and the special ids) or from a Hugging Face ``tokenizer.json``, and saved so transformers can load it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from .atomic import write_text
from .gguf_check import GGUFError

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control (special), 4 user-defined, 5 unused, 6 byte.
CONTROL, USER_DEFINED = 3, 4

# How text is cut into words before BPE, by GGUF's `tokenizer.ggml.pre`. GPT-2's own regex is the default;
# some models first split every digit on its own (so "2021" is four tokens: arithmetic sees digits); Llama-3 and
# Qwen2 use a tiktoken-style regex (case-insensitive contractions, numbers in groups of up to 3 digits, or 1).
_DIGITS_FIRST = {"smollm", "starcoder", "refact", "deepseek-coder"}
_LLAMA3_WORDS = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_REGEX_SPLITS = {"llama-bpe": _LLAMA3_WORDS, "llama3": _LLAMA3_WORDS, "llama-v3": _LLAMA3_WORDS,
                 "qwen2": _LLAMA3_WORDS.replace(r"\p{N}{1,3}", r"\p{N}")}
_KNOWN_PRE = {"default", "gpt2", "gpt-2"} | _DIGITS_FIRST | set(_REGEX_SPLITS)


# the tokenizer keys of a GGUF's metadata, with the Python type each must have
_GGUF_TOKENIZER_TYPES = {"tokenizer.ggml.pre": str, "tokenizer.ggml.add_bos_token": bool,
                         "tokenizer.ggml.add_space_prefix": bool, "tokenizer.chat_template": str}
_GGUF_TOKEN_IDS = ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id")


def check_gguf_tokenizer(meta: dict, name: str) -> None:
    """Every tokenizer value of a GGUF's metadata of the right type and in range, or a GGUFError naming the key:
    a hostile or damaged file must not end in a TypeError from deep inside the tokenizers library."""
    def bad(key: str, why: str) -> GGUFError:
        return GGUFError(f"{name}: metadata {key!r} {why}; the file is damaged or not made by a GGUF converter")

    tokens, merges = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise bad("tokenizer.ggml.tokens", "must be an array of strings")
    if len(set(tokens)) != len(tokens):
        seen = set()
        dup = next(i for i, t in enumerate(tokens) if t in seen or seen.add(t))
        raise bad("tokenizer.ggml.tokens", f"holds {tokens[dup]!r} twice (again at index {dup})")
    if not isinstance(merges, list) or not all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges):
        raise bad("tokenizer.ggml.merges", "must be an array of strings of two tokens separated by one space")
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None and not (isinstance(types, list) and len(types) == len(tokens)
                                  and all(type(t) is int for t in types)):
        raise bad("tokenizer.ggml.token_type", f"must be an array of {len(tokens)} integers, one per token")
    for key, kind in _GGUF_TOKENIZER_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise bad(key, f"is {meta[key]!r}, not a {kind.__name__}")
    for key in _GGUF_TOKEN_IDS:
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None and not (type(value) is int and 0 <= value < len(tokens)):
            raise bad(f"tokenizer.ggml.{key}", f"is {value!r}, not a token id in [0, {len(tokens)})")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus special tokens and a chat template (a small subset of transformers' API)."""

    def __init__(self, backend: BackendTokenizer, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, chat_template: str | None = None,
                 add_bos_token: bool = False, model_max_length: int | None = None,
                 set_post_processor: bool = True):
        """``set_post_processor=False`` keeps the backend's own rule for adding BOS (a tokenizer.json has one)."""
        self.backend = backend
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token
        self.model_max_length = model_max_length
        self.padding_side = "right"
        for name, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{name}_token {token!r} is not in the vocabulary")
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        if set_post_processor:
            self._set_post_processor()

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, source, name: str = "GGUF metadata") -> "Tokenizer":
        """From a GGUF file path or its metadata dict (see `minilora.io.gguf.read_metadata`); ``name`` says where
        the metadata came from, for errors."""
        if isinstance(source, (str, os.PathLike)):
            from .gguf import open_gguf, read_metadata
            name = f"GGUF file {str(source)!r}"
            source = read_metadata(open_gguf(source))
        meta = source
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer model {kind!r} is not supported: minilora builds byte-level BPE "
                             "('gpt2') tokenizers from GGUF metadata; for others load the model's tokenizer.json "
                             "with Tokenizer.from_file")
        tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
        if not tokens or merges is None:
            raise ValueError("GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
        check_gguf_tokenizer(meta, name)
        vocab = {tok: i for i, tok in enumerate(tokens)}
        try:
            bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], dropout=None,
                             continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
        except Exception as e:  # the tokenizers library raises a bare Exception for a merge of an unknown token
            raise GGUFError(f"{name}: tokenizer.ggml.merges does not fit tokenizer.ggml.tokens ({e}); the file is "
                            "damaged") from None
        backend = BackendTokenizer(bpe)
        pre = meta.get("tokenizer.ggml.pre", "default")
        prefix_space = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space, use_regex=True)
        if pre in _DIGITS_FIRST:
            backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                             byte_level])
        elif pre in _REGEX_SPLITS:  # the regex does the word split; ByteLevel then only maps bytes to symbols
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(_REGEX_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            if pre not in _KNOWN_PRE:
                import warnings
                warnings.warn(f"GGUF pre-tokenizer {pre!r} is unknown to minilora; using GPT-2's word split, "
                              "which may cut some texts differently from the original tokenizer", stacklevel=2)
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        # Control tokens (<|im_start|> …) are matched whole and never split; user-defined ones too, but not special.
        types = meta.get("tokenizer.ggml.token_type") or []
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t, ty in zip(tokens, types) if ty == CONTROL])
        user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED]
        if user:
            backend.add_tokens(user)

        def token(key):
            i = meta.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        return cls(backend, bos_token=token("bos_token_id"), eos_token=token("eos_token_id"),
                   pad_token=token("padding_token_id"), unk_token=token("unknown_token_id"),
                   chat_template=meta.get("tokenizer.chat_template"),
                   add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)))

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike, tokenizer_config: str | os.PathLike | None = None,
                  ) -> "Tokenizer":
        """From a Hugging Face ``tokenizer.json`` (and, if given, its ``tokenizer_config.json``)."""
        path = Path(tokenizer_json)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not a valid tokenizer.json ({e})") from e
        cfg = {}
        if tokenizer_config is not None and Path(tokenizer_config).is_file():
            from .safetensors_dir import read_json
            cfg = read_json(Path(tokenizer_config))

        def token(name):
            t = cfg.get(name)
            return t.get("content") if isinstance(t, dict) else t

        template = cfg.get("chat_template")
        if isinstance(template, list):  # a list of named templates: use the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (path.parent / "chat_template.jinja").is_file():
            template = (path.parent / "chat_template.jinja").read_text(encoding="utf-8")
        max_len = cfg.get("model_max_length")
        return cls(backend, bos_token=token("bos_token"), eos_token=token("eos_token"), pad_token=token("pad_token"),
                   unk_token=token("unk_token"), chat_template=template,
                   add_bos_token=bool(cfg.get("add_bos_token", False)),
                   model_max_length=max_len if isinstance(max_len, int) and max_len < 10**12 else None,
                   set_post_processor=False)  # the tokenizer.json's post-processor already decides about BOS

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
        """From a directory holding ``tokenizer.json`` and optionally ``tokenizer_config.json``."""
        directory = Path(directory)
        return cls.from_file(directory / "tokenizer.json", directory / "tokenizer_config.json")

    def _set_post_processor(self):
        if self.add_bos_token and self.bos_token is not None:
            bos = (self.bos_token, self.bos_token_id)
            self.backend.post_processor = processors.TemplateProcessing(
                single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos])
        else:
            self.backend.post_processor = None

    # --- ids of the special tokens ----------------------------------------------------------------------------
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self.token_to_id(self.unk_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"pad={self.pad_token!r}, chat_template={'yes' if self.chat_template else 'no'})")

    # --- text <-> ids ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. ``add_special_tokens`` adds BOS where the model wants it (SmolLM2 does not)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (a list or a 1-D tensor)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            raise ValueError("decode expects one sequence of ids; use batch_decode for a batch")
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens: bool = False) -> list[str]:
        if hasattr(batch, "tolist"):
            batch = batch.tolist()
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, padding: bool = False,
                 return_tensors: str | None = None) -> dict:
        """transformers-style: {"input_ids", "attention_mask"} for one text or a batch (padding=True pads)."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t, add_special_tokens) for t in texts]
        return self._batch(ids, padding, None, return_tensors, single=isinstance(text, str))

    def _batch(self, ids: list[list[int]], padding, max_length: int | None, return_tensors, single: bool) -> dict:
        """{"input_ids", "attention_mask"} from token lists: padded (True/"longest", or "max_length") on
        ``padding_side``, as lists or (return_tensors="pt") tensors; ``single`` unwraps a batch of one."""
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding={padding!r}: use False, True/'longest' or 'max_length'")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: use None (lists) or 'pt' (torch tensors)")
        width = max((len(x) for x in ids), default=0)
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            width = max(width, max_length)
        if padding not in (False, "do_not_pad"):
            if self.pad_token_id is None:
                raise ValueError("padding needs a pad token: set tokenizer.pad_token (e.g. to the EOS token)")
            pad = [[self.pad_token_id] * (width - len(x)) for x in ids]
            mask = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
            if self.padding_side == "left":
                ids = [p + x for p, x in zip(pad, ids)]
                mask = [m[::-1] for m in mask]
            else:
                ids = [x + p for x, p in zip(ids, pad)]
        else:
            mask = [[1] * len(x) for x in ids]
        if return_tensors == "pt":
            import torch
            if len({len(x) for x in ids}) > 1:
                raise ValueError("texts have different lengths: pass padding=True to make one tensor")
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if single:
            return {"input_ids": ids[0], "attention_mask": mask[0]}
        return {"input_ids": ids, "attention_mask": mask}

    # --- chat template ---------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, tools: list | None = None, documents: list | None = None,
                            chat_template: str | None = None, add_generation_prompt: bool = False,
                            continue_final_message: bool | str = False, tokenize: bool = True,
                            padding: bool | str = False, truncation: bool = False, max_length: int | None = None,
                            return_tensors: str | None = None, return_dict: bool = True,
                            return_assistant_tokens_mask: bool = False, tokenizer_kwargs: dict | None = None,
                            **kwargs):
        """Render ``conversation`` ([{"role": "user", "content": "…"}, …], or a list of them) with the model's Jinja
        chat template — with transformers' (5.x) arguments and defaults, so code written for it runs unchanged.

        Defaults as in transformers: ``tokenize=True`` and ``return_dict=True`` give {"input_ids",
        "attention_mask"}; ``return_dict=False`` gives the ids alone (a (1, T) tensor with return_tensors="pt");
        ``tokenize=False`` gives the text. ``add_generation_prompt`` (default False) appends the header of an
        assistant turn, so the model's next tokens are its reply; ``continue_final_message`` leaves the last
        message open instead, so the model continues it. Extra keyword arguments reach the template.
        """
        template = chat_template or self.chat_template
        if not template:
            raise ValueError("this tokenizer has no chat template; set tokenizer.chat_template to a Jinja string")
        if add_generation_prompt and continue_final_message:
            raise ValueError("add_generation_prompt starts a new assistant turn and continue_final_message leaves "
                             "the last one open: pass one of them")
        if return_assistant_tokens_mask:
            raise ValueError("return_assistant_tokens_mask is not supported: mask the prompt with "
                             "minilora.train.build_examples (train_on_responses_only) instead")
        if kwargs.get("sanitize_control_tokens"):
            raise ValueError("sanitize_control_tokens is not supported by minilora's tokenizer")
        kwargs.pop("sanitize_control_tokens", None)
        unknown = sorted(set(tokenizer_kwargs or {}) - {"add_special_tokens"})
        if unknown:
            raise ValueError(f"tokenizer_kwargs {unknown} are not supported (only add_special_tokens)")
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) and all(
            isinstance(c, (list, tuple)) for c in conversation)
        conversations = list(conversation) if batched else [conversation]
        texts = [self._render(template, c, tools, documents, add_generation_prompt, continue_final_message, kwargs)
                 for c in conversations]
        if not tokenize:
            return texts if batched else texts[0]
        add_special = bool((tokenizer_kwargs or {}).get("add_special_tokens", False))
        ids = [self.encode(t, add_special_tokens=add_special) for t in texts]  # the template wrote the specials
        if truncation:
            limit = max_length or self.model_max_length
            if limit is None:
                raise ValueError("truncation=True needs max_length (or tokenizer.model_max_length)")
            ids = [x[:limit] for x in ids]
        out = self._batch(ids, padding, max_length, return_tensors, single=not batched and return_tensors is None)
        return out if return_dict else out["input_ids"]

    def _render(self, template: str, messages, tools, documents, add_generation_prompt: bool,
                continue_final_message: bool | str, extra: dict) -> str:
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a list of dicts with 'role' and 'content', e.g. "
                             "[{'role': 'user', 'content': 'Hello'}]")
        kwargs = dict(extra)
        if tools is not None:
            kwargs["tools"] = tools
        if documents is not None:
            kwargs["documents"] = documents
        from .chat_template import render  # sandboxed, with a time and an output size limit
        text = render(template, messages=list(messages), add_generation_prompt=add_generation_prompt,
                      bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                      pad_token=self.pad_token or "", unk_token=self.unk_token or "", **kwargs)
        if continue_final_message:
            key = continue_final_message if isinstance(continue_final_message, str) else "content"
            final = str(messages[-1].get(key, "")).strip() if messages else ""
            if not final or final not in text:
                raise ValueError("continue_final_message: the final message's text does not appear in the rendered "
                                 "conversation, so it cannot be left open")
            text = text[:text.rindex(final) + len(final)]  # cut the end-of-turn tokens after the final message
        return text

    # --- saving ----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> list[str]:
        """Write tokenizer.json and tokenizer_config.json (loadable by transformers' AutoTokenizer)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token,
            "pad_token": self.pad_token, "unk_token": self.unk_token,
            "add_bos_token": self.add_bos_token, "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length or 1_000_000_000_000_000_019_884_624_838_656,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        files = [directory / "tokenizer.json", directory / "tokenizer_config.json"]
        write_text(files[0], self.backend.to_str(pretty=False))
        write_text(files[1], json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return [str(f) for f in files]
