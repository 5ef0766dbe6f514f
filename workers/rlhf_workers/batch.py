"""Padded tensors for one forward pass: prompt + response token sequences and their per-token fields.

A :class:`MicroBatch` holds ``b`` sequences right-padded to length ``L`` and, for the response
part, ``[b, T]`` tensors where ``T`` is the longest response. ``resp_index[i, j]`` is the
position whose logits predict response token ``j`` of sequence ``i`` (prompt length - 1 + j),
so response logprobs are a gather, whatever the prompt lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  #: [b, L] long, right-padded
    attention_mask: torch.Tensor  #: [b, L] long
    resp_index: torch.Tensor  #: [b, T] long
    response_ids: torch.Tensor  #: [b, T] long
    action_mask: torch.Tensor  #: [b, T] float, 1 on response tokens
    advantages: Optional[torch.Tensor] = None  #: [b, T]
    old_logprobs: Optional[torch.Tensor] = None  #: [b, T] policy logprobs at rollout time (None: recomputed on the fly)
    ref_logprobs: Optional[torch.Tensor] = None  #: [b, T] for KL as a loss
    rollout_logprobs: Optional[torch.Tensor] = None  #: [b, T] what the engine reported (weight sync check)
    returns: Optional[torch.Tensor] = None  #: [b, T] critic targets
    old_values: Optional[torch.Tensor] = None  #: [b, T] critic values at rollout time

    @property
    def size(self) -> int:
        return int(self.input_ids.size(0))

    @property
    def num_tokens(self) -> int:
        return int(self.action_mask.sum())

    def with_fields(self, **tensors: Optional[torch.Tensor]) -> "MicroBatch":
        """A copy with per-token fields set, each cut to this batch's ``T`` columns."""
        width = self.action_mask.size(1)
        return replace(self, **{k: None if v is None else v[:, :width] for k, v in tensors.items()})

    def to(self, device: torch.device) -> "MicroBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self) if getattr(self, f.name) is not None})


def pack(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
         masks: Optional[Sequence[Optional[Sequence[float]]]] = None) -> MicroBatch:
    """Right-pad ``prompt + response`` sequences into a :class:`MicroBatch` (``b >= 1``).

    ``masks[i]`` marks which response tokens are trained on (None: all of them); agents use it to
    leave environment feedback out of the loss.
    """
    b = len(prompt_ids)
    if b == 0 or b != len(response_ids):
        raise ValueError(f"pack needs as many (>= 1) prompts as responses, got {b} and {len(response_ids)}")
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    t = max(1, max(len(r) for r in response_ids))
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    resp_index = torch.zeros((b, t), dtype=torch.long)
    resp = torch.full((b, t), pad_id, dtype=torch.long)
    action_mask = torch.zeros((b, t), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        n, m = len(p), len(r)
        input_ids[i, :n + m] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, :n + m] = 1
        resp_index[i, :m] = torch.arange(n - 1, n - 1 + m)
        resp[i, :m] = torch.tensor(list(r), dtype=torch.long)
        mask = masks[i] if masks is not None else None
        action_mask[i, :m] = 1.0 if mask is None else torch.tensor(list(mask), dtype=torch.float32)
    return MicroBatch(input_ids, attention_mask, resp_index, resp, action_mask)


def dummy(pad_id: int) -> MicroBatch:
    """A one-token batch with no response tokens: lets a rank without data join a collective step."""
    return MicroBatch(
        input_ids=torch.full((1, 2), pad_id, dtype=torch.long),
        attention_mask=torch.ones((1, 2), dtype=torch.long),
        resp_index=torch.zeros((1, 1), dtype=torch.long),
        response_ids=torch.full((1, 1), pad_id, dtype=torch.long),
        action_mask=torch.zeros((1, 1), dtype=torch.float32),
    )


def pad_rows(rows: Sequence[Sequence[float]], width: Optional[int] = None, value: float = 0.0) -> torch.Tensor:
    """``[len(rows), width]`` float tensor from ragged rows."""
    width = width if width is not None else max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), max(1, width)), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        if len(r):
            out[i, :len(r)] = torch.tensor(list(r), dtype=torch.float32)
    return out
