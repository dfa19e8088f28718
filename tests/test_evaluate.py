"""evaluate.py: scoring, the votes, pass@k and maj@k from scripted samples, the table, merging, and
tiny end-to-end runs (base + adapter; sampling reproducible by seed). The estimators themselves are
tested in tests/test_sampled_accuracy.py."""

import json

import pytest

import evaluate
from data import write_jsonl

CORRECT_72 = "48 + 24 = 72\n#### The final answer is 72"


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


@pytest.mark.parametrize(
    ("completion", "vote"),
    [
        pytest.param(CORRECT_72, 72.0, id="answer-line"),
        pytest.param("#### The final answer is $72.00", 72.0, id="same-number-other-text"),
        pytest.param("#### The final answer is 1,234", 1234.0, id="thousands"),
        pytest.param("#### The final answer is -3/4", -0.75, id="fraction"),
        pytest.param("The answer is 72.", None, id="no-answer-line"),
        pytest.param("#### The final answer is 72\n#### The final answer is 71", None, id="hedged"),
        pytest.param("#### The final answer is seventy", None, id="not-a-number"),
        pytest.param("#### The final answer is nan", None, id="nan"),
        pytest.param("", None, id="empty"),
    ],
)
def test_final_answer_is_what_the_correctness_reward_reads(completion, vote):
    assert evaluate.final_answer(completion) == vote


def test_problem_seeds_depend_on_the_seed_and_the_index_only():
    seeds = [evaluate.problem_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100 and seeds == [evaluate.problem_seed(0, i) for i in range(100)]
    assert evaluate.problem_seed(1, 0) != seeds[0] and all(0 <= s < 2**32 for s in seeds)


def run(label, n_shot, accuracy, **extra):
    return {"label": label, "n_shot": n_shot, "n": 4, "accuracy": accuracy, "format_rate": 0.75,
            "mean_completion_tokens": 10.25, "truncated_rate": 0.0, **extra}


def test_markdown_table_rows_sorted_by_model_then_shots():
    table = evaluate.markdown_table([run("trained", 8, 0.5), run("base", 8, 0.25)])
    assert table == (
        "| model | shots | n | accuracy | format rate | mean tokens | truncated |\n"
        "|---|---|---|---|---|---|---|\n"
        "| base | 8 | 4 | 25.0% | 75.0% | 10.2 | 0.0% |\n"
        "| trained | 8 | 4 | 50.0% | 75.0% | 10.2 | 0.0% |\n"
    )


def test_markdown_table_orders_pass_then_maj_columns_by_k():
    sampled = {"sampling": {"samples": 16, "temperature": 0.7, "top_p": 1.0, "seed": 0},
               "pass@16": 0.75, "pass@2": 0.5, "maj@16": 0.375, "maj@2": 0.25}
    table = evaluate.markdown_table([run("base", 8, 0.25), run("base", 0, 0.0, **sampled)])
    assert table == (
        "| model | shots | n | accuracy | format rate | mean tokens | truncated | samples | pass@2 | pass@16 "
        "| maj@2 | maj@16 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        "| base | 0 | 4 | 0.0% | 75.0% | 10.2 | 0.0% | 16 at T=0.7 | 50.0% | 75.0% | 25.0% | 37.5% |\n"
        "| base | 8 | 4 | 25.0% | 75.0% | 10.2 | 0.0% |  |  |  |  |  |\n"
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
        pytest.param(["--model", "m", "--out", "x", "--samples", "2", "--k", "1", "4"], "--k 1 4",
                     id="k-above-samples"),
        pytest.param(["--model", "m", "--out", "x", "--samples", "4", "--k", "0"], "--k 0", id="k-zero"),
        pytest.param(["--model", "m", "--out", "x", "--k", "1"], "--k needs --samples", id="k-without-samples"),
        pytest.param(["--model", "m", "--out", "x", "--samples", "0"], "--samples 0", id="zero-samples"),
        pytest.param(["--model", "m", "--out", "x", "--samples", "2", "--temperature", "0"], "--temperature 0.0",
                     id="samples-with-greedy"),
        pytest.param(["--model", "m", "--out", "x", "--limit", "0"], "--limit 0", id="zero-limit"),
    ],
)
def test_bad_arguments_are_reported(argv, message, capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "ks"),
    [
        pytest.param([], None, id="greedy-only"),
        pytest.param(["--samples", "8"], [1, 2, 4, 8], id="powers-of-two"),
        pytest.param(["--samples", "10"], [1, 2, 4, 8, 10], id="and-n"),
        pytest.param(["--samples", "1"], [1], id="one-sample"),
        pytest.param(["--samples", "8", "--k", "8", "1", "1"], [1, 8], id="given-sorted-unique"),
    ],
)
def test_default_and_given_k(extra, ks):
    assert evaluate.parse_args(["--model", "m", "--out", "x", *extra]).k == ks


