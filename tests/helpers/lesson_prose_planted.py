"""Planted errors for tests/test_lesson_prose.py: nine sentences lessons once printed or wrote beside their own
data, each with the data that contradicted it, and each with the corrected version that the checks accept.

Each case is a small notebook: markdown cells, printed outputs, claim records (what `minilora.prose.claim` attaches
to its output) and shown library source (what `minilora.show.show` displays). `WRONG` must be flagged, `FIXED`
must not.
"""
from __future__ import annotations

from minilora.prose import CLAIM_METADATA
from minilora.show import SOURCE_METADATA


def notebook(markdown=(), printed=(), claims=(), source=()) -> dict:
    """A minimal executed notebook: markdown cells, then one code cell per output of each kind."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": m} for m in markdown]

    def code(output):
        return {"cell_type": "code", "metadata": {}, "source": "...", "execution_count": 1, "outputs": [output]}

    cells += [code({"output_type": "stream", "name": "stdout", "text": text}) for text in printed]
    cells += [code({"output_type": "display_data", "data": {"text/plain": text},
                    "metadata": {CLAIM_METADATA: {"text": text, "data": data}}}) for text, data in claims]
    cells += [code({"output_type": "display_data", "data": {"text/plain": text, "text/html": "<pre>…</pre>"},
                    "metadata": {SOURCE_METADATA: {"name": "x", "region": None}}}) for text in source]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


# name -> (wrong notebook, fixed notebook, cited figures the lesson may state)
CASES = {
    "week1 steps": (
        notebook(markdown=["The real job fine-tunes SmolLM2 on the bundled dates task for 40 steps (its recorded "
                           "times on two CPU cores are at the end of this section)."],
                 printed=["trained 60 steps in 281.5 s (129 tokens/s); loss 0.820 -> 0.001\n"]),
        notebook(markdown=["The real job fine-tunes SmolLM2 on the bundled dates task for `--max_steps` steps."],
                 printed=["trained 40 steps in 189.0 s (128 tokens/s); loss 0.820 -> 0.005\n"],
                 claims=[("today's default is 40 steps; the recorded 4-bit run with that many steps is "
                          "train-steps40", {"default": 40})]),
        {}),
    "2x and 70% as minilora's": (
        notebook(markdown=["minilora is about 2x faster and uses 70% less memory than HF."],
                 printed=["minilora '+ offload' 379 ms a step vs HF+PEFT+bnb 647 ms: 1.71x faster (Δ −41.4%, "
                          "time); minilora needs 47.1% less (Δ −47.1%, memory)\n"]),
        notebook(markdown=["Unsloth's README promises 2x faster with 70% less memory."],
                 claims=[("at this shape minilora is faster (1.71x) and leaner (47% less peak memory) than HF; "
                          "that is short of Unsloth's 2x and short of its 70%", {"speed": 1.706, "less": 47.08})]),
        {"2x": "Unsloth README", "70%": "Unsloth README"}),
    "memorizes": (
        notebook(markdown=["A tiny Llama with LoRA on every linear layer memorizes four random sequences."],
                 printed=["loss 4.558 → 3.417 (fp32 states) and 4.558 → 3.420 (8-bit states)\n"]),
        notebook(markdown=["A tiny Llama with LoRA on every linear layer trains on a batch of random sequences."],
                 claims=[("both runs end below chance (ln 96 = 4.564): 3.417 with fp32 states, 3.420 with 8-bit "
                          "ones — they learn something of the 4 sequences, far from memorizing them",
                          {"fp32": 3.417, "q8": 3.42})]),
        {}),
    "six decades": (
        notebook(markdown=["Build the 8-bit dynamic map and say why its levels are spread over six decades."],
                 printed=["  (1e-07, 1e-06] 1\n  (1e-06, 1e-05] 6\n  (1e-05, 1e-04] 12\n  (1e-04, 1e-03] 24\n"
                          "  (1e-03, 1e-02] 48\n  (1e-02, 1e-01] 96\n  (1e-01, 1e+00] 40\n"]),
        notebook(markdown=["Build the 8-bit dynamic map and say why its levels are spread over many decades."],
                 claims=[("the signed map has levels in 7 decades of this table, and more of them in each larger "
                          "decade", {"n": 7})]),
        {}),
    "checkpointing costs time": (
        notebook(markdown=["Recompute and offload cost time: every layer runs its forward twice."],
                 printed=["recompute vs none: 1.69x faster (Δ −40.8%, time)\n"
                          "offload vs none: 2.04x faster (Δ −51.0%, time)\n"]),
        notebook(markdown=["Recompute and offload cost time: every layer runs its forward twice."],
                 claims=[("on the GPU, recompute costs time: 206.5 ms a step against 156.2 ms without "
                          "checkpointing (1.32x), and saves memory", {"rec": 206.5, "off": 156.2})]),
        {}),
    "saving times layers": (
        notebook(markdown=["Every layer of a real model keeps its saved tensors alive until its backward runs, so "
                           "the difference per MLP is multiplied by the number of layers."],
                 printed=["saved: 61% less; allocated in backward: 48% less\n"]),
        notebook(markdown=["With checkpointing a layer's tensors exist only while that one layer is recomputed, "
                           "so the difference lowers the peak once, not once per layer."],
                 printed=["saved: 61% less; allocated in backward: 48% less\n"]),
        {}),
    "DDP needs more than 8 GPUs": (
        notebook(printed=["Llama-3-70B QLoRA on 24 GB cards: DDP needs more than 8 GPUs, ZeRO-3 needs 2 GPU(s)\n"]),
        notebook(claims=[("Llama-3-70B QLoRA on 24 GB cards: DDP holds 43.8 GiB on every GPU whatever their "
                          "number, so it fits on no number of them", {"ddp": 43.75})]),
        {}),
    "4x smaller base": (
        notebook(markdown=["The 4-bit base is already ~4x smaller than 16-bit, and FSDP divides it again."],
                 printed=["Llama-3-8B: weights 14.96 GiB in bf16, 5.31 GiB in NF4\n"]),
        notebook(markdown=["The 4-bit base is already 2.8x smaller than 16-bit, and FSDP divides it again."],
                 claims=[("Llama-3-8B: the 4-bit base is 2.8x smaller than the 16-bit one (5.3 GiB against "
                          "15.0 GiB)", {"times": 2.817})]),
        {"4x": "16 bits / 4 bits, by definition"}),
    "bf16 ruins the scales": (
        notebook(source=["def store_as_bytes(self):\n    \"\"\"... casts every floating-point parameter to "
                         "param_dtype (bf16 would ruin the float32 block scales). ...\"\"\"\n"],
                 printed=["weights dequantized with bf16-rounded scales: largest error 4.50e-04 of the largest "
                          "weight\n"]),
        notebook(source=["def store_as_bytes(self):\n    \"\"\"... casts every floating-point parameter to "
                         "param_dtype (bf16 keeps 8 significant bits of the float32 block scales). ...\"\"\"\n"],
                 claims=[("dequantized with bf16-rounded scales the weights move by at most 4.5e-04 of the largest "
                          "weight — small next to NF4's own rounding (7.3e-02)", {"err": 0.00045})]),
        {}),
}
