"""train.py with an extra reward registered, so a random tiny model sees reward spread.

Run as `python -m tests.helpers.train_with_digit_reward [train.py args]` (used by the
kill-and-resume test, which needs training in a separate process it can kill).
"""

import sys

import rewards


@rewards.register("digit_share")
def digit_share(completions, **columns):
    """Share of characters that are digits: random byte-level text has spread in it."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


if __name__ == "__main__":
    import train

    train.main(sys.argv[1:])
