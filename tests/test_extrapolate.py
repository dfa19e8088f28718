import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from grpo.research.extrapolate import (
    LoraLayer,
    extrapolate_adapter,
    extrapolate_trajectory,
    load_adapter_snapshots,
    lora_layers,
    read_adapter_config,
    trajectory_error,
    write_adapter,
)
from scripts import extrapolate as cli

W, V = "w", "v"
MODULE = "base_model.model.model.layers.0.self_attn.q_proj"
LA, LB = f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"
HEAD = "base_model.model.lm_head.weight"  # a modules_to_save tensor: extrapolated as itself
LORA_CONFIG = {"peft_type": "LORA", "r": 1, "lora_alpha": 2}  # scale 2


def _on_a_line(steps, start=0):
    # W(step) = W0 + (step - start) * U for each tensor: an exactly rank-1, linear trajectory.
    w0 = {W: torch.tensor([[1.0, 2.0], [3.0, 4.0]]), V: torch.tensor([[0.5], [-0.5], [0.0]])}
    u = {W: torch.tensor([[0.1, 0.0], [-0.2, 0.3]]), V: torch.tensor([[0.01], [0.02], [-0.03]])}
    return [{n: w0[n] + (s - start) * u[n] for n in w0} for s in steps], w0, u


# ---------------------------------------------------------------- per tensor

def test_exact_line_is_recovered():
    steps = [0, 10, 20, 30]
    snaps, w0, u = _on_a_line(steps)
    out = extrapolate_trajectory(snaps, steps, 100)
    # W(100) = W0 + 100 * U, e.g. w[1][1] = 4 + 100 * 0.3 = 34
    for name in w0:
        torch.testing.assert_close(out[name], w0[name] + 100 * u[name])
        assert out[name].dtype == torch.float32
    assert out[W][1, 1].item() == pytest.approx(34.0)


def test_two_snapshots_define_the_line_and_anchor_need_not_be_step_zero():
    snaps, w0, u = _on_a_line([5, 7], start=5)
    out = extrapolate_trajectory(snaps, [5, 7], 11)
    # coordinate grows by |2U| from step 5 to 7 -> at 11 it is 6U: W0 + 6U
    torch.testing.assert_close(out[V], w0[V] + 6 * u[V])


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
    with pytest.raises(ValueError, match=match):
        extrapolate_adapter(snaps, steps, 5, [])


def test_trajectory_error_hand_values():
    anchor, actual = {"w": torch.zeros(2)}, {"w": torch.tensor([3.0, 4.0])}  # moved 5
    assert trajectory_error({"w": torch.tensor([3.0, 4.0])}, actual, anchor) == 0.0
    assert trajectory_error(anchor, actual, anchor) == pytest.approx(1.0)
    assert trajectory_error({"w": torch.tensor([3.0, 1.0])}, actual, anchor) == pytest.approx(3 / 5)
    assert trajectory_error({"w": torch.ones(2)}, anchor, anchor) == float("inf")


# ---------------------------------------------------------------- LoRA layers, on the merged ΔW

E = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # (1, 2)^T (1, 1), ||E||_F = sqrt(10)


def _curved_factors(u):
    """B, A of a rank-1 2x2 layer whose B @ A = (1 + u) E moves on a line while B and A do not:
    B = f(u) (1, 2)^T, A = (1 + u) / f(u) (1, 1) with f(u) = 1 + u (2 - u) (1, 2, 1, -7 at u = 0, 1, 2, 4)."""
    f = 1 + u * (2 - u)
    return {LB: f * torch.tensor([[1.0], [2.0]]), LA: (1 + u) / f * torch.tensor([[1.0, 1.0]])}


def _merged(snapshot, scale=2.0):
    return scale * snapshot[LB].double() @ snapshot[LA].double()


