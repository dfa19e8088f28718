"""Write a task's prepared splits as JSONL (train.jsonl, validation.jsonl[, test.jsonl]).

The launcher uploads the folder's files as SageMaker channels; the trainer reads them back
with `load_task("jsonl", train_file=..., validation_file=...)`.

    python -m data.prepare --task gsm8k --data-dir ../shared/data/gsm8k --out prepared/ --n-shot 8
    python -m data.prepare --task synthetic --difficulty 2 --out prepared/ --style chat --tokenizer /tmp/smolhf
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data.gsm8k import gsm8k_files
from data.prompts import SHOT_COUNTS, STYLES
from data.rows import BAD_ROW_POLICIES, write_jsonl
from data.synthetic import DIFFICULTIES
from data.tasks import load_task

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to write the JSONL splits into")
    parser.add_argument("--task", default="gsm8k", choices=("gsm8k", "synthetic"))
    parser.add_argument("--data-dir", type=Path, help="local GSM8K copy with train.jsonl/test.jsonl (default: the hub)")
    parser.add_argument("--n-shot", type=int, default=0, choices=SHOT_COUNTS)
    parser.add_argument("--style", default="plain", choices=STYLES, help="plain for base models, chat for instruct")
    parser.add_argument("--tokenizer", help="HF id or folder whose chat template renders --style chat prompts")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int)
    parser.add_argument("--limit-eval", type=int)
    parser.add_argument("--on-bad-row", default="error", choices=BAD_ROW_POLICIES)
    parser.add_argument("--difficulty", type=int, default=1, choices=DIFFICULTIES)
    parser.add_argument("--num-synthetic", type=int, default=5000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer  # deferred: plain-style prompts need no tokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    train_file, test_file = gsm8k_files(args.data_dir) if args.data_dir else (None, None)
    splits = load_task(
        args.task,
        n_shot=args.n_shot,
        style=args.style,
        tokenizer=tokenizer,
        train_file=train_file,
        test_file=test_file,
        val_fraction=args.val_fraction,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        on_bad_row=args.on_bad_row,
        difficulty=args.difficulty,
        num_synthetic=args.num_synthetic,
    )
    written = {split: write_jsonl(rows, args.out / f"{split}.jsonl") for split, rows in splits.items()}
    for split, path in written.items():
        logger.info("wrote %d %s rows to %s", len(splits[split]), split, path)
    return written


if __name__ == "__main__":
    main()
