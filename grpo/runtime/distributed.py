"""Training across processes: ranks, process groups, DeepSpeed's config, and the few collectives
the loop needs.

One process per device, started by `torchrun` or `deepspeed`. Each rank rolls out its own share
of the step's prompts (a prompt's G completions stay on one rank, so groups are scored and
normalized whole). Two strategies (grpo/backends): zero3, where DeepSpeed shards
parameters, gradients and optimizer state across the ranks, and ddp, where every rank holds the
whole frozen base and only the adapter's gradients are averaged. Metrics are reduced across
ranks and only rank 0 writes. A plain `python train.py` is one rank and never imports DeepSpeed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo.runtime.config import Config, ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # device index on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env=os.environ) -> World:
    """The rank layout torchrun and the deepspeed launcher export (one process when unset)."""
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def check_recipe(cfg: Config, strategy: str = "zero3") -> None:
    """Recipe settings that the multi-process strategy cannot honour, refused before anything loads."""
    if strategy != "zero3":
        return
    if cfg.rollout.compile:
        raise ConfigError("rollout.compile=true under ZeRO-3: the compiled decode step would trace through the "
                          "gathered shards; use train.strategy=ddp or rollout.compile=false")
    if not cfg.model.use_lora:
        raise ConfigError("model.use_lora=false under ZeRO-3: the reference model would be a full unsharded "
                          "copy on every rank and checkpoints would gather the whole model on each; "
                          "train a LoRA adapter (model.use_lora=true) or use one process without --deepspeed")
    if cfg.log.merge_final:
        raise ConfigError("log.merge_final=true needs the whole model in one process; set it to false "
                          "and merge final/adapter afterwards (peft merge_and_unload)")


def local_processes(world: World, env=os.environ) -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; the whole world when unset)."""
    return int(env.get("LOCAL_WORLD_SIZE", world.size))


def from_rank_zero(decide, world: World):
    """Rank 0's `decide()`, on every rank (a collective): one decision even where ranks could differ."""
    value = [decide() if world.is_main else None]
    if world.size > 1:
        torch.distributed.broadcast_object_list(value, src=0)
    return value[0]


def start(world: World) -> None:
    """DeepSpeed's communication over the process group (start_process_group's, when it was started:
    DeepSpeed takes it over), or a new one: NCCL on GPUs, gloo on CPU (DS_ACCELERATOR=cpu, without oneCCL)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    _single_process_group_env(world)
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(world.local_rank)
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())


def start_process_group(world: World) -> torch.device:
    """Join the process group without DeepSpeed (the ddp strategy): NCCL on GPUs, gloo on CPU.
    Returns this rank's device."""
    _single_process_group_env(world)
    if torch.cuda.is_available():
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=device)
        return device
    torch.distributed.init_process_group("gloo")
    return torch.device("cpu")


def _single_process_group_env(world: World) -> None:
    """`python train.py --deepspeed ...`: a one-process group on this machine, on a free port."""
    if world.size == 1:
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def rank_share(count: int, world: World) -> range:
    """This rank's contiguous share of `count` items (count divides evenly, or earlier ranks get one more)."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (world.rank < extra))


# ---- the DeepSpeed config: "auto" fields come from the recipe ------------------------------------


def recipe_ds_values(cfg: Config, world_size: int) -> dict[str, tuple[object, str]]:
    """ds_config keys the recipe decides, as {dotted key: (value, where the recipe sets it)}."""
    t, dtype = cfg.train, cfg.model.dtype
    if dtype == "auto":
        raise ValueError("model.dtype=auto must be resolved for the device before DeepSpeed's config is made")
    per_update = t.grad_accum_steps // t.mini_batches  # micro-batches per optimizer step
    return {
        "train_micro_batch_size_per_gpu": (t.batch_size, "train.batch_size"),
        "gradient_accumulation_steps": (per_update, "train.grad_accum_steps / train.mini_batches"),
        "train_batch_size": (t.batch_size * per_update * world_size,
                             f"train.batch_size x train.grad_accum_steps / train.mini_batches x {world_size} ranks"),
        "gradient_clipping": (t.max_grad_norm, "train.max_grad_norm"),
        "bf16.enabled": (dtype == "bfloat16", f"model.dtype={dtype}"),
        "fp16.enabled": (dtype == "float16", f"model.dtype={dtype}"),
    }


def resolve_ds_config(raw: dict, cfg: Config, world_size: int, hidden_size: int, source: str) -> dict:
    """A copy of `raw` with "auto" (or missing) recipe fields filled in; a contradiction is an error.

    ZeRO-3 bucket sizes left "auto" follow the Hugging Face integration: reduce = h^2,
    prefetch = 0.9 h^2, parameters under 10 h elements stay whole on every rank.
    """
    resolved = json.loads(json.dumps(raw))
    zero = resolved.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        raise ConfigError(f"{source}: zero_optimization.stage={zero.get('stage')!r}; train.py runs "
                          "ZeRO stage 3 only, set it to 3")
    for section in ("optimizer", "scheduler"):
        if section in resolved:
            raise ConfigError(f"{source}: remove the {section!r} section; AdamW and its cosine schedule "
                              "come from the recipe (train.learning_rate, adam_betas, warmup_ratio)")
    for key, (value, origin) in recipe_ds_values(cfg, world_size).items():
        *parents, leaf = key.split(".")
        node = resolved
        for parent in parents:
            node = node.setdefault(parent, {})
        found = node.get(leaf, "auto")
        if found != "auto" and found != value:
            raise ConfigError(f"{source}: {key}={found!r} contradicts the recipe ({origin} gives {value!r}); "
                              f'set it to "auto" in {source} or change the recipe')
        node[leaf] = value
    buckets = {"reduce_bucket_size": hidden_size**2, "stage3_prefetch_bucket_size": int(0.9 * hidden_size**2),
               "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in buckets.items():
        if zero.get(key) == "auto":
            zero[key] = value
    return resolved


def load_ds_config(path: str | Path, cfg: Config, world_size: int, hidden_size: int) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--deepspeed {str(path)!r}: no such file; the repository ships ds_config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--deepspeed {str(path)!r} is not valid JSON: {err}") from None
    return resolve_ds_config(raw, cfg, world_size, hidden_size, str(path))


def deepspeed_engine(model, optimizer, ds_config: dict):
    """Shard `model` with ZeRO-3 around the recipe's own optimizer (no DeepSpeed C++ op to compile)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


