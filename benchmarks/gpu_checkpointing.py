"""GPU: what each gradient-checkpointing mode saves — peak memory and step time of one LoRA training step on a
Llama-3.2-1B-shaped model (catalogue config, random weights, bf16), batch 4 x 2048 tokens, r=16 on 7 projections.

    python benchmarks/gpu_checkpointing.py [--out benchmarks/results] [--batch 4] [--seq 2048]

Modes: none (every activation kept), recompute (each layer's input kept on the GPU, the layer recomputed in
backward) and offload (the layer inputs kept in pinned CPU memory instead, copied back just before recompute).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(mode, batch, seq, steps=3):
    import torch
    from minilora.lora import get_peft_model
    from minilora.models import from_catalogue
    torch.cuda.empty_cache()
    model = from_catalogue("llama-3.2-1b", dtype=torch.bfloat16, device="cuda")
    get_peft_model(model, r=16, lora_alpha=16, verbose=False)
    model.gradient_checkpointing = mode
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")
    weights = torch.cuda.memory_allocated() / 2**30
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(ids, ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt, ids, loss
    return {"mode": str(mode), "peak_gib": round(peak, 3), "weights_and_lora_gib": round(weights, 3),
            "step_s": round(sorted(times[1:])[len(times[1:]) // 2], 4),
            "tokens_per_s": round(batch * seq / sorted(times[1:])[len(times[1:]) // 2], 1)}


def main():
    import torch
    import triton
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args()
    from minilora import ops
    results = []
    for mode in ("offload", "recompute", False):
        try:
            r = measure(mode, args.batch, args.seq)
        except torch.OutOfMemoryError:
            r = {"mode": str(mode), "error": "out of memory"}
        r["kernels"] = ops.kernel_mode()
        results.append(r)
        print(r, flush=True)
    out = {"what": f"LoRA step, llama-3.2-1b catalogue shape, bf16, B{args.batch} S{args.seq}, r16 on 7 projections",
           "card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}
    os.makedirs(args.out, exist_ok=True)
    name = (f"gpu-checkpointing-{torch.cuda.get_device_name().split()[-1].lower()}-"
            f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
