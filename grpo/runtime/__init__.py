"""Runtime: what a training run needs around the math; it imports nothing above it.

- `sections`, `config`: frozen dataclasses per concern (each checking its own fields), YAML recipes,
  CLI overrides, the checks between sections;
- `model`: loading (hub ids, local folders, GGUF, the offline demo model), LoRA/QLoRA;
- `distributed`: ranks, the process group, DeepSpeed's config, metric collectives;
- `checkpoint`: atomic checkpoints and exact resume;
- `tracking`: metrics to JSONL, TensorBoard, MLflow, W&B, the progress bar and plots;
- `signals`: SIGTERM as a stop request; `hf_compat`: transformers' cache argument across versions.
"""
