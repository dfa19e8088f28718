"""evaluate.py: pass@k, scoring, the table, merging, and one tiny end-to-end run (base + adapter)."""

import json

import pytest

import evaluate
from data import write_jsonl

CORRECT_72 = "48 + 24 = 72\n#### The final answer is 72"


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        pytest.param(5, 2, 1, 0.4, id="pass-at-1"),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
        pytest.param(5, 2, 2, 0.7, id="pass-at-2"),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        pytest.param(4, 0, 2, 0.0, id="none-correct"),  # no correct sample: C(4,2)/C(4,2) = 1
        pytest.param(4, 4, 1, 1.0, id="all-correct"),  # C(0,1) = 0
        pytest.param(3, 1, 3, 1.0, id="k-equals-n"),  # k = n: any correct sample passes; C(2,3) = 0
        pytest.param(10, 3, 5, 1 - 21 / 252, id="pass-at-5-of-10"),  # C(7,5) = 21, C(10,5) = 252
    ],
)
def test_pass_at_k_matches_hand_values(n, c, k, expected):
    assert evaluate.pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(4, 1, 0), (4, 1, 5), (4, 5, 2), (4, -1, 2)],
    ids=["k-zero", "k-above-n", "c-above-n", "negative-c"],
)
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
        evaluate.pass_at_k(n, c, k)


def test_score_uses_the_training_rewards():
    completions = [
        CORRECT_72,  # right number, right format
        "48 + 24 = 71\n#### The final answer is 71",  # formatted, wrong
        "#### The final answer is 72\n#### The final answer is 71",  # hedged: neither
        "The answer is 72.",  # right number, no answer line
        "",
    ]
    correct, formatted = evaluate.score(completions, ["72"] * 5)
    assert correct == [True, False, False, False, False]
    assert formatted == [True, True, False, False, False]


def run(label, n_shot, accuracy, **extra):
    return {"label": label, "n_shot": n_shot, "n": 4, "accuracy": accuracy, "format_rate": 0.75,
            "mean_completion_tokens": 10.25, "truncated_rate": 0.0, **extra}


def test_markdown_table_rows_sorted_by_model_then_shots():
    table = evaluate.markdown_table([run("trained", 8, 0.5), run("base", 8, 0.25), run("base", 0, 0.0, **{"pass@4": 0.5})])
    assert table == (
        "| model | shots | n | accuracy | format rate | mean tokens | truncated | pass@4 |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| base | 0 | 4 | 0.0% | 75.0% | 10.2 | 0.0% | 50.0% |\n"
        "| base | 8 | 4 | 25.0% | 75.0% | 10.2 | 0.0% |  |\n"
        "| trained | 8 | 4 | 50.0% | 75.0% | 10.2 | 0.0% |  |\n"
    )


def test_compare_merges_files_and_separates_clashing_labels(tmp_path):
    for name, accuracy in [("qwen_base", 0.1), ("qwen_grpo", 0.4)]:
        (tmp_path / name).mkdir()
        result = {"split": "test", "runs": [run("base", 8, accuracy)]}
        (tmp_path / name / "results.json").write_text(json.dumps(result), encoding="utf-8")
    out = tmp_path / "both"
    merged = evaluate.main(["--compare", str(tmp_path / "qwen_base/results.json"),
                            str(tmp_path / "qwen_grpo/results.json"), "--out", str(out)])
    assert [(r["label"], r["accuracy"]) for r in merged["runs"]] == [("qwen_base/base", 0.1), ("qwen_grpo/base", 0.4)]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| qwen_grpo/base | 8 | 4 | 40.0% |" in (out / "results.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--out", "x"], "give --model", id="missing-model"),
        pytest.param(["--model", "m", "--out", "x", "--skip-base"], "--skip-base needs --adapter",
                     id="skip-base-without-adapter"),
        pytest.param(["--model", "m", "--out", "x", "--pass-k", "4", "--num-samples", "2"], "--pass-k 4",
                     id="pass-k-above-samples"),
        pytest.param(["--model", "m", "--out", "x", "--pass-k", "2", "--temperature", "0"], "--temperature 0.0",
                     id="pass-k-with-greedy"),
        pytest.param(["--model", "m", "--out", "x", "--limit", "0"], "--limit 0", id="zero-limit"),
    ],
)
def test_bad_arguments_are_reported(argv, message, capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.fixture
def tiny_gsm8k(tmp_path):
    """A local GSM8K-format copy: 10 train rows, 3 test rows."""
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(13)]
    write_jsonl(rows[:10], tmp_path / "gsm8k" / "train.jsonl")
    write_jsonl(rows[10:], tmp_path / "gsm8k" / "test.jsonl")
    return tmp_path / "gsm8k"


def test_end_to_end_base_and_adapter_on_a_tiny_model(tiny_model_dir, tiny_gsm8k, tmp_path):
    from grpo.runtime.model import attach_lora, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny_model_dir)
    attach_lora(model, r=2, alpha=2, dropout=0.0, target_modules=("q_proj", "v_proj")).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval"
    result = evaluate.main([
        "--model", tiny_model_dir, "--adapter", str(tmp_path / "adapter"), "--style", "chat",
        "--shots", "0", "1", "--limit", "2", "--data-dir", str(tiny_gsm8k), "--max-new-tokens", "8",
        "--batch-size", "2", "--pass-k", "1", "--num-samples", "2", "--out", str(out),
    ])
    assert [(r["label"], r["n_shot"], r["n"]) for r in result["runs"]] == [
        ("base", 0, 2), ("base", 1, 2), ("trained", 0, 2), ("trained", 1, 2)
    ]
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    first = saved["runs"][0]["samples"][0]
    assert first["question"] == "What is 10 + 10?" and first["answer"] == "20"
    assert 1 <= first["tokens"] <= 8 and len(first["sampled"]) == 2
    for setting in saved["runs"]:
        samples = setting["samples"]
        assert setting["accuracy"] == sum(s["correct"] for s in samples) / 2
        assert setting["format_rate"] == sum(s["formatted"] for s in samples) / 2
        # pass@1 from n = 2 samples is the share of correct samples: c / 2 per problem.
        assert setting["pass@1"] == pytest.approx(sum(d["correct"] for s in samples for d in s["sampled"]) / 4)
    assert (out / "results.md").is_file() and (out / "accuracy.png").stat().st_size > 0


def test_report_to_mlflow_logs_the_table_and_the_chart(tiny_model_dir, tiny_gsm8k, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns: not in the repository
    evaluate.main(["--model", tiny_model_dir, "--style", "chat", "--shots", "0", "--limit", "2",
                   "--data-dir", str(tiny_gsm8k), "--max-new-tokens", "4", "--out", str(tmp_path / "eval"),
                   "--report-to", "mlflow", "--experiment", "eval-tests"])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval-tests").experiment_id])
    assert "base/0shot/accuracy" in run.data.metrics and run.data.params["limit"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.md", "accuracy.png", "results.json", "completions"} <= artifacts
