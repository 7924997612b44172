"""Shared pytest settings. Each section says whose tests it serves; keep additions small."""
import torch

# --- library tests (tests/test_lib_*.py) ------------------------------------------------
# One intra-op thread. The library tests work on small tensors, where threads do not help,
# and on a shared 2-core machine two OpenMP threads competing with another busy process
# made the oracle samplers ~20x slower (measured: DDPM with 2000 samples, 1.3 s vs 39 s).
torch.set_num_threads(1)
