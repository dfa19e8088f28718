"""A small environment written only against TRL's documented `environment_factory` convention (TRL 1.16
GRPOTrainer docs): public methods with type hints and Google-style docstrings are the tools, `reset(**kwargs)`
returns text appended to the prompt (or None), `get_reward()` scores the finished rollout. Nothing here
imports this project, so a class like it trains unchanged here and in TRL."""


class NumberGuessEnv:
    """Guess a hidden number between 1 and 20; the tool answers "higher", "lower" or "correct"."""

    def reset(self, **kwargs) -> str | None:
        self.secret = int(kwargs.get("secret", 7))
        self.guesses = 0
        self.solved = False
        return "\nI picked a whole number between 1 and 20. Find it with the guess tool."

    def guess(self, number: int) -> str:
        """Guess the hidden number.

        Args:
            number: Your guess, a whole number between 1 and 20.

        Returns:
            "higher" if the hidden number is larger, "lower" if it is smaller, "correct" if it is the number.
        """
        self.guesses += 1
        if number == self.secret:
            self.solved = True
            return "correct"
        return "higher" if self.secret > number else "lower"

    def get_reward(self) -> float:
        return 1.0 if self.solved else 0.0


def add(a: int, b: int) -> int:
    """Add two whole numbers (a stateless tool).

    Args:
        a: The first number.
        b: The second number.

    Returns:
        The sum.
    """
    return a + b
