"""The model executor: a local Hugging Face sequence-classification model as the reward."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from .contract import check_inputs, validate_reward_output
from .errors import RewardLoadError
from .result import RewardExecutor, RewardResult

__all__ = ["RewardModelReward"]


class RewardModelReward(RewardExecutor):
    """Scores full query texts with a local Hugging Face sequence-classification model.

    Loads ``AutoTokenizer`` + ``AutoModelForSequenceClassification`` from a local
    directory (``local_files_only=True``; no hub access) once, in eval mode.

    Reward head:
        * ``num_labels == 1`` (a reward model's value head, as OpenRLHF's RMs):
          ``reward = logit``; ``score = sigmoid(logit)`` so it lies in [0, 1] for dynamic
          filtering (the Bradley-Terry preference probability against a 0-logit baseline).
        * ``num_labels >= 2`` (a classifier): ``reward = score = softmax(logits)[positive_label]``,
          the probability of the positive class, like the seed's ``pipeline`` example.

    With ``normalize=True`` the single-logit reward becomes ``(logit - mean) / std`` using
    ``config.mean`` / ``config.std`` stored with the model, as OpenRLHF's
    ``--normalize_reward`` does for its reward models.

    Args:
        path: local model directory.
        batch_size: texts per forward pass.
        max_length: truncation length (default: the tokenizer's, capped at 4096).
        device: torch device.
        positive_label: class index used for multi-label classifiers.
        normalize: apply the stored reward mean/std (single-logit models only).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        positive_label: int = 1,
        normalize: bool = False,
        dtype: Optional[torch.dtype] = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        if not Path(self.path).is_dir():
            raise RewardLoadError(f"reward model directory {self.path} does not exist", source=self.path)
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            kwargs = {"local_files_only": True}
            if dtype is not None:
                kwargs["dtype"] = dtype
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise RewardLoadError(
                f"cannot load a sequence-classification reward model from {self.path}: {type(exc).__name__}: {exc}",
                source=self.path) from exc
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise RewardLoadError(f"tokenizer in {self.path} has neither a pad nor an eos token", source=self.path)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        limit = getattr(self.tokenizer, "model_max_length", None) or 4096
        self.max_length = max_length or min(int(limit), 4096)
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels >= 2 and not 0 <= positive_label < self.num_labels:
            raise ValueError(f"positive_label {positive_label} out of range for {self.num_labels} labels")
        self.positive_label = positive_label
        self.norm: Optional[tuple[float, float]] = None
        if normalize:
            mean = getattr(self.model.config, "mean", None)
            std = getattr(self.model.config, "std", None)
            if self.num_labels != 1 or mean is None or not std:
                raise RewardLoadError(
                    f"normalize=True needs a single-logit reward model with `mean` and `std` in its config.json "
                    f"({self.path}: num_labels={self.num_labels}, mean={mean}, std={std})", source=self.path)
            self.norm = (float(mean), float(std))

    @torch.no_grad()
    def score(self, queries, prompts, labels=None) -> RewardResult:
        check_inputs(queries, prompts, labels)
        rewards, scores = [], []
        for start in range(0, len(queries), self.batch_size):
            texts = [str(q) for q in queries[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                                           "token_type_ids")}
            logits = self.model(**enc).logits.float()
            if self.num_labels == 1:
                r = logits[:, 0]
                s = torch.sigmoid(r)
                if self.norm is not None:
                    r = (r - self.norm[0]) / self.norm[1]
            else:
                r = torch.softmax(logits, dim=-1)[:, self.positive_label]
                s = r
            rewards.append(r.cpu())
            scores.append(s.cpu())
        out = {
            "rewards": torch.cat(rewards) if rewards else torch.zeros(0),
            "scores": torch.cat(scores) if scores else torch.zeros(0),
        }
        return validate_reward_output(out, len(queries), prompts, source=f"reward model {self.path}")

