"""Side-by-side benchmark of this project's GRPO step and TRL's GRPOTrainer: `python -m bench.run`.

bench.workloads  the two workloads (short chat prompts; 8-shot GSM8K) and the settings both sides share
bench.ours       one child process: this project's step (the functions train.py calls), timed by phase
bench.trl_side   one child process: TRL's GRPOTrainer on the same model, prompts and settings
bench.flops      the measured float32 GEMM peak and the analytic FLOP count of a step
bench.run        runs the children one after the other, prints the comparison, writes JSON
"""
