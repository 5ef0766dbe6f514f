"""The collective push into a tensor-parallel vLLM engine: each of the engine's two workers joins the
sync group with a rank of its own, receives every bucket and keeps its shard; after the push the
engine samples with the trainer's weights.

Two vLLM CPU workers bound to one core each take minutes to start on two cores, so this test runs
only when asked: ``RLHF_TEST_TP=1 pytest tests/workers/test_weight_sync_tp.py`` (its measurement is in
bench/README.md). The same code path with one worker per engine is tested in test_weight_sync.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHECK = r'''
import json, socket, sys, threading, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    from rlhf_workers.tiny import make_tiny_model
    from rlhf_workers.vllm_extension import QUALNAME
    from rlhf_workers.weight_sync import SyncGroup, module_layout, send_parameters

    model_dir = sys.argv[1]
    make_tiny_model(model_dir)
    started = time.monotonic()
    llm = LLM(model=model_dir, tensor_parallel_size=2, distributed_executor_backend="mp", dtype="float32",
              enforce_eager=True, worker_extension_cls=QUALNAME, seed=0)
    start_s = time.monotonic() - started
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():  # the update the engine has not seen
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * 0.2)

    def engine_vs_trainer():
        params = SamplingParams(max_tokens=8, temperature=1.0, logprobs=0, seed=1)
        out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, params, use_tqdm=False)[0].outputs[0]
        engine = torch.tensor([lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids)])
        ids = torch.tensor([[5, 6, 7, 8, *out.token_ids]])
        with torch.no_grad():
            logits = trainer(ids).logits[0, 3:-1].float()
        mine = torch.log_softmax(logits, -1).gather(-1, ids[0, 4:, None])[:, 0]
        return float((engine - mine).abs().max())

    before = engine_vs_trainer()
    port, box = free_port(), {}
    joining = threading.Thread(target=lambda: box.update(group=SyncGroup("127.0.0.1", port, 0, 3)))
    joining.start()
    backends = llm.collective_rpc("rlhf_join_weight_group", args=("127.0.0.1", port, 1, 3))
    joining.join()
    bucket = 1 << 18  # small buckets: several per push
    sending = threading.Thread(target=lambda: box.update(sent=send_parameters(trainer, bucket, box["group"])))
    pushed = time.monotonic()
    sending.start()
    received = llm.collective_rpc("rlhf_receive_weights", args=(module_layout(trainer), bucket))
    sending.join()
    push_s = time.monotonic() - pushed
    print("RESULT " + json.dumps({"backends": backends, "sent": box["sent"], "received": received, "before": before,
                      "after": engine_vs_trainer(), "start_s": start_s, "push_s": push_s}), flush=True)


if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RLHF_TEST_TP") != "1",
                    reason="two vLLM CPU workers take minutes to start on two cores: RLHF_TEST_TP=1 runs it")
def test_a_tensor_parallel_engine_takes_the_collective_push_on_each_rank(tmp_path):
    script = tmp_path / "tp_check.py"
    script.write_text(CHECK)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": "0|1",
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "model")], capture_output=True, text=True,
                          timeout=1200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["backends"] == ["gloo", "gloo"]  # one rank per tensor-parallel worker
    assert out["received"] == [out["sent"], out["sent"]] and out["sent"] > 0  # every worker gets every byte
    assert out["before"] > 0.05  # the engine had not seen the update
    assert out["after"] < 1e-3, out  # each worker kept its shard of the new weights
