import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from scripts import extrapolate as cli
from grpo.research.extrapolate import (
    extrapolate_trajectory,
    load_adapter_snapshots,
    trajectory_error,
    write_adapter,
)

A, B = "base_model.model.q_proj.lora_A.weight", "base_model.model.q_proj.lora_B.weight"


def _on_a_line(steps, start=0):
    # W(step) = W0 + (step - start) * U for each tensor: an exactly rank-1, linear trajectory.
    w0 = {A: torch.tensor([[1.0, 2.0], [3.0, 4.0]]), B: torch.tensor([[0.5], [-0.5], [0.0]])}
    u = {A: torch.tensor([[0.1, 0.0], [-0.2, 0.3]]), B: torch.tensor([[0.01], [0.02], [-0.03]])}
    return [{n: w0[n] + (s - start) * u[n] for n in w0} for s in steps], w0, u


def test_exact_line_is_recovered():
    steps = [0, 10, 20, 30]
    snaps, w0, u = _on_a_line(steps)
    out = extrapolate_trajectory(snaps, steps, 100)
    # W(100) = W0 + 100 * U, e.g. A[1][1] = 4 + 100 * 0.3 = 34
    for name in w0:
        torch.testing.assert_close(out[name], w0[name] + 100 * u[name])
        assert out[name].dtype == torch.float32
    assert out[A][1, 1].item() == pytest.approx(34.0)


def test_two_snapshots_define_the_line_and_anchor_need_not_be_step_zero():
    snaps, w0, u = _on_a_line([5, 7], start=5)
    out = extrapolate_trajectory(snaps, [5, 7], 11)
    # coordinate grows by |2U| from step 5 to 7 -> at 11 it is 6U: W0 + 6U
    torch.testing.assert_close(out[B], w0[B] + 6 * u[B])


def test_least_squares_fit_by_hand():
    # One tensor of 2 numbers moving along v = (1, 0): coordinates c = 0, 1, 3 at steps 0, 1, 2.
    # s_mean = 1, c_mean = 4/3; b = ((-1)(-4/3) + 0 + (1)(5/3)) / 2 = 3/2; a = 4/3 - 3/2 = -1/6.
    # c(4) = -1/6 + 6 = 35/6 -> W = (35/6, 7)
    snaps = [{"w": torch.tensor([0.0, 7.0], dtype=torch.float64)},
             {"w": torch.tensor([1.0, 7.0], dtype=torch.float64)},
             {"w": torch.tensor([3.0, 7.0], dtype=torch.float64)}]
    out = extrapolate_trajectory(snaps, [0, 1, 2], 4)
    torch.testing.assert_close(out["w"], torch.tensor([35 / 6, 7.0], dtype=torch.float64))


def test_noisy_line_is_close_and_beats_stopping():
    gen = torch.Generator().manual_seed(0)
    steps = list(range(0, 50, 5))  # 10 snapshots
    snaps, w0, u = _on_a_line(steps)
    noisy = [{n: t + 0.02 * torch.randn(t.shape, generator=gen) for n, t in s.items()} for s in snaps]
    noisy[0] = snaps[0]
    out = extrapolate_trajectory(noisy, steps, 100)
    truth = {n: w0[n] + 100 * u[n] for n in w0}
    # noise 0.02 per entry against a 100-step move of size ~10 (||100 U||): error well under 5%
    assert trajectory_error(out, truth, w0) < 0.05
    assert trajectory_error(noisy[-1], truth, w0) > 0.5  # stopping at step 45 is 55% short


def test_frozen_tensor_stays_and_nothing_is_nan():
    snaps = [{"w": torch.ones(3)}, {"w": torch.ones(3)}, {"w": torch.ones(3)}]
    out = extrapolate_trajectory(snaps, [0, 1, 2], 10)
    torch.testing.assert_close(out["w"], torch.ones(3))


def test_inputs_not_mutated():
    snaps, _, _ = _on_a_line([0, 1])
    before = [{n: t.clone() for n, t in s.items()} for s in snaps]
    extrapolate_trajectory(snaps, [0, 1], 5)
    assert all(torch.equal(s[n], b[n]) for s, b in zip(snaps, before) for n in s)


@pytest.mark.parametrize(
    "snaps, steps, match",
    [
        pytest.param([{"w": torch.ones(2)}], [0], "at least 2", id="one-snapshot"),
        pytest.param([{"w": torch.ones(2)}, {"w": torch.ones(2)}], [3, 3], "strictly increasing", id="repeated-step"),
        pytest.param([{"w": torch.ones(2)}, {"w": torch.ones(3)}], [0, 1], "does not match", id="shape-mismatch"),
        pytest.param([{"w": torch.ones(2)}, {"v": torch.ones(2)}], [0, 1], "does not match", id="key-mismatch"),
        pytest.param([{"w": torch.ones(2, dtype=torch.long)}] * 2, [0, 1], "floating-point", id="integer-tensors"),
    ],
)
def test_bad_snapshots_rejected(snaps, steps, match):
    with pytest.raises(ValueError, match=match):
        extrapolate_trajectory(snaps, steps, 5)


