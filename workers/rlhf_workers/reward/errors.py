"""Reward faults: everything that can go wrong with a reward is raised as a :class:`RewardError`
subclass, never silently turned into a low reward.

* :class:`RewardLoadError` - the file cannot be loaded or lacks a usable ``reward_func``;
* :class:`RewardFunctionError` - ``reward_func`` raised; carries the user traceback;
* :class:`RewardContractError` - the returned value breaks the contract;
* :class:`RemoteRewardError` - the reward server could not be reached or answered badly.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["RewardError", "RewardLoadError", "RewardContractError", "RewardFunctionError", "RemoteRewardError"]


class RewardError(Exception):
    """A reward fault (as opposed to a legitimately low reward).

    Attributes:
        sample_index: index in the batch of the offending sample, when known.
        source: the reward file / URL / model the error came from, when known.
    """

    def __init__(self, message: str, *, sample_index: Optional[int] = None, source: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.sample_index = sample_index
        self.source = source


class RewardLoadError(RewardError):
    """The reward file could not be loaded, or ``reward_func`` is missing or has the wrong signature."""


class RewardContractError(RewardError):
    """``reward_func`` (or a reward server) returned something that breaks the contract."""


class RewardFunctionError(RewardError):
    """``reward_func`` raised an exception.

    Attributes:
        batch_size: number of samples in the failing call.
        exc_type: name of the original exception type.
        exc_message: ``str()`` of the original exception.
        user_traceback: formatted traceback of the user's code (our frames removed).
        original: the original exception (also chained as ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        batch_size: int,
        original: BaseException,
        user_traceback: str,
        sample_index: Optional[int] = None,
        source: Optional[str] = None,
    ):
        super().__init__(message, sample_index=sample_index, source=source)
        self.batch_size = batch_size
        self.original = original
        self.exc_type = type(original).__name__
        self.exc_message = str(original)
        self.user_traceback = user_traceback


class RemoteRewardError(RewardError):
    """A reward server could not be reached, or answered with an error status / non-JSON body."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: Optional[int] = None,
        body: Optional[str] = None,
        attempts: int = 1,
    ):
        super().__init__(message, source=url)
        self.url = url
        self.status = status
        self.body = body
        self.attempts = attempts

