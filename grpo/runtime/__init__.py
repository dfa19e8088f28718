"""Runtime: what a training run needs around the math.

- `config`: frozen dataclasses per concern, YAML recipes, CLI overrides, validation;
- `model`: loading (hub ids, local folders, GGUF, the offline demo model), LoRA/QLoRA;
- `distributed`: ranks, the process group, DeepSpeed's config, metric collectives;
- `backends`: one object per way of running (one process, DeepSpeed ZeRO-3) that owns generation,
  the optimizer step and checkpoints, so the loop never branches on the backend;
- `checkpoint`: atomic checkpoints and exact resume;
- `tracking`: metrics to JSONL, TensorBoard, the progress bar and plots.
"""
