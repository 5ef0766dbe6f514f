"""A multi-step math environment: the model may answer up to three times.

Each turn the environment reads the model's latest action, checks the stated number
against the label, and either ends the episode or replies with feedback that becomes
part of the next prompt. Only the final turn carries reward (sparse reward).
Written to OpenRLHF's agent API, so the same file runs there unchanged.
"""

import re

import torch
from openrlhf.utils.agent import AgentExecutorBase, AgentInstanceBase

ANSWER = re.compile(r"(?:answer is:?|=|####)\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


class AgentInstance(AgentInstanceBase):
    async def __init__(self, *args, **kwargs):
        self.turn = 0
        self.max_turns = 3

    async def reset(self, states: dict, **kwargs):
        self.turn = 0
        return {"observation": states["observation"]}

    async def step(self, states: dict, **kwargs):
        action = states["action_text"]
        expected = float(states["label"])
        match = ANSWER.search(action)
        last_turn = self.turn >= self.max_turns - 1

        if match and abs(float(match.group(1)) - expected) < 1e-6:
            done, reward, feedback = True, 1.0, "\n\nCorrect.\n"
        elif match:
            done, reward = last_turn, (-0.3 if last_turn else 0.0)
            feedback = "\n\nThat is not right. Check each step and answer again.\nAssistant: "
        else:
            done, reward = last_turn, (-0.5 if last_turn else 0.0)
            feedback = "\n\nNo final answer found. End with 'The answer is <number>'.\nAssistant: "

        self.turn += 1
        return {
            "rewards": torch.tensor([reward]),
            "scores": torch.tensor([max(0.0, reward + 0.5)]),
            "environment_feedback": "" if done else feedback,
            "done": done,
            "sampling_params": states.get("sampling_params", None),
            "extra_logs": {"turns": float(self.turn), "solved": float(reward == 1.0)},
        }


class AgentExecutor(AgentExecutorBase):
    def __init__(self, max_steps, max_length, llm_engine, hf_tokenizer, result_queue):
        super().__init__(AgentInstance, max_steps, max_length, llm_engine, hf_tokenizer, result_queue)