@contextlib.contextmanager
def full_weights_for_generation(engine):
    """Gather the sharded weights once and take ZeRO-3's hooks off for the rollout.

    With the hooks on, every decoded token all-gathers every layer again. This mirrors DeepSpeed's own `deepspeed.runtime.zero.unwrap_model_for_generation` and TRL's
    version of it (which also clears `ds_active_sub_modules`). Decoding must call the policy,
    not the engine's root module (the LogProbPass): the root keeps a start-of-forward hook
    that can run a collective, which would hang ranks that decode different numbers of tokens.
    """
    from deepspeed.runtime.zero import GatheredParameters

    offload = engine.optimizer.parameter_offload
    with GatheredParameters(list(engine.module.parameters())):
        for param in engine.module.parameters():
            param.ds_active_sub_modules.clear()
        for handle in offload.forward_hooks + offload.backward_hooks:
            handle.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(offload.module)


# ---- collectives for metrics --------------------------------------------------------------------


def gather_rows(tensors: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Every rank's rows of each tensor, in rank order; dim 1 is right-padded with 0 to the widest."""
    if world.size == 1:
        return tensors
    parts = [None] * world.size
    torch.distributed.all_gather_object(parts, {k: v.cpu() for k, v in tensors.items()})
    out = {}
    for key in tensors:
        pieces = [p[key] for p in parts]
        if pieces[0].dim() == 2:
            width = max(x.shape[1] for x in pieces)
            pieces = [torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in pieces]
        out[key] = torch.cat(pieces)
    return out


def gather_with_sizes(tensor: torch.Tensor, world: World) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows of `tensor` (2-D, the same width on every rank) stacked in rank order, and each
    rank's number of rows (one collective): rank r's rows start at sum(sizes[:r])."""
    if world.size == 1:
        return tensor, [tensor.shape[0]]
    parts = [None] * world.size
    torch.distributed.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts), [p.shape[0] for p in parts]


def rows_before(rows: int, world: World) -> int:
    """How many rows the ranks before this one hold, given each rank's `rows` (a collective): where this
    rank's rows start in `gather_rows`' result."""
    if world.size == 1:
        return 0
    counts = [None] * world.size
    torch.distributed.all_gather_object(counts, int(rows))
    return sum(counts[: world.rank])


def weighted_mean(values: dict[str, float], world: World, weight: float = 1.0) -> dict[str, float]:
    """sum_r(weight_r * value_r) / sum_r(weight_r) per key, across ranks (identity for one process)."""
    if world.size == 1:
        return dict(values)
    # An object collective, not a tensor all_reduce: NCCL refuses CPU tensors, and these are a few floats.
    shares = [None] * world.size
    torch.distributed.all_gather_object(shares, (weight, dict(values)))
    total = sum(w for w, _ in shares)
    if total == 0:
        return {k: float("nan") for k in values}
    # a rank without rows (weight 0) may hold NaN means; it must add nothing
    return {k: sum(w * v[k] for w, v in shares if w) / total for k in values}


def sum_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum of `tensor` over every rank (a collective; a copy, the input unchanged). On the
    device the process group uses (CUDA under NCCL, CPU under gloo)."""
    if world.size == 1:
        return tensor
    out = tensor.clone()
    torch.distributed.all_reduce(out)
    return out


def max_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise largest value of `tensor` over every rank (a collective; a copy)."""
    if world.size == 1:
        return tensor
    out = tensor.clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return out


def all_ranks_agree(flag: bool, world: World) -> bool:
    """True when `flag` is True on every rank (a collective: every rank must call it)."""
    if world.size == 1:
        return flag
    flags = [None] * world.size
    torch.distributed.all_gather_object(flags, bool(flag))
    return all(flags)


def any_rank(flag: bool, world: World) -> bool:
    """True when `flag` is True on any rank (a collective: every rank must call it)."""
    return not all_ranks_agree(not flag, world)


def barrier(world: World) -> None:
    if world.size > 1:
        torch.distributed.barrier()


def finish() -> None:
    """Wait for every rank, then leave the process group (a rank exiting inside it can abort)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def full_numel(param: torch.nn.Parameter) -> int:
    """A parameter's whole size, also under ZeRO-3, where this rank holds a partition (or nothing) of it."""
    return getattr(param, "ds_numel", None) or param.numel()


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, all) parameters of the model, whole sizes whatever the backend (ZeRO-3 included)."""
    params = list(model.parameters())
    return sum(full_numel(p) for p in params if p.requires_grad), sum(full_numel(p) for p in params)


def shard_sizes(model) -> dict:
    """Parameters and bytes this rank stores (its ZeRO-3 partitions) against the full model."""
    params = list(model.parameters())
    return {
        "full_numel": sum(p.ds_numel for p in params),
        "full_bytes": sum(p.ds_numel * p.element_size() for p in params),
        "rank_numel": sum(p.ds_tensor.numel() for p in params),
        "rank_bytes": sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params),
    }