@pytest.fixture
def tiny_gsm8k(tmp_path):
    """A local GSM8K-format copy: 10 train rows, 3 test rows."""
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(13)]
    write_jsonl(rows[:10], tmp_path / "gsm8k" / "train.jsonl")
    write_jsonl(rows[10:], tmp_path / "gsm8k" / "test.jsonl")
    return tmp_path / "gsm8k"


SCRIPTED = {
    # gold 20: two votes for 20 ("20" and "20.0" are one answer), one for 18, one sample without an answer
    "What is 10 + 10?": ["#### The final answer is 20", "#### The final answer is 20.0", "#### The final answer is 18",
                         "I do not know"],
    # gold 22: two votes for a wrong 21, one for 22, one for 23
    "What is 11 + 11?": ["#### The final answer is 21", "#### The final answer is 21", "#### The final answer is 22",
                         "#### The final answer is 23"],
}


def scripted_generate_texts(model, tokenizer, prompts, args, *, group_size, temperature, desc, seeds=None):
    """Four scripted samples per problem (greedy: the first of them): generation is not under test here."""
    texts = [SCRIPTED[question][:group_size] for prompt in prompts for question in SCRIPTED if question in prompt]
    assert len(texts) == len(prompts) and (seeds is None) == (temperature == 0)
    return [{"text": t, "tokens": len(t.split()), "truncated": False} for group in texts for t in group]


def test_pass_and_maj_at_k_from_scripted_samples(tiny_gsm8k, monkeypatch):
    # Problem 20: n = 4, c = 2, votes 20: 2, 18: 1, one abstention.
    #   pass@1 = 2/4; pass@2 = 1 - C(2,2)/C(4,2) = 5/6; pass@4 = 1.
    #   maj@1 = 1/2; maj@2 over the 6 pairs: {20,20} 1, {20,18} x2 ties 1/2 each, {20,None} x2 1, {18,None} 0
    #   -> 4/6; maj@4: 20 has 2 votes against 1 -> 1 (were "20.0" another answer: a 3-way tie, 2/3).
    # Problem 22: n = 4, c = 1, votes 21: 2, 22: 1, 23: 1.
    #   pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1/2; pass@4 = 1.
    #   maj@1 = 1/4; maj@2: {21,21} 0, {21,22} x2 ties 1/2 each, {21,23} x2 0, {22,23} tie 1/2 -> 1.5/6 = 1/4;
    #   maj@4: 21 wins -> 0.
    monkeypatch.setattr(evaluate, "generate_texts", scripted_generate_texts)
    args = evaluate.parse_args(["--model", "m", "--out", "x", "--data-dir", str(tiny_gsm8k), "--limit", "2",
                                "--samples", "4", "--k", "1", "2", "4", "--temperature", "1.0"])
    result = evaluate.evaluate_setting(None, None, evaluate.eval_rows(args), "base", 0, args)
    assert result["accuracy"] == 0.5  # greedy: the first sample of each, 20 right and 21 wrong
    expected = {"pass@1": 3 / 8, "pass@2": (5 / 6 + 1 / 2) / 2, "pass@4": 1.0,
                "maj@1": 3 / 8, "maj@2": (4 / 6 + 1 / 4) / 2, "maj@4": 0.5}
    assert {key: result[key] for key in expected} == pytest.approx(expected, abs=1e-12)
    assert result["sampling"] == {"samples": 4, "temperature": 1.0, "top_p": 1.0, "seed": 0}
    votes = [[d["vote"] for d in s["sampled"]] for s in result["samples"]]
    assert votes == [[20.0, 20.0, 18.0, None], [21.0, 21.0, 22.0, 23.0]]
    assert [[d["correct"] for d in s["sampled"]] for s in result["samples"]] == [
        [True, True, False, False], [False, False, True, False]]


