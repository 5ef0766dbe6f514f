"""A tiny random-init Llama and a byte-level tokenizer, built locally (no hub access).

``make_tiny_model(dir)`` writes a Hugging Face model directory that transformers, vLLM
(CPU build) and DeepSpeed all load: a 2-layer Llama with hidden size 64, 2 attention heads
(head_dim 32, which vLLM's CPU attention supports) and 1 KV head, and a byte-level BPE
tokenizer without merges: token ``i < 256`` is byte ``i``, then ``<pad>``, ``<s>``,
``</s>`` and ``<unk>`` (vocabulary 260). Every string round-trips exactly. The tokenizer
carries a small chat template (``<|user|>...\\n<|assistant|>``).

Exposed on the command line as ``rlhf tiny-model DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 256, 257, 258, 259
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def make_tokenizer():
    """A ``PreTrainedTokenizerFast`` over raw bytes (ids 0-255) plus four special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: b for b, char in _byte_to_unicode().items()}
    vocab.update({tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a random-init Llama causal LM and its byte-level tokenizer to ``directory``.

    ``hidden_size / num_heads`` must be a head size vLLM's CPU attention supports
    (32, 64, 80, 96, 112, 128, ...). Weights are float32 safetensors. Returns the directory.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or head_dim not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512):
        raise ValueError(
            f"hidden_size/num_heads = {hidden_size}/{num_heads} gives head_dim {hidden_size / num_heads:g};"
            " vLLM's CPU attention needs 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 or 512"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    make_tokenizer().save_pretrained(directory)
    (directory / "README.md").write_text(
        "A tiny random-init Llama with a byte-level tokenizer, made by rlhf_workers.tiny.make_tiny_model.\n"
        + json.dumps({"hidden_size": hidden_size, "layers": num_layers, "heads": num_heads, "kv_heads": num_kv_heads,
                      "vocab_size": VOCAB_SIZE, "seed": seed}) + "\n"
    )
    return directory


def ensure_tiny_model(directory: str | Path) -> bool:
    """Write the tiny model to ``directory`` unless a model is there already; whether one was written."""
    if is_model_dir(directory):
        return False
    make_tiny_model(directory)
    return True


def is_model_dir(directory: str | Path) -> bool:
    """Whether ``directory`` already holds a Hugging Face model (config and weights)."""
    d = Path(directory)
    return (d / "config.json").is_file() and (any(d.glob("*.safetensors")) or (d / "pytorch_model.bin").is_file())
