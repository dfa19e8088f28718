"""Where the local GSM8K copy is: CI has shared/ beside the clone; elsewhere set GSM8K_DIR."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GSM8K_DIR = next(
    (d for d in (Path(os.environ.get("GSM8K_DIR", REPO / "missing")), REPO.parent / "shared/data/gsm8k")
     if (d / "train.jsonl").is_file()),
    None,
)
needs_gsm8k = pytest.mark.skipif(GSM8K_DIR is None, reason="no local GSM8K copy: set GSM8K_DIR")
