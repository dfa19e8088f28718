"""TRL's GRPOTrainer on a benchmark workload, in its own process: `python -m bench.trl_side a`.

Same model folder (grpo.runtime.model.demo_model_dir()), same rendered prompt texts (a plain-text
`prompt` column, so TRL does not apply a chat template again), the same rewards (this
project's gsm8k_format + gsm8k_correctness, which take TRL's reward signature), G, completion
cap, LoRA, beta, learning rate, micro-batch size and threads. One TRL optimizer step = one
generation batch of the workload's prompts x G (steps_per_generation = grad accumulation).
Gradient checkpointing is off on both sides (TRL's default is on; ours does not use it).
Step times come from a TrainerCallback (on_step_begin / on_step_end); TRL's own profiling
context gives its time inside transformers' generate().
Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import resource
import time

import torch

from bench.workloads import WORKLOADS, Shared, child_parser, load_rows


def run(workload: str, steps: int, warmup: int, threads: int = 2, gradient_checkpointing: bool = False,
        dtype: str = "float32") -> dict:
    import peft
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rewards
    from grpo.runtime.model import demo_model_dir, load_tokenizer

    w, s = WORKLOADS[workload], Shared()
    torch.set_num_threads(threads)
    folder = str(demo_model_dir())
    tokenizer = load_tokenizer(folder)
    rows = load_rows(w, tokenizer)
    # Every step sees the same prompts, as on our side (unshuffled: rows 0..N-1, then again).
    dataset = Dataset.from_list(rows * (steps + warmup))
    micro = w.micro_batch_prompts * w.group_size
    args = GRPOConfig(
        output_dir="/tmp/bench-trl", num_generations=w.group_size,
        per_device_train_batch_size=micro, gradient_accumulation_steps=w.num_prompts // w.micro_batch_prompts,
        max_completion_length=w.max_new_tokens, beta=s.beta, num_iterations=1, loss_type="grpo",
        temperature=s.temperature, top_p=s.top_p, learning_rate=s.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=s.max_grad_norm,
        max_steps=steps + warmup, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=gradient_checkpointing,
        logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        log_completions=False, seed=s.seed, dataloader_num_workers=0,
        shuffle_dataset=False,  # each step gets exactly the workload's prompts, as on our side
    )
    # Weights in `dtype` as on our side; peft keeps the LoRA adapters in float32 on both.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    lora = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      target_modules=list(s.lora_modules), task_type="CAUSAL_LM")

    records = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self.started
            records.append({"step": state.global_step, "warmup": state.global_step <= warmup,
                            "step_s": elapsed})
            print(f"trl step {state.global_step}: {elapsed:.2f} s", flush=True)

    trainer = GRPOTrainer(
        model=model, reward_funcs=[rewards.get("gsm8k_format"), rewards.get("gsm8k_correctness")],
        args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
        callbacks=[StepTimer()],
    )
    generate_s, completion_lens = _instrument_generate(trainer)
    trainer.train()
    for record, gen in zip(records, generate_s):
        record["phases_s"] = {"generate": gen}
    for record, lens in zip(records, completion_lens):
        record["completion_lens"] = lens
    return {"side": "trl", "workload": workload, "dtype": dtype, "steps": records,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads(), "gradient_checkpointing": gradient_checkpointing,
            "versions": {"torch": torch.__version__, "trl": trl.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__}}


def _instrument_generate(trainer):
    """Time TRL's generation (one call per step) and record its completion lengths, without
    changing what it does: a wrapper around the trainer's own `_generate_single_turn`."""
    times, lengths = [], []
    original = trainer._generate_single_turn

    def timed(*args, **kwargs):
        started = time.perf_counter()
        out = original(*args, **kwargs)
        times.append(time.perf_counter() - started)
        lengths.append([len(c) for c in out[0]])
        return out

    trainer._generate_single_turn = timed
    return times, lengths


def main(argv=None):
    parser = child_parser(__doc__)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="TRL's own default; needed where its activations do not fit in memory")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.workload, args.steps, args.warmup, threads=args.threads,
                         gradient_checkpointing=args.gradient_checkpointing, dtype=args.dtype)))


if __name__ == "__main__":
    main()
