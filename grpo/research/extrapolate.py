"""Trajectory extrapolation of LoRA adapters, after RELEX (Wei et al. 2026, arXiv:2605.21468).

RELEX observes that RLVR weight trajectories are nearly rank-1 and that the position along that
one direction grows nearly linearly with the step. So from the first k checkpoints one can fit
the direction and the line, and write down a later checkpoint without training to it.

RELEX is linear in weight space, so for a LoRA-adapted module we fit the merged weight change
ΔW = scale · B @ A (B (d_out, r), A (r, d_in); scale = lora_alpha / r, or lora_alpha / sqrt(r)
under rsLoRA), not A and B one by one: extending A and B each on its own line makes the predicted
B(t) @ A(t) quadratic in t, and A and B can move along curves (B Q, Q^-1 A for any invertible Q)
while ΔW moves on a line. The predicted ΔW is then written back as a rank-r (B, A) pair by SVD. What
that loses: the prediction is a combination of k rank-r snapshots, so its rank can reach k·r; the
adapter keeps its top r singular values, and the part dropped (its Frobenius norm is the root sum
of squares of the other singular values) is reported by `extrapolate_adapter`. Other trainable
tensors of the adapter file (modules_to_save, biases) are extrapolated tensor by tensor.

ΔW is never formed: the inner products <ΔW_i, ΔW_j> come from r x r products of the factors, and
the prediction sum_i c_i ΔW_i = [c_0 B_0 | ... | c_{k-1} B_{k-1}] @ [A_0; ...; A_{k-1}] is
decomposed through QR of these two stacked factors, so memory grows as (d_out + d_in)·k·r, not
d_out·d_in. The fitted B, A do not depend on `scale` (the fit is linear and the split symmetric);
the scale weighs layers against each other and against plain tensors in the figures reported.

`extrapolate_trajectory`, `extrapolate_adapter`, `lora_layers` and `trajectory_error` are pure;
the I/O functions read and write adapters in the run layout `RUN_DIR/checkpoints/step-{N:06d}/adapter/`
of peft's `save_pretrained` (`adapter_model.safetensors` + `adapter_config.json`).
"""

import json
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_STEP_DIR = re.compile(r"step-(\d+)")
# peft's names for the two factors of a LoRA layer in a saved adapter: Linear, then Embedding (whose
# weight change is (B @ A)^T; the transpose changes neither the fit nor the norms).
_FACTOR_SUFFIXES = (("lora_A.weight", "lora_B.weight"), ("lora_embedding_A", "lora_embedding_B"))
_PEFT_PREFIX = "base_model.model."  # what peft's save_pretrained puts before the base model's module names


@dataclass(frozen=True)
class LoraLayer:
    """One LoRA-adapted module of an adapter file: ΔW = scale · tensors[b_key] @ tensors[a_key]."""

    a_key: str  # A, (r, d_in)
    b_key: str  # B, (d_out, r)
    scale: float