def test_trajectory_error_hand_values():
    anchor, actual = {"w": torch.zeros(2)}, {"w": torch.tensor([3.0, 4.0])}  # moved 5
    assert trajectory_error({"w": torch.tensor([3.0, 4.0])}, actual, anchor) == 0.0
    assert trajectory_error(anchor, actual, anchor) == pytest.approx(1.0)
    assert trajectory_error({"w": torch.tensor([3.0, 1.0])}, actual, anchor) == pytest.approx(3 / 5)
    assert trajectory_error({"w": torch.ones(2)}, anchor, anchor) == float("inf")


# ---------------------------------------------------------------- files and CLI

def _fake_run(tmp_path, steps, snapshots):
    for step, snap in zip(steps, snapshots):
        adapter = tmp_path / "checkpoints" / f"step-{step:06d}" / "adapter"
        adapter.mkdir(parents=True)
        save_file(snap, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
        (adapter / "adapter_config.json").write_text(json.dumps({"r": 1, "saved_at": step}))
    return tmp_path


def test_load_snapshots_in_step_order_and_filtered(tmp_path):
    snaps, _, _ = _on_a_line([0, 10, 20])
    run = _fake_run(tmp_path, [20, 0, 10], [snaps[2], snaps[0], snaps[1]])
    (run / "checkpoints" / "step-000030").mkdir()  # a checkpoint without adapter is ignored
    steps, loaded = load_adapter_snapshots(run)
    assert steps == [0, 10, 20]
    torch.testing.assert_close(loaded[2][A], snaps[2][A])
    steps, loaded = load_adapter_snapshots(run, only_steps=[20, 0])
    assert steps == [0, 20] and len(loaded) == 2
    with pytest.raises(FileNotFoundError, match=r"steps \[5\]"):
        load_adapter_snapshots(run, only_steps=[5])


def test_load_snapshots_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        load_adapter_snapshots(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapters"):
        load_adapter_snapshots(tmp_path)


def test_write_adapter_refuses_to_overwrite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    write_adapter(tmp_path / "out", {"w": torch.ones(2)}, src)
    assert (tmp_path / "out" / "adapter_config.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match="already exists"):
        write_adapter(tmp_path / "out", {"w": torch.ones(2)}, src)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        write_adapter(tmp_path / "out2", {"w": torch.ones(2)}, tmp_path)


def test_cli_writes_extrapolated_adapter_and_compares_with_real(tmp_path, capsys):
    steps = [0, 10, 20, 40]
    snaps, w0, u = _on_a_line(steps)
    run = _fake_run(tmp_path / "run", steps, snaps)
    out = tmp_path / "pred"
    report = cli.main([str(run), "--use-first", "2", "--target-step", "40", "--out", str(out)])
    assert json.loads(capsys.readouterr().out) == report
    assert report["used_steps"] == [0, 10]
    written = load_file(out / "adapter_model.safetensors")
    torch.testing.assert_close(written[A], w0[A] + 40 * u[A])
    # config comes from the last used checkpoint (step 10)
    assert json.loads((out / "adapter_config.json").read_text())["saved_at"] == 10
    assert report["relative_weight_error"] == pytest.approx(0.0, abs=1e-6)
    # stopping at step 10 covers 10 of the 40 steps: 30/40 = 0.75 of the move is missing
    assert report["relative_weight_error_if_stopped"] == pytest.approx(0.75)


def test_cli_without_real_target_and_bad_arguments(tmp_path):
    steps = [0, 10, 20]
    snaps, _, _ = _on_a_line(steps)
    run = _fake_run(tmp_path / "run", steps, snaps)
    report = cli.extrapolate_run(run, 3, 100, tmp_path / "pred")
    assert "relative_weight_error" not in report
    with pytest.raises(ValueError, match="at least 2"):
        cli.extrapolate_run(run, 1, 100, tmp_path / "p1")
    with pytest.raises(ValueError, match="holds only 3"):
        cli.extrapolate_run(run, 4, 100, tmp_path / "p2")
    with pytest.raises(ValueError, match="before the first"):
        cli.extrapolate_run(_fake_run(tmp_path / "late", [5, 6], snaps[:2]), 2, 1, tmp_path / "p3")
