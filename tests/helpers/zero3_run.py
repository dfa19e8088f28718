"""train.py for the multi-process tests, with the tests' reward registered; under ZeRO-3 each rank
also writes what it stores.

Run as `python -m torch.distributed.run --nproc_per_node 2 -m tests.helpers.zero3_run [train.py
args]`. Right after sharding, each rank writes OUTPUT/shards/rank-N.json with the parameters and
bytes it holds (grpo.runtime.distributed.shard_sizes), the evidence that ZeRO-3 split the model.
"""

import json
import sys
from pathlib import Path

from grpo.runtime import distributed
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")


def main(argv: list[str]) -> None:
    import train

    output_dir = Path(argv[argv.index("--output-dir") + 1])
    make_engine = distributed.deepspeed_engine

    def engine_that_reports_its_shard(scorer, optimizer, ds_config):
        engine = make_engine(scorer, optimizer, ds_config)
        world = distributed.world_from_env()
        (output_dir / "shards").mkdir(parents=True, exist_ok=True)
        sizes = distributed.shard_sizes(scorer.policy)
        (output_dir / "shards" / f"rank-{world.rank}.json").write_text(json.dumps(sizes))
        return engine

    distributed.deepspeed_engine = engine_that_reports_its_shard
    train.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