def _line_weights(gram: torch.Tensor, steps: torch.Tensor, target_step: float) -> torch.Tensor:
    """The RELEX fit, on the Gram matrix of the deltas from the anchor.

    gram: (k-1, k-1) float64, gram[i, j] = <D_i, D_j> for the deltas D_i = X_i - X_0 of snapshots
    1..k-1 from the anchor X_0; steps: (k,) float64. Returns w (k-1,) float64 such that the
    prediction is X_0 + sum_i w_i D_i. With M the (k, D) delta matrix (row 0 zero) and (σ², u) the
    top eigenpair of gram = M M^T, v = sum_i u_i D_i / σ is M's top right-singular vector and the
    coordinates are c_i = D_i . v = σ u_i (RELEX's code also goes through the Gram matrix).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    if eigenvalues[-1] <= 0:  # nothing moved
        return torch.zeros_like(gram[0])
    sigma, u = eigenvalues[-1].sqrt(), eigenvectors[:, -1]  # (), (k-1,)
    coords = torch.cat([torch.zeros_like(u[:1]), sigma * u])  # (k,); the anchor sits at 0
    steps = steps.to(coords.device)
    centered_steps = steps - steps.mean()
    slope = (centered_steps * (coords - coords.mean())).sum() / (centered_steps**2).sum()
    intercept = coords.mean() - slope * steps.mean()
    return (intercept + slope * target_step) * u / sigma


def _extrapolate_tensor(history: torch.Tensor, steps: torch.Tensor, target_step: float) -> torch.Tensor:
    """history: (k, D) float64 flattened snapshots, steps: (k,) float64. Returns (D,) float64."""
    anchor = history[0]  # (D,)
    deltas = history[1:] - anchor  # (k-1, D)
    return anchor + _line_weights(deltas @ deltas.T, steps, target_step) @ deltas


def _frobenius_products(bs: torch.Tensor, as_: torch.Tensor) -> torch.Tensor:
    """bs: (n, d_out, r), as_: (n, r, d_in). Returns (n, n): [i, j] = <B_i @ A_i, B_j @ A_j>_F
    = sum((B_i^T B_j) * (A_i A_j^T)), without forming any B_i @ A_i."""
    bb = torch.einsum("iar,jas->ijrs", bs, bs)  # (n, n, r, r)
    aa = torch.einsum("ird,jsd->ijrs", as_, as_)  # (n, n, r, r)
    return (bb * aa).sum(dim=(-2, -1))


def _extrapolate_lora_layer(
    bs: torch.Tensor, as_: torch.Tensor, scale: float, steps: torch.Tensor, target_step: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """bs: (k, d_out, r), as_: (k, r, d_in) float64 snapshots of one layer; steps: (k,) float64.

    Returns (B (d_out, r), A (r, d_in), dropped, moved): scale · B @ A is the rank-r truncation of
    the predicted ΔW, with its singular values split evenly between B and A; dropped = ||predicted
    - truncation||_F^2 (the square sum of the singular values past r), moved = ||predicted - ΔW_0||_F^2.
    """
    k, d_out, rank = bs.shape
    products = scale**2 * _frobenius_products(bs, as_)  # (k, k): <ΔW_i, ΔW_j>
    # (k-1, k-1): <ΔW_i - ΔW_0, ΔW_j - ΔW_0>
    gram = products[1:, 1:] - products[1:, :1] - products[:1, 1:] + products[0, 0]
    weights = _line_weights(gram, steps, target_step)  # (k-1,)
    coeffs = torch.cat([1 - weights.sum(dim=0, keepdim=True), weights])  # (k,): predicted ΔW = sum_i c_i ΔW_i
    left = (scale * coeffs[:, None, None] * bs).permute(1, 0, 2).reshape(d_out, k * rank)  # [c_0 s B_0 | ...]
    right = as_.reshape(k * rank, -1)  # (k r, d_in): [A_0; A_1; ...]
    q_left, r_left = torch.linalg.qr(left)  # (d_out, p), (p, k r)
    q_right, r_right = torch.linalg.qr(right.T)  # (d_in, q), (q, k r)
    # predicted ΔW = left @ right = q_left (r_left r_right^T) q_right^T = q_left u diag(singular) vh q_right^T
    u, singular, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    root = (singular[:rank] / scale).sqrt()  # so that scale · B @ A carries singular[:rank]
    b = (q_left @ u[:, :rank]) * root  # (d_out, <= r)
    a = root[:, None] * (vh[:rank] @ q_right.T)  # (<= r, d_in)
    missing = rank - root.shape[0]  # only when r exceeds d_out or d_in
    b, a = torch.nn.functional.pad(b, (0, missing)), torch.nn.functional.pad(a, (0, 0, 0, missing))
    return b, a, (singular[rank:] ** 2).sum(), weights @ gram @ weights


def _check_snapshots(snapshots: list[dict[str, torch.Tensor]], steps: list[int]) -> None:
    if len(snapshots) < 2 or len(snapshots) != len(steps):
        raise ValueError(
            f"extrapolation needs at least 2 snapshots with one step each, got {len(snapshots)} snapshots "
            f"and {len(steps)} steps; save more checkpoints or use more of them"
        )
    if any(later <= earlier for earlier, later in pairwise(steps)):
        raise ValueError(f"snapshot steps must be strictly increasing, got {steps}")
    first = snapshots[0]
    for step, snapshot in zip(steps, snapshots):
        names = set(snapshot) | set(first)
        mismatched = sorted(
            n for n in names if n not in snapshot or n not in first or snapshot[n].shape != first[n].shape
        )
        if mismatched:
            raise ValueError(
                f"snapshot at step {step} does not match the one at step {steps[0]} (tensors {mismatched[:3]}); "
                "all snapshots must come from the same adapter configuration"
            )
    integer = sorted(name for name, tensor in first.items() if not tensor.is_floating_point())
    if integer:
        raise ValueError(
            f"tensor {integer[0]!r} has dtype {first[integer[0]].dtype}; "
            "only floating-point weights can be extrapolated"
        )


def extrapolate_trajectory(
    snapshots: list[dict[str, torch.Tensor]], steps: list[int], target_step: int
) -> dict[str, torch.Tensor]:
    """Predict the weights at `target_step` from k >= 2 snapshots taken at increasing `steps`, tensor by tensor.

    snapshots: k dicts name -> tensor, same names and shapes in each. Returns a new dict of the same
    names, shapes and dtypes. Per tensor:
      1. M = stack(flatten(W_i) - flatten(W_0)) for i = 0..k-1, shape (k, D) (row 0 is zero);
      2. v = top right-singular vector of M (unit (D,)): the rank-1 subspace of the trajectory;
      3. c_i = M_i . v, the position of snapshot i along v;
      4. ordinary least squares c_i ~ a + b * step_i over all k points (the anchor's (step_0, 0)
         included): b = sum((s - s_mean)(c - c_mean)) / sum((s - s_mean)^2), a = c_mean - b*s_mean;
      5. W_target = W_0 + (a + b * target_step) * v, reshaped.
    With k = 2 the line runs exactly through both snapshots; a tensor that never moved (M = 0)
    is returned as W_0. The sign of v cancels between steps 3 and 5. Computed in float64.
    RELEX takes its deltas from the base model and fits its points (steps >= 1) with a free
    intercept; here the anchor is the first snapshot given, so no base model is needed.
    For the A and B of a LoRA adapter use `extrapolate_adapter`, which fits their product.
    """
    _check_snapshots(snapshots, steps)
    step_values = torch.tensor(steps, dtype=torch.float64)  # (k,)
    extrapolated = {}
    for name, anchor in snapshots[0].items():
        history = torch.stack([s[name].reshape(-1).double() for s in snapshots])  # (k, D)
        predicted = _extrapolate_tensor(history, step_values, float(target_step))  # (D,)
        extrapolated[name] = predicted.reshape(anchor.shape).to(anchor.dtype)
    return extrapolated


def extrapolate_adapter(
    snapshots: list[dict[str, torch.Tensor]], steps: list[int], target_step: int, layers: Sequence[LoraLayer]
) -> tuple[dict[str, torch.Tensor], float]:
    """Predict a LoRA adapter at `target_step`: each layer of `layers` on its merged ΔW, the rest per tensor.

    snapshots and steps as for `extrapolate_trajectory`; layers from `lora_layers`. For each layer,
    steps 1-5 of `extrapolate_trajectory` run on ΔW_i = scale · B_i @ A_i (the same anchor; with
    k = 2 the line runs through both ΔW); the predicted ΔW is cut to the rank r of the snapshots by SVD, U S V^T -> B = U sqrt(S/scale),
    A = sqrt(S/scale) V^T, so that peft, loading the same adapter_config.json, applies exactly the
    truncation. Returns (tensors, truncation): the adapter's tensors (names, shapes, dtypes of the
    snapshots) and ||predicted - truncated|| / ||predicted - ΔW_0|| with Frobenius norms over all
    layers together: how much of the predicted move the rank-r adapter leaves out (0 if none moved).
    """
    _check_snapshots(snapshots, steps)
    step_values = torch.tensor(steps, dtype=torch.float64)  # (k,)
    extrapolated, dropped, moved = {}, 0.0, 0.0
    for layer in layers:
        bs = torch.stack([s[layer.b_key].double() for s in snapshots])  # (k, d_out, r)
        as_ = torch.stack([s[layer.a_key].double() for s in snapshots])  # (k, r, d_in)
        b, a, layer_dropped, layer_moved = _extrapolate_lora_layer(
            bs, as_, layer.scale, step_values, float(target_step)
        )
        extrapolated[layer.b_key] = b.to(snapshots[0][layer.b_key].dtype)
        extrapolated[layer.a_key] = a.to(snapshots[0][layer.a_key].dtype)
        dropped, moved = dropped + float(layer_dropped), moved + float(layer_moved)
    factors = {key for layer in layers for key in (layer.a_key, layer.b_key)}
    rest = [{name: t for name, t in s.items() if name not in factors} for s in snapshots]
    extrapolated.update(extrapolate_trajectory(rest, steps, target_step))
    truncation = 0.0 if moved == 0.0 else math.sqrt(dropped / moved)
    return {name: extrapolated[name] for name in snapshots[0]}, truncation


def _lora_scale(config: dict, module: str, rank: int) -> float:
    """peft's scale for `module` (a base-model module name): alpha / r, or alpha / sqrt(r) with use_rslora,
    where rank_pattern and alpha_pattern override r and lora_alpha for the modules they match."""
    # peft's own matching of the pattern keys, so that each layer gets the scale peft gives it
    from peft.utils.other import get_pattern_key

    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), config["r"])
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
    if not alpha > 0:
        raise ValueError(f"{ADAPTER_CONFIG} gives lora_alpha {alpha} to {module}; the LoRA scale needs lora_alpha > 0")
    if r != rank:
        raise ValueError(
            f"{ADAPTER_CONFIG} gives rank {r} to {module} but its LoRA A has {rank} rows; "
            "the config does not belong to these weights"
        )
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def lora_layers(tensors: dict[str, torch.Tensor], config: dict) -> list[LoraLayer]:
    """The LoRA layers of one adapter snapshot: its A/B pairs with peft's scale from `config`.

    tensors: an adapter file's name -> tensor (as peft saves them); config: its adapter_config.json.
    Refuses what cannot be extrapolated on ΔW = scale · B @ A: another peft method, DoRA (its weight
    is a magnitude times the normalised W + ΔW), a factor without its partner, factors that are not
    matrices (convolution LoRA) and LoRA tensors of other kinds.
    """
    missing = [key for key in ("peft_type", "r", "lora_alpha") if key not in config]
    if missing or config["peft_type"] != "LORA":
        raise ValueError(
            f"{ADAPTER_CONFIG} is not a LoRA config (peft_type {config.get('peft_type')!r}, missing {missing}); "
            "only LoRA adapters can be extrapolated on their merged weights"
        )
    if config.get("use_dora"):
        raise ValueError(
            f"{ADAPTER_CONFIG} has use_dora: true; DoRA's weight is a magnitude times the normalised W + ΔW, "
            "not W + ΔW, so extrapolating ΔW would not extrapolate the weights; train with plain LoRA"
        )
    layers, paired = [], set()
    for a_suffix, b_suffix in _FACTOR_SUFFIXES:
        for a_key in sorted(n for n in tensors if n.endswith("." + a_suffix)):
            module = a_key[: -len(a_suffix) - 1]
            b_key = f"{module}.{b_suffix}"
            if b_key not in tensors:
                raise ValueError(f"adapter has {a_key} but no {b_key}; the file is incomplete")
            a, b = tensors[a_key], tensors[b_key]
            if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
                raise ValueError(
                    f"LoRA factors of {module} have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; only matrix "
                    "factors B (d_out, r) @ A (r, d_in) (Linear and Embedding layers) can be extrapolated"
                )
            layers.append(LoraLayer(a_key, b_key, _lora_scale(config, module.removeprefix(_PEFT_PREFIX), a.shape[0])))
            paired |= {a_key, b_key}
    strays = sorted(n for n in tensors if ".lora_" in n and n not in paired and not n.endswith(".lora_B.bias"))
    if strays:
        raise ValueError(
            f"adapter tensors {strays[:3]} are LoRA tensors without a partner or of an unsupported kind; "
            "only lora_A/lora_B and lora_embedding_A/lora_embedding_B pairs can be extrapolated"
        )
    return layers


def _squared_distance(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], layers: Sequence[LoraLayer]) -> float:
    """||x - y||_F^2 over all tensors, each LoRA layer as its merged ΔW."""
    total, factors = 0.0, set()
    for layer in layers:
        bs = torch.stack([x[layer.b_key].double(), y[layer.b_key].double()])  # (2, d_out, r)
        as_ = torch.stack([x[layer.a_key].double(), y[layer.a_key].double()])  # (2, r, d_in)
        products = layer.scale**2 * _frobenius_products(bs, as_)  # (2, 2)
        total += max(float(products[0, 0] - 2 * products[0, 1] + products[1, 1]), 0.0)  # rounding can go below 0
        factors |= {layer.a_key, layer.b_key}
    return total + sum(float(((x[n].double() - y[n].double()) ** 2).sum()) for n in x if n not in factors)


def trajectory_error(
    predicted: dict[str, torch.Tensor],
    actual: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    layers: Sequence[LoraLayer] = (),
) -> float:
    """How far a predicted snapshot is from the real one, relative to how far training moved.

    All three dicts map the same names to same-shaped tensors. Returns
    ||predicted - actual|| / ||actual - anchor||, norms over all tensors together (Frobenius), each
    LoRA layer of `layers` counted as its merged ΔW = scale · B @ A (so two factorizations of one ΔW
    are equal): 0 is a perfect prediction, 1 is as wrong as not moving from the anchor at all.
    Returns inf if the real run never moved from the anchor but the prediction did, 0 if neither moved.
    """
    assert set(predicted) == set(actual) == set(anchor), "predicted, actual and anchor must hold the same tensors"
    error = _squared_distance(predicted, actual, layers)
    moved = _squared_distance(actual, anchor, layers)
    if moved == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return (error / moved) ** 0.5


def adapter_dirs(run_dir: Path) -> dict[int, Path]:
    """Step -> adapter folder for every `RUN_DIR/checkpoints/step-N/adapter/` holding weights."""
    checkpoints = Path(run_dir) / "checkpoints"
    if not checkpoints.is_dir():
        raise FileNotFoundError(
            f"no checkpoints folder at {checkpoints}; pass the run directory that train.py wrote "
            "(it holds checkpoints/step-000010/adapter/...)"
        )
    found = {}
    for step_dir in checkpoints.iterdir():
        match = _STEP_DIR.fullmatch(step_dir.name)
        if match and (step_dir / "adapter" / ADAPTER_WEIGHTS).is_file():
            found[int(match.group(1))] = step_dir / "adapter"
    return dict(sorted(found.items()))


def load_adapter_snapshots(
    run_dir: Path, only_steps: list[int] | None = None
) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Read the saved LoRA adapters of a run (all, or those of `only_steps`), in step order.

    Returns (steps, snapshots): steps ascending, snapshots[i] the tensors of
    `RUN_DIR/checkpoints/step-{steps[i]:06d}/adapter/adapter_model.safetensors`, on CPU.
    """
    dirs = adapter_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(
            f"no adapters under {Path(run_dir) / 'checkpoints'}; expected "
            f"step-NNNNNN/adapter/{ADAPTER_WEIGHTS} (is this a LoRA run with checkpointing on?)"
        )
    if only_steps is not None:
        missing = sorted(set(only_steps) - set(dirs))
        if missing:
            raise FileNotFoundError(f"no adapter saved for steps {missing} in {run_dir}; saved steps: {list(dirs)}")
        dirs = {step: path for step, path in dirs.items() if step in set(only_steps)}
    return list(dirs), [load_file(d / ADAPTER_WEIGHTS, device="cpu") for d in dirs.values()]


def read_adapter_config(adapter_dir: Path) -> dict:
    """The adapter_config.json of a peft adapter folder, as a dict."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {adapter_dir}; the adapter's LoRA scale is read from it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it from the run that saved the adapter") from err


def write_adapter(out_dir: Path, tensors: dict[str, torch.Tensor], config_src_dir: Path) -> None:
    """Write `tensors` as a peft adapter folder: weights plus the adapter_config.json of `config_src_dir`.

    Refuses to write into a folder that already holds adapter weights, so that a mistyped --out
    cannot overwrite a real checkpoint.
    """
    out_dir, config = Path(out_dir), Path(config_src_dir) / ADAPTER_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {config_src_dir}; the extrapolated adapter needs its config")
    if (out_dir / ADAPTER_WEIGHTS).exists():
        raise FileExistsError(f"{out_dir / ADAPTER_WEIGHTS} already exists; choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: t.contiguous() for name, t in tensors.items()}
    save_file(weights, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    shutil.copyfile(config, out_dir / ADAPTER_CONFIG)
