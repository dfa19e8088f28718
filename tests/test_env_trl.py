"""Our e-commerce environment in TRL's real GRPOTrainer(environment_factory=...) (trl 1.16, transformers
generation, CPU, the tiny model), and TRL's own checks on CHATML_TOOL_TEMPLATE."""

import pytest

from grpo.environments import CHATML_TOOL_TEMPLATE, HERMES_RESPONSE_TEMPLATE
from grpo.environments.ecom import ProductDiscoveryEnv, ecom_rows
from tests.tiny_model import byte_level_tokenizer

trl = pytest.importorskip("trl")


def tool_tokenizer():
    """The tiny model's tokenizer with a tool-calling template, and that template's format declared to
    transformers' response parser (TRL only knows the exact templates it ships; any other must declare one)."""
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = CHATML_TOOL_TEMPLATE
    tokenizer.response_template = HERMES_RESPONSE_TEMPLATE
    return tokenizer


def test_trl_accepts_the_template_as_is():
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    tokenizer = tool_tokenizer()
    assert supports_tool_calling(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)  # so TRL keeps it rather than swapping in its own


def trainer_for(model_dir, tmp_path, steps=1):
    from datasets import Dataset

    rows = ecom_rows(["discovery"], 4, seed=0, level=0)
    config = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=96,
        max_steps=steps, learning_rate=1e-4, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
        beta=0.0, gradient_checkpointing=False,
    )
    return trl.GRPOTrainer(model=model_dir, args=config, train_dataset=Dataset.from_list(rows),
                           processing_class=tool_tokenizer(), environment_factory=ProductDiscoveryEnv)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_trl_step_with_an_ecom_environment(tiny_model_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, tmp_path)
    trainer.train()
    assert trainer.state.global_step == 1
    environments = trainer.environments
    assert len(environments) == 4 and all(isinstance(e, ProductDiscoveryEnv) for e in environments)
    assert all(e.level == 0 for e in environments)  # reset got the rows' seed and level
    logged = trainer.state.log_history[0]
    # TRL scores with get_reward, logged under the class name; the random model solves nothing: 0 each
    assert logged["rewards/ProductDiscoveryEnv/mean"] == pytest.approx(
        sum(e.get_reward() for e in environments) / 4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trls_tool_loop_calls_our_environments_tools(tiny_model_dir, tmp_path):
    """The random tiny model writes no tool call, so its turns are scripted here (TRL's sampling step only):
    the first turn searches, the second answers. Parsing, running the tool and scoring are TRL's own."""
    trainer = trainer_for(tiny_model_dir, tmp_path)
    tokenizer = trainer.processing_class
    search = '<tool_call>\n{"name": "search_catalog", "arguments": {"query": "charger"}}\n</tool_call><|im_end|>'
    answer = "I could not decide.<|im_end|>"

    def scripted_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        texts = [answer if "<tool_response>" in tokenizer.decode(ids) else search for ids in prompt_ids]
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts], None

    trainer._generate_single_turn = scripted_turn
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] == 1.0 and logged["tools/failure_frequency"] == 0.0
    assert all(e._calls == 1 for e in trainer.environments)  # each environment ran the one search
    # a search but no recommendation: task 0, no ids used, so reward 0
    assert logged["rewards/ProductDiscoveryEnv/mean"] == 0.0
