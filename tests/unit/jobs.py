"""Small job documents for tests."""

import copy

REWARD_SOURCE = "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"

MINIMAL = {
    "apiVersion": "rlhf.dev/v1alpha1",
    "kind": "RLHFJob",
    "metadata": {"name": "demo", "namespace": "team-a"},
    "spec": {
        "model": {"path": "/models/tiny"},
        "data": {"prompts": "/data/prompts.jsonl"},
        "reward": {"function": {"inline": REWARD_SOURCE}},
    },
}


def job(**spec_overrides):
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in spec_overrides.items():
        node = doc["spec"]
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return doc
