"""An offline, procedural e-commerce gym after Ecom-RLVE (EcomRLVE-GYM), in TRL's environment convention.

Four environments (envs.py), each a class whose public methods are its tools:

| environment          | goal, checked against the world state       | tools                                             |
|----------------------|---------------------------------------------|---------------------------------------------------|
| ProductDiscoveryEnv  | recommend a product meeting hard constraints | search_catalog, get_product, recommend            |
| CartBuildingEnv      | check out exactly the requested cart         | search_catalog, get_product, add_to_cart, remove_from_cart, view_cart, checkout |
| ReturnsEnv           | a return of exactly the right order line     | list_orders, lookup_order, initiate_return        |
| OrderTrackingEnv     | the right order, status and delivery date    | list_orders, lookup_order, answer                 |

A row names its environment (`environment`, TRL's selector), its `seed` and its `level` (0..MAX_LEVEL,
difficulty.py); `reset(**row)` builds the world from (seed, level) and returns the customer's request.
The reward has three parts: task completed, efficiency in tool calls, a penalty for ids used but
never retrieved (scoring.py). What Ecom-RLVE has that this does not: a simulated user who answers
back, four of its eight environments (substitution, policy QA, bundles, multi-intent), a 2M-product
catalog, and its 12 difficulty axes (here 3 to 5 per environment).
"""

from grpo.environments.ecom.difficulty import MAX_LEVEL
from grpo.environments.ecom.envs import (
    SYSTEM_PROMPT, CartBuildingEnv, OrderTrackingEnv, ProductDiscoveryEnv, ReturnsEnv,
)
from grpo.environments.ecom.scoring import RewardParts, ecom_reward

ECOM_ENVIRONMENTS = {
    "discovery": "grpo.environments.ecom:ProductDiscoveryEnv",
    "cart": "grpo.environments.ecom:CartBuildingEnv",
    "returns": "grpo.environments.ecom:ReturnsEnv",
    "tracking": "grpo.environments.ecom:OrderTrackingEnv",
}


def ecom_rows(environments: list[str], count: int, seed: int, level: int = 0) -> list[dict]:
    """`count` rows cycling through `environments` (names of ECOM_ENVIRONMENTS), row i with seed
    `seed + i`: {"prompt": [system, empty user message], "environment", "seed", "level"}. The request
    is the reset observation, appended to the user message (TRL's rule)."""
    unknown = sorted(set(environments) - set(ECOM_ENVIRONMENTS))
    if not environments or unknown:
        raise ValueError(f"environments={environments!r}: name one or more of {sorted(ECOM_ENVIRONMENTS)}")
    return [
        {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ""}],
         "environment": environments[i % len(environments)], "seed": seed + i, "level": level}
        for i in range(count)
    ]


__all__ = [
    "ECOM_ENVIRONMENTS", "MAX_LEVEL", "SYSTEM_PROMPT", "CartBuildingEnv", "OrderTrackingEnv", "ProductDiscoveryEnv",
    "ReturnsEnv", "RewardParts", "ecom_reward", "ecom_rows",
]
