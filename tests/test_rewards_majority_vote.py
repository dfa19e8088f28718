import pytest

import rewards

A = "#### The final answer is {}"


@pytest.mark.parametrize(
    "completions, prompts, expected",
    [
        # 72 wins 2:1 in prompt p (and "$72" and "72.0" parse to the same number)
        ([A.format(72), A.format("$72"), A.format(5)], ["p", "p", "p"], [1.0, 1.0, 0.0]),
        ([A.format("72.0"), A.format(72), "no answer"], ["p", "p", "p"], [1.0, 1.0, 0.0]),
        # two prompts interleaved are voted separately; a 1:1 tie goes to the first answer
        ([A.format(1), A.format(2), A.format(3), A.format(2)], ["p", "q", "p", "q"], [1.0, 1.0, 0.0, 1.0]),
        # empty strings, no answers and hostile text never win and never raise
        (["", "####", "x" * 100_000], ["p", "p", "p"], [0.0, 0.0, 0.0]),
        # a lone completion has nobody to agree with
        ([A.format(7)], ["p"], [0.0]),
    ],
)
def test_majority_vote_table(completions, prompts, expected):
    assert rewards.get("majority_vote")(completions, prompts=prompts, answer=[None] * len(completions)) == expected
