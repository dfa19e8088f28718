"""Resuming runs no code from a checkpoint: trainer_state.pt is read with torch.load(weights_only=True),
which a state written by the trainer passes and a crafted one does not."""

import json
import os

import pytest
import torch

import train
from grpo.runtime import checkpoint
from grpo.runtime.config import ConfigError
from tests.test_train import tiny_args


class RunsACommand:
    """Unpickled, this runs `touch <marker>`: what a crafted trainer_state.pt can do to `torch.load`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip-format", "legacy-format"])
def test_a_state_that_would_run_a_command_is_refused_without_running_it(tmp_path, zip_format):
    marker = tmp_path / "the-command-ran"
    folder = tmp_path / "checkpoints" / "step-000001"
    folder.mkdir(parents=True)
    state = {"step": 1, "format": checkpoint.FORMAT, "scheduler": RunsACommand(marker)}
    torch.save(state, folder / "trainer_state.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ConfigError, match=r"step-000001: trainer_state.pt holds more than tensors.*--no-resume"):
        checkpoint.read_state(folder)
    assert not marker.exists()
    torch.load(folder / "trainer_state.pt", weights_only=False)  # the file is a real attack: unguarded, it runs
    assert marker.exists()


def test_a_state_the_trainer_wrote_loads_and_resumes(tiny_model_dir, tmp_path):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1))
    state = checkpoint.read_state(tmp_path / "checkpoints" / "step-000001")
    assert state["step"] == 1 and state["format"] == checkpoint.FORMAT
    assert {"scheduler", "optimizer_by_name"} <= state.keys()
    moments = next(iter(state["optimizer_by_name"]["params"].values()))
    assert {"exp_avg", "exp_avg_sq", "master"} <= moments.keys()
    train.main(tiny_args(tiny_model_dir, tmp_path, 2))  # the same command, one step further: resumes from step 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