def test_linear_merged_trajectory_is_extrapolated_exactly_where_factors_curve():
    # Steps 0, 1, 2: B = (1,2), (2,4), (1,2) and A = (1,1), (1,1), (3,3) (as columns/rows), so
    # ΔW/scale = B A = E, 2E, 3E; scale = lora_alpha / r = 2 / 1.
    # Merged fit: deltas from ΔW_0 are 2E, 4E -> v = E / sqrt(10), coordinates 0, 2 sqrt(10), 4 sqrt(10):
    # slope 2 sqrt(10), intercept 0 -> at step 4, ΔW = 2E + 8E = 10E = [[10, 10], [20, 20]].
    steps = [0, 1, 2]
    snaps = [_curved_factors(u) for u in steps]
    layer = LoraLayer(LA, LB, 2.0)
    out, truncation = extrapolate_adapter(snaps, steps, 4, [layer])
    torch.testing.assert_close(_merged(out), torch.tensor([[10.0, 10.0], [20.0, 20.0]], dtype=torch.float64))
    assert truncation == pytest.approx(0.0, abs=1e-7)  # the prediction has rank 1 = r
    # Symmetric split: B^T B = A A^T = σ / scale with σ = ||10E|| = 10 sqrt(10): 5 sqrt(10) each.
    assert (out[LB] ** 2).sum().item() == pytest.approx(5 * math.sqrt(10))
    assert (out[LA] ** 2).sum().item() == pytest.approx(5 * math.sqrt(10))
    assert out[LA].dtype == out[LB].dtype == torch.float32
    # The old per-tensor fit of B and A: B's coordinates 0, sqrt(5), 0 give slope 0 and B(4) = (4/3)(1, 2);
    # A's coordinates 0, 0, 2 sqrt(2) give slope sqrt(2), intercept -sqrt(2)/3, A(4) = (14/3)(1, 1), so
    # ΔW = 2 (56/9) E = 12.4 E against the truth 10 E: 2 (11/9) E off, 11/36 = 31% of the 8 E move.
    per_tensor = extrapolate_trajectory(snaps, steps, 4)
    torch.testing.assert_close(_merged(per_tensor), 2 * 56 / 9 * E.double())
    assert trajectory_error(per_tensor, {LB: 5 * E[:, :1], LA: torch.ones(1, 2)}, snaps[0], [layer]) == pytest.approx(
        11 / 36
    )


