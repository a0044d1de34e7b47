"""minilora's benchmarks: one timing harness and results schema (harness.py), the scripts that use it, and the
recorded results (results/). Run a script from the repository root: `python -m benchmarks.bench_e2e --help`.

Without a CUDA device, Triton kernels can only run in Triton's interpreter, which must be switched on before Triton
is first imported; importing this package does that (as the tests' conftest does), so `--smoke` runs work on a CPU.
"""
import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