def test_samples_are_reproducible_whatever_the_batch(tiny_model_dir, tiny_gsm8k):
    from grpo.runtime.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    model.eval()
    rows = evaluate.eval_rows(evaluate.parse_args(["--model", "m", "--out", "x", "--data-dir", str(tiny_gsm8k)]))

    def drawn(*extra):
        args = evaluate.parse_args(["--model", "m", "--out", "x", "--samples", "3", "--max-new-tokens", "6",
                                    "--temperature", "1.0", "--style", "chat", *extra])
        _, sampled = evaluate.evaluate_sampled(model, tokenizer, [r["question"] for r in rows],
                                               [r["answer"] for r in rows], args, "test")
        return [[d["completion"] for d in draws] for draws in sampled]

    one_problem_per_batch = drawn("--batch-size", "3")
    assert drawn("--batch-size", "9") == one_problem_per_batch  # all three problems in one batch
    assert drawn("--batch-size", "9", "--seed", "1") != one_problem_per_batch
    assert len({c for draws in one_problem_per_batch for c in draws}) > 3  # the samples differ


def test_end_to_end_base_and_adapter_on_a_tiny_model(tiny_model_dir, tiny_gsm8k, tmp_path):
    from grpo.runtime.model import attach_lora, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny_model_dir)
    attach_lora(model, r=2, alpha=2, dropout=0.0, target_modules=("q_proj", "v_proj")).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval"
    result = evaluate.main([
        "--model", tiny_model_dir, "--adapter", str(tmp_path / "adapter"), "--style", "chat",
        "--shots", "0", "1", "--limit", "2", "--data-dir", str(tiny_gsm8k), "--max-new-tokens", "8",
        "--batch-size", "2", "--samples", "2", "--out", str(out),
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
        # pass@1 and maj@1 from n = 2 samples are the share of correct samples: c / 2 per problem.
        share = sum(d["correct"] for s in samples for d in s["sampled"]) / 4
        assert setting["pass@1"] == pytest.approx(share) and setting["maj@1"] == pytest.approx(share)
        assert {"pass@2", "maj@2"} <= setting.keys()
    assert "| samples | pass@1 | pass@2 | maj@1 | maj@2 |" in (out / "results.md").read_text(encoding="utf-8")
    assert (out / "accuracy.png").stat().st_size > 0


def test_report_to_mlflow_logs_the_table_and_the_chart(tiny_model_dir, tiny_gsm8k, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns: not in the repository
    evaluate.main(["--model", tiny_model_dir, "--style", "chat", "--shots", "0", "--limit", "2",
                   "--data-dir", str(tiny_gsm8k), "--max-new-tokens", "4", "--out", str(tmp_path / "eval"),
                   "--samples", "2", "--report-to", "mlflow", "--experiment", "eval-tests"])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval-tests").experiment_id])
    assert {"base/0shot/accuracy", "base/0shot/pass_at_2", "base/0shot/maj_at_1"} <= run.data.metrics.keys()
    assert run.data.params["limit"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.md", "accuracy.png", "results.json", "completions"} <= artifacts
