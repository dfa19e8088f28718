"""train.py with the tests' rewards registered: one a random tiny model sees spread in, one it rarely does.

Run as `python -m tests.helpers.train_with_digit_reward [train.py args]` (used by the
kill-and-resume test, which needs training in a separate process it can kill).
"""

import os
import sys
import time

import rewards


@rewards.register("digit_share")
def digit_share(completions, **columns):
    """Share of characters that are digits: random byte-level text has spread in it."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


@rewards.register("has_letter_e")
def has_letter_e(completions, **columns):
    """1 if the completion holds an "e": rare in short random byte-level text, so most groups of a random
    tiny model have no reward spread (what DAPO's dynamic sampling drops)."""
    return [float("e" in text) for text in completions]


@rewards.register("slow_digit_share")
def slow_digit_share(completions, **columns):
    """digit_share after SLOW_REWARD_S seconds (0 unset), each call first noted as a line in SLOW_REWARD_LOG
    (if set): a long step whose progress a test can watch."""
    if os.environ.get("SLOW_REWARD_LOG"):
        with open(os.environ["SLOW_REWARD_LOG"], "a") as calls:
            calls.write("call\n")
    time.sleep(float(os.environ.get("SLOW_REWARD_S", "0")))
    return digit_share(completions)


if __name__ == "__main__":
    import train

    train.main(sys.argv[1:])
