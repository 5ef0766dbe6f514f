"""The random-init models the benchmarks train, by size name.

``tiny`` is the quickstart's model (hidden 64, 2 layers, head_dim 32, ~107k parameters). ``small``
is the size issue 14 asks for, where the framework's fixed per-step costs stop hiding the model:
hidden 512, 6 layers, 8 attention heads and 8 KV heads (head_dim 64, which vLLM's CPU attention
supports), MLP 2048, ~25.4M parameters. Both use the local byte-level tokenizer of
``rlhf_workers.tiny`` and are written from a config: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 128},
    "small": {"hidden_size": 512, "num_layers": 6, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 2048},
}


def make_bench_model(directory: str | Path, size: str, *, seed: int = 0) -> Path:
    """Write the ``size`` model (a key of :data:`SIZES`) and its tokenizer to ``directory``."""
    from rlhf_workers.tiny import make_tiny_model

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: pick one of {', '.join(SIZES)}")
    return make_tiny_model(directory, seed=seed, **SIZES[size])


def parameter_count(directory: str | Path) -> int:
    """Parameters stored in a model directory's safetensors files."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                total += _product(f.get_slice(name).get_shape())
    return total


def _product(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def describe(size: str) -> str:
    s = SIZES[size]
    return (f"{size} Llama (hidden {s['hidden_size']}, {s['num_layers']} layers, "
            f"head_dim {s['hidden_size'] // s['num_heads']})")
