"""The RLHF worker runtime: what an RLHFJob's RayJob runs, and what ``rlhf run`` runs locally.

Entry points
------------
* ``python -m rlhf_workers --config /etc/rlhf/config/worker.json`` (:mod:`rlhf_workers.__main__`):
  the RayJob entrypoint; joins the Ray cluster, serves ``GET :progress_port/progress``, trains.
* :func:`rlhf_workers.local.run_local` - ``rlhf run JOB.yaml --output DIR``: an embedded Ray,
  a progress bar, and ``metrics.jsonl``, ``reward_curve.png``, ``checkpoints/``, ``final_model/``.
* :func:`rlhf_workers.train.train` - the training loop itself, for a :class:`WorkerConfig`.
* :func:`rlhf_workers.tiny.make_tiny_model` - ``rlhf tiny-model DIR``.

Modules
-------
``train``        the loop, top to bottom (start reading here)
``cluster``      Ray actors per role, placement groups, reward workers
``rollout``      rollout engines: vLLM and transformers behind one interface
``trainer``      DeepSpeed policy and critic, the reference model
``weight_sync``  trainer -> engine weight transfer (in-process, collective broadcast, object store)
``vllm_extension`` the receiving end of the collective push inside vLLM's workers (worker_extension_cls)
``async_rollout`` rollouts in place, or generated ahead in a thread (algorithm.async)
``algorithms``   advantage estimators, KL, PPO losses, dynamic filtering
``reward``       the reward_func contract, remote reward servers, reward models
``data``         prompt datasets and their resumable order
``batch``        padded micro-batches
``checkpoint``   checkpoint layout, resume, rotation
``metrics``      metrics.jsonl, TensorBoard, W&B, the progress endpoint, the reward curve
``agent``        OpenRLHF's agent base classes (multi-step agents: not yet trained)
``local``        ``rlhf run``
``tiny``         a tiny Llama and byte-level tokenizer for local runs and tests
"""
