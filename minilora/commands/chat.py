"""`minilora chat`: talk to a model — the bundled SmolLM2, a saved fine-tune (adapter or merged), or a GGUF file.

Each turn is rendered with the model's chat template (the same text format it was fine-tuned on) and answered by
`generate` with a KV cache, streaming tokens as they come. Type /reset to forget the conversation, /quit to leave.
"""
from __future__ import annotations

import argparse
import sys

from .arguments import UsageError, finite_float, given, positive_int, seed, track_given


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("chat", help="chat with a base model or a saved fine-tune",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    track_given(p)
    p.add_argument("--model_name", default="smollm2",
                   help="'smollm2' (bundled), a LoRA adapter directory (its base is loaded first), a merged model "
                        "directory, or a .gguf file (default %(default)s)")
    p.add_argument("--load_in_4bit", action="store_true", help="keep the weights in NF4 (slower on a CPU)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit (no interactive loop)")
    p.add_argument("--system", default=None, help="a system message that opens the conversation")
    p.add_argument("--max_new_tokens", type=positive_int, default=256,
                   help="longest reply in tokens (default %(default)s)")
    p.add_argument("--temperature", type=finite_float(0, low_inclusive=True), default=0.0,
                   help="0 = greedy (always the most likely token); higher = more varied (default %(default)s)")
    p.add_argument("--top_p", type=finite_float(0, low_inclusive=False, high=1), default=1.0,
                   help="sample only from the smallest set of tokens holding this much probability (default 1)")
    p.add_argument("--seed", type=seed, default=None, help="seed for sampling (temperature > 0)")
    p.set_defaults(run=run)
    return p


def reply(model, tokenizer, messages, args, stream=None) -> str:
    from ..train.inference import dense_weights
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=False)
    ids = ids.to(next(model.parameters()).device)
    eos = [t for t in (tokenizer.eos_token_id, tokenizer.token_to_id("<|im_end|>")) if t is not None]
    pieces = []

    def on_token(tok):
        t = int(tok[0])
        if t in eos:
            return
        pieces.append(t)
        if stream is not None:  # print the new text as it arrives (decode all so far: BPE pieces join cleanly)
            text = tokenizer.decode(pieces, skip_special_tokens=True)
            stream.write(text[len(on_token.shown):])
            stream.flush()
            on_token.shown = text

    on_token.shown = ""
    with dense_weights(model):
        model.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       eos_token_id=eos, seed=args.seed, on_token=on_token)
    return tokenizer.decode(pieces, skip_special_tokens=True)


def check_args(args) -> None:
    """Combinations the argparse types cannot see, refused before the model loads (UsageError, exit 2)."""
    from .train import check_model_name
    check_model_name(args.model_name)
    if args.temperature == 0:
        typed = [f"--{n}" for n in ("top_p", "seed") if given(args, n)]
        if typed:
            raise UsageError(f"{' and '.join(typed)} only matter{'s' if len(typed) == 1 else ''} when sampling, but "
                             "--temperature 0 decodes greedily "
                             "— add --temperature > 0 (e.g. 0.7) or drop them")


def run(args) -> int:
    check_args(args)
    from .. import FastLanguageModel
    model, tokenizer = FastLanguageModel.from_pretrained(args.model_name, load_in_4bit=args.load_in_4bit)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{args.model_name} has no tokenizer with a chat template; chat needs one")
    FastLanguageModel.for_inference(model)
    start = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        reply(model, tokenizer, start + [{"role": "user", "content": args.prompt}], args, stream=sys.stdout)
        print()
        return 0
    messages = list(start)
    print(f"chatting with {args.model_name} — /reset clears the conversation, /quit (or Ctrl-D) leaves")
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            messages = list(start)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        answer = reply(model, tokenizer, messages, args, stream=sys.stdout)
        print()
        messages.append({"role": "assistant", "content": answer})
