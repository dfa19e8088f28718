"""Backends: one object per way of running a step, with the same methods, so the loop never branches.

- `SingleProcess`: one process on one device.
- `DataParallel` (train.strategy=ddp): the frozen base replicated on every rank, only the adapter's
  gradients averaged (single.py).
- `DeepSpeedZero3` (train.strategy=zero3, the default): parameters, gradients and optimizer state
  sharded by DeepSpeed (zero3.py).

Each one owns what differs:
- `logprobs`: the log-prob pass the update calls, `logprobs(batch, temperature, shared_prefix, ...)`
  -> TokenLogProbs (grpo/rollout/logprobs.py);
- `generation()`: the context the sampler runs in, yielding the policy to decode with;
- `reference_logprobs()`: the context that yields the log-prob pass of the frozen reference;
- `backward(loss, last)` per micro-batch (last: the optimizer step's final one) and
  `step(loss_finite) -> {"grad_norm", "lr", "skipped"}` per optimizer step: a step whose loss or gradient norm is not finite changes nothing (no optimizer
  or schedule step) and says so with skipped = 1;
- `save_checkpoint`, `load_checkpoint` (one format for all of them: grpo/runtime/checkpoint.py),
  `save_final_adapter`.

`launch.start_world` joins the processes a launch asked for; `launch.create_backend` picks the backend.
The layer sits above the rollout and the speed-ups it composes; nothing below imports it.
"""

from grpo.backends.launch import DEFAULT_DS_CONFIG, Launch, create_backend, start_world
from grpo.backends.single import DataParallel, SingleProcess
from grpo.backends.zero3 import DeepSpeedZero3

__all__ = ["DEFAULT_DS_CONFIG", "DataParallel", "DeepSpeedZero3", "Launch", "SingleProcess", "create_backend",
           "start_world"]
