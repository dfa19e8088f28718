import pytest

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_model_dir_128(tmp_path_factory):
    """The tiny Llama with hidden size 128: bitsandbytes' 4-bit layers need blocks of 64 on CPU."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama-128"), hidden_size=128))


@pytest.fixture(scope="session")
def tiny_teacher_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (non-zero) B matrices on the tiny model: an on-policy distillation
    teacher that differs from the student."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("teacher-adapter")
    get_peft_model(model, config).save_pretrained(folder)
    return str(folder)