def test_prediction_above_rank_r_is_truncated_and_the_loss_reported():
    # r = 1, scale 2. Step 0: B = e1, A = e1^T -> ΔW_0 = diag(2, 0); step 1: B = e2, A = e2^T -> ΔW_1 = diag(0, 2).
    # k = 2, target 2: ΔW = ΔW_0 + 2 (ΔW_1 - ΔW_0) = diag(-2, 4), rank 2, singular values 4 and 2.
    # Rank 1 keeps diag(0, 4) (B = (0, sqrt 2)^T, A = (0, sqrt 2): sqrt(4 / 2) each) and drops 2;
    # the predicted move is diag(-4, 4), norm 4 sqrt(2) -> truncation 2 / (4 sqrt 2) = 0.354.
    e1, e2 = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    snaps = [{LB: e1, LA: e1.T}, {LB: e2, LA: e2.T}]
    out, truncation = extrapolate_adapter(snaps, [0, 1], 2, [LoraLayer(LA, LB, 2.0)])
    torch.testing.assert_close(_merged(out), torch.tensor([[0.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    assert out[LB].abs().flatten().tolist() == pytest.approx([0.0, math.sqrt(2)])
    assert truncation == pytest.approx(2 / (4 * math.sqrt(2)))


def _dense_relex(merged, steps, target):
    """Reference on explicit matrices: merged (k, d_out, d_in) float64 -> predicted (d_out, d_in), by the SVD
    of the (k, D) delta matrix and a least-squares line through (step_i, coordinate_i)."""
    deltas = (merged - merged[0]).flatten(1)  # (k, D)
    direction = torch.linalg.svd(deltas, full_matrices=False).Vh[0]  # (D,)
    design = torch.stack([torch.ones(len(steps)), torch.tensor(steps, dtype=torch.float64)], dim=1)  # (k, 2)
    intercept, slope = torch.linalg.lstsq(design, (deltas @ direction)[:, None]).solution[:, 0]
    return merged[0] + ((intercept + slope * target) * direction).reshape(merged.shape[1:])


def _truncate(matrix, rank):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank] * s[:rank] @ vh[:rank], s


def test_factored_fit_matches_the_dense_reference_and_drops_the_tail_singular_values():
    gen = torch.Generator().manual_seed(1)
    steps, target, rank, scale = [0, 3, 5, 9], 20, 2, 8.0
    b0, a0 = torch.randn(6, rank, generator=gen), torch.randn(rank, 5, generator=gen)
    db, da = torch.randn(6, rank, generator=gen), torch.randn(rank, 5, generator=gen)
    snaps = [
        {LB: b0 + 0.1 * s * db + 0.05 * torch.randn(6, rank, generator=gen),
         LA: a0 + 0.1 * s * da + 0.05 * torch.randn(rank, 5, generator=gen)}
        for s in steps
    ]
    out, truncation = extrapolate_adapter(snaps, steps, target, [LoraLayer(LA, LB, scale)])
    merged = torch.stack([_merged(s, scale) for s in snaps])  # (4, 6, 5)
    predicted = _dense_relex(merged, steps, target)
    expected, singular = _truncate(predicted, rank)
    assert singular[rank] > 0.01 * singular[0]  # the prediction really has rank > r
    torch.testing.assert_close(_merged(out, scale), expected, rtol=1e-5, atol=1e-5)
    dropped = singular[rank:].square().sum().sqrt()  # ||predicted - expected||_F
    torch.testing.assert_close((predicted - expected).norm(), dropped)
    assert truncation == pytest.approx(float(dropped / (predicted - merged[0]).norm()), rel=1e-6)
    # B^T B = A A^T = diag(σ_1, σ_2) / scale
    split = torch.diag(singular[:rank] / scale)
    torch.testing.assert_close(out[LB].double().T @ out[LB].double(), split, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[LA].double() @ out[LA].double().T, split, rtol=1e-5, atol=1e-6)


def test_lora_layer_that_never_moved_or_is_zero_stays_without_nan():
    moving = {LB: torch.tensor([[1.0], [2.0]]), LA: torch.tensor([[3.0, 4.0]])}
    zero_b = {LB: torch.zeros(2, 1), LA: torch.tensor([[3.0, 4.0]])}  # peft's initial state: ΔW = 0
    for snap in (moving, zero_b):
        out, truncation = extrapolate_adapter([snap, snap, snap], [0, 1, 2], 10, [LoraLayer(LA, LB, 2.0)])
        torch.testing.assert_close(_merged(out), _merged(snap))
        assert truncation == 0.0 and not any(t.isnan().any() for t in out.values())


def test_other_tensors_keep_the_per_tensor_path():
    steps = [0, 1, 2]
    snaps = [{**_curved_factors(u), HEAD: torch.tensor([1.0, 2.0]) + u * torch.tensor([0.5, -1.0])} for u in steps]
    out, _ = extrapolate_adapter(snaps, steps, 4, [LoraLayer(LA, LB, 2.0)])
    torch.testing.assert_close(out[HEAD], torch.tensor([3.0, -2.0]))  # (1, 2) + 4 (0.5, -1)
    assert list(out) == list(snaps[0])


def test_trajectory_error_compares_merged_weights_with_the_scale():
    # scale 2. Anchor: B = 0 (ΔW = 0), head (0, 0). Actual: B = (1, 0)^T, A = (3, 4) -> ΔW = 2 [[3, 4], [0, 0]],
    # ||ΔW|| = 10; head still (0, 0): moved = 10. Predicted: the same ΔW as (2B, A/2), head (0, 5):
    # error = 5 (the head alone) -> 0.5. With scale 1 it would be 5 / 5 = 1; per tensor it is not 0.5 either.
    layer = LoraLayer(LA, LB, 2.0)
    anchor = {LB: torch.zeros(2, 1), LA: torch.tensor([[3.0, 4.0]]), HEAD: torch.zeros(2)}
    actual = {LB: torch.tensor([[1.0], [0.0]]), LA: torch.tensor([[3.0, 4.0]]), HEAD: torch.zeros(2)}
    predicted = {LB: torch.tensor([[2.0], [0.0]]), LA: torch.tensor([[1.5, 2.0]]), HEAD: torch.tensor([0.0, 5.0])}
    assert trajectory_error(predicted, actual, anchor, [layer]) == pytest.approx(0.5)
    same_head = {**predicted, HEAD: torch.zeros(2)}
    assert trajectory_error(same_head, actual, anchor, [layer]) == pytest.approx(0.0, abs=1e-7)
    assert trajectory_error(predicted, actual, anchor) != pytest.approx(0.5)


# ---------------------------------------------------------------- reading the LoRA layers

def _two_layer_adapter(rank0=4, rank1=4):
    tensors = {}
    for i, rank in enumerate((rank0, rank1)):
        for proj in ("q_proj", "v_proj"):
            module = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{module}.lora_A.weight"] = torch.zeros(rank, 8)
            tensors[f"{module}.lora_B.weight"] = torch.zeros(8, rank)
    return tensors


@pytest.mark.parametrize(
    "config, rank1, expected",
    [
        # keys q0, v0, q1, v1: scale = alpha / r
        pytest.param({}, 4, [2.0, 2.0, 2.0, 2.0], id="alpha-over-r"),
        # rsLoRA: alpha / sqrt(r) = 8 / 2
        pytest.param({"use_rslora": True}, 4, [4.0, 4.0, 4.0, 4.0], id="rslora"),
        # alpha_pattern matches every q_proj: 6 / 4
        pytest.param({"alpha_pattern": {"q_proj": 6}}, 4, [1.5, 2.0, 1.5, 2.0], id="alpha-pattern"),
        # rank_pattern gives layer 1's q_proj r = 2: 8 / 2 (its A has 2 rows; v_proj of layer 1 has 2 too)
        pytest.param({"rank_pattern": {"layers.1.self_attn.q_proj": 2, "layers.1.self_attn.v_proj": 2}}, 2,
                     [2.0, 2.0, 4.0, 4.0], id="rank-pattern"),
    ],
)
def test_lora_scales(config, rank1, expected):
    layers = lora_layers(_two_layer_adapter(rank1=rank1), {"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config})
    by_module = {layer.a_key.split("model.layers.")[1].removesuffix(".lora_A.weight"): layer.scale for layer in layers}
    names = ["0.self_attn.q_proj", "0.self_attn.v_proj", "1.self_attn.q_proj", "1.self_attn.v_proj"]
    assert [by_module[n] for n in names] == pytest.approx(expected)


def test_embedding_lora_is_a_layer_too():
    module = "base_model.model.model.embed_tokens"
    tensors = {f"{module}.lora_embedding_A": torch.zeros(2, 10), f"{module}.lora_embedding_B": torch.zeros(4, 2),
               f"{module}.base_layer.weight": torch.zeros(10, 4)}
    assert lora_layers(tensors, {"peft_type": "LORA", "r": 2, "lora_alpha": 8}) == [
        LoraLayer(f"{module}.lora_embedding_A", f"{module}.lora_embedding_B", 4.0)
    ]


@pytest.mark.parametrize(
    "tensors, config, match",
    [
        pytest.param({LA: torch.zeros(1, 2), LB: torch.zeros(2, 1)}, {"peft_type": "PREFIX_TUNING"}, "not a LoRA",
                     id="other-peft-method"),
        pytest.param({LA: torch.zeros(1, 2), LB: torch.zeros(2, 1)}, {"peft_type": "LORA", "r": 1}, "missing",
                     id="no-alpha"),
        pytest.param({LA: torch.zeros(1, 2), LB: torch.zeros(2, 1)}, {**LORA_CONFIG, "use_dora": True}, "DoRA",
                     id="dora"),
        pytest.param({LA: torch.zeros(1, 2)}, LORA_CONFIG, "no .*lora_B", id="a-without-b"),
        pytest.param({LB: torch.zeros(2, 1)}, LORA_CONFIG, "without a partner", id="b-without-a"),
        pytest.param({LA: torch.zeros(1, 2, 3, 3), LB: torch.zeros(2, 1, 1, 1)}, LORA_CONFIG, "matrix",
                     id="conv-lora"),
        pytest.param({LA: torch.zeros(1, 2), LB: torch.zeros(2, 2)}, LORA_CONFIG, "matrix", id="ranks-disagree"),
        pytest.param({LA: torch.zeros(2, 2), LB: torch.zeros(2, 2)}, LORA_CONFIG, "rank 1 .* 2 rows",
                     id="config-of-other-rank"),
        pytest.param({LA: torch.zeros(1, 2), LB: torch.zeros(2, 1)}, {**LORA_CONFIG, "lora_alpha": 0}, "lora_alpha > 0",
                     id="zero-alpha"),
        pytest.param({LA: torch.zeros(1, 2), LB: torch.zeros(2, 1), f"{MODULE}.lora_magnitude_vector": torch.ones(2)},
                     LORA_CONFIG, "unsupported kind", id="magnitude-vector"),
    ],
)
def test_bad_lora_adapters_rejected(tensors, config, match):
    with pytest.raises(ValueError, match=match):
        lora_layers(tensors, config)


# ---------------------------------------------------------------- files and CLI

def _fake_run(tmp_path, steps, snapshots, config=LORA_CONFIG):
    for step, snap in zip(steps, snapshots):
        adapter = tmp_path / "checkpoints" / f"step-{step:06d}" / "adapter"
        adapter.mkdir(parents=True)
        save_file(snap, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "saved_at": step}))
    return tmp_path


def test_load_snapshots_in_step_order_and_filtered(tmp_path):
    snaps, _, _ = _on_a_line([0, 10, 20])
    run = _fake_run(tmp_path, [20, 0, 10], [snaps[2], snaps[0], snaps[1]])
    (run / "checkpoints" / "step-000030").mkdir()  # a checkpoint without adapter is ignored
    steps, loaded = load_adapter_snapshots(run)
    assert steps == [0, 10, 20]
    torch.testing.assert_close(loaded[2][W], snaps[2][W])
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


def test_read_adapter_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{'r': 1")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(LORA_CONFIG))
    assert read_adapter_config(tmp_path) == LORA_CONFIG


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


def _curved_run_snapshot(step):
    # steps 0, 10, 20, 40 are u = 0, 1, 2, 4 of _curved_factors; the head moves on a line.
    u = step / 10
    return {**_curved_factors(u), HEAD: torch.tensor([1.0, 2.0]) + u * torch.tensor([0.5, -1.0])}


def test_cli_writes_extrapolated_adapter_and_compares_merged_weights_with_real(tmp_path, capsys):
    steps = [0, 10, 20, 40]
    run = _fake_run(tmp_path / "run", steps, [_curved_run_snapshot(s) for s in steps])
    out = tmp_path / "pred"
    report = cli.main([str(run), "--use-first", "2", "--target-step", "40", "--out", str(out)])
    assert json.loads(capsys.readouterr().out) == report
    assert report["used_steps"] == [0, 10]
    written = load_file(out / "adapter_model.safetensors")
    # from ΔW = 2E, 4E at steps 0, 10: 2E (1 + 4) = 10E at step 40; the head (1, 2) + 4 (0.5, -1)
    torch.testing.assert_close(_merged(written), 10 * E.double())
    torch.testing.assert_close(written[HEAD], torch.tensor([3.0, -2.0]))
    # config comes from the last used checkpoint (step 10)
    assert json.loads((out / "adapter_config.json").read_text())["saved_at"] == 10
    assert report["rank_truncation_error"] == pytest.approx(0.0, abs=1e-6)
    # the real step-40 adapter has other factors (B = -7 (1, 2)) but the same ΔW: no error
    assert report["relative_weight_error"] == pytest.approx(0.0, abs=1e-6)
    # stopping at step 10 covers 1 of the 4 units of the move, in ΔW (2E of 8E) and in the head: 0.75 missing
    assert report["relative_weight_error_if_stopped"] == pytest.approx(0.75)


def test_cli_without_real_target_and_bad_arguments(tmp_path):
    steps = [0, 10, 20]
    snaps = [_curved_run_snapshot(s) for s in steps]
    run = _fake_run(tmp_path / "run", steps, snaps)
    report = cli.extrapolate_run(run, 3, 100, tmp_path / "pred")
    assert "relative_weight_error" not in report
    with pytest.raises(ValueError, match="at least 2"):
        cli.extrapolate_run(run, 1, 100, tmp_path / "p1")
    with pytest.raises(ValueError, match="holds only 3"):
        cli.extrapolate_run(run, 4, 100, tmp_path / "p2")
    with pytest.raises(ValueError, match="before the first"):
        cli.extrapolate_run(_fake_run(tmp_path / "late", [5, 6], snaps[:2]), 2, 1, tmp_path / "p3")


def test_cli_refuses_checkpoints_of_other_scales(tmp_path):
    snaps = [_curved_run_snapshot(s) for s in (0, 10)]
    run = _fake_run(tmp_path / "run", [0], snaps[:1], config={**LORA_CONFIG, "lora_alpha": 4})
    _fake_run(run, [10], snaps[1:])
    with pytest.raises(ValueError, match="step 0 gives other LoRA layers or scales"):
        cli.extrapolate_run(run, 2, 40, tmp_path / "pred")


# ---------------------------------------------------------------- round trip through peft

@pytest.mark.parametrize(
    "lora_kwargs",
    [
        pytest.param({"r": 2, "lora_alpha": 8, "modules_to_save": ["lm_head"]}, id="alpha-over-r+modules-to-save"),
        pytest.param({"r": 2, "lora_alpha": 6, "use_rslora": True, "rank_pattern": {"layers.1.self_attn.q_proj": 3},
                      "alpha_pattern": {"v_proj": 5}}, id="rslora+patterns"),
    ],
)
def test_written_adapter_loads_in_peft_with_the_predicted_merged_weights(tiny_model_dir, tmp_path, lora_kwargs):
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer as PeftLoraLayer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False, **lora_kwargs)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(tmp_path / "init")
    start = load_file(tmp_path / "init" / "adapter_model.safetensors")
    drift = {n: torch.randn_like(t) for n, t in start.items()}
    steps, target = [0, 2, 4], 10
    snaps = [{n: t + 0.05 * s * drift[n] + 0.02 * torch.randn_like(t) for n, t in start.items()} for s in steps]
    run = tmp_path / "run"
    for step, snap in zip(steps, snaps):
        adapter = run / "checkpoints" / f"step-{step:06d}" / "adapter"
        adapter.mkdir(parents=True)
        save_file(snap, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
        (adapter / "adapter_config.json").write_text((tmp_path / "init" / "adapter_config.json").read_text())
    report = cli.extrapolate_run(run, 3, target, tmp_path / "pred")

    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "pred")
    peft_scales = {n.removeprefix("base_model.model."): m.scaling["default"]
                   for n, m in loaded.named_modules() if isinstance(m, PeftLoraLayer)}
    ours = {layer.a_key.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): layer.scale
            for layer in lora_layers(snaps[-1], read_adapter_config(tmp_path / "pred"))}
    assert ours == pytest.approx(peft_scales) and len(ours) == 4
    merged = dict(loaded.merge_and_unload().named_parameters())
    dropped = moved = 0.0
    for module, scale in peft_scales.items():
        key = f"base_model.model.{module}"
        history = torch.stack([scale * s[f"{key}.lora_B.weight"].double() @ s[f"{key}.lora_A.weight"].double()
                               for s in snaps])  # (3, d_out, d_in)
        predicted = _dense_relex(history, steps, target)
        expected, _ = _truncate(predicted, snaps[0][f"{key}.lora_A.weight"].shape[0])
        delta = merged[f"{module}.weight"].double() - base[f"{module}.weight"].double()
        torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-5)
        dropped += float((predicted - expected).square().sum())
        moved += float((predicted - history[0]).square().sum())
    assert report["rank_truncation_error"] == pytest.approx(math.sqrt(dropped / moved), rel=1e-5)
    assert report["rank_truncation_error"] > 0.01  # k = 3 noisy rank-r snapshots: the prediction has rank > r
    if "modules_to_save" in lora_kwargs:
        head = torch.stack([s["base_model.model.lm_head.weight"].double().flatten() for s in snaps])  # (3, D)
        expected_head = _dense_relex(head[:, None, :], steps, target)[0]
        torch.testing.assert_close(merged["lm_head.weight"].double().flatten(), expected_head, rtol=1e-4, atol=1e-5)
