"""The e-commerce gym: rewards by hand for a correct, an inefficient, a hallucinating and a failing
episode per environment (tools driven directly, no model), the world's rules, the difficulty axes.

reward = task * (0.8 + 0.2 * min(1, min_calls / calls)) - min(0.5, 0.25 * hallucinated ids)
"""

import dataclasses

import pytest

from grpo.environments import load_environments, start_episodes
from grpo.environments.ecom import (
    ECOM_ENVIRONMENTS, MAX_LEVEL, CartBuildingEnv, OrderTrackingEnv, ProductDiscoveryEnv, ReturnsEnv, ecom_reward,
    ecom_rows,
)
from grpo.environments.ecom.difficulty import cart_axes, discovery_axes, order_axes
from grpo.environments.ecom.world import ID_PATTERN, TODAY, return_deadline


@pytest.mark.parametrize("completed, calls, min_calls, hallucinated, total", [
    pytest.param(True, 3, 3, 0, 1.0, id="correct"),
    pytest.param(True, 6, 3, 0, 0.9, id="twice-the-calls"),  # 0.8 + 0.2 * 0.5
    pytest.param(True, 1, 3, 0, 1.0, id="fewer-calls-than-min-capped"),
    pytest.param(True, 3, 3, 1, 0.75, id="one-unretrieved-id"),
    pytest.param(True, 3, 3, 5, 0.5, id="penalty-capped"),  # 1 - min(0.5, 1.25)
    pytest.param(False, 3, 3, 0, 0.0, id="failed"),
    pytest.param(False, 0, 3, 2, -0.5, id="failed-and-guessed-two-ids"),
    pytest.param(False, 0, 3, 0, 0.0, id="did-nothing"),
])
def test_reward_formula(completed, calls, min_calls, hallucinated, total):
    assert ecom_reward(completed, calls, min_calls, hallucinated).total == pytest.approx(total)


@pytest.mark.parametrize("args", [(True, -1, 3, 0), (True, 1, 0, 0), (True, 1, 1, -1)])
def test_reward_inputs_are_checked(args):
    with pytest.raises(ValueError):
        ecom_reward(*args)


def ids_in(text: str) -> set[str]:
    return set(ID_PATTERN.findall(text))


# --- product discovery: min_calls 2 at level 0 (search, recommend), 3 from level 3 (get_product too) ------

def discovery(level=0, seed=11):
    env = ProductDiscoveryEnv()
    request = env.reset(seed=seed, level=level)
    good = sorted(p.id for p in env._world.products.values() if env._meets(p))
    bad = sorted(p.id for p in env._world.products.values() if p.category == env._category and not env._meets(p))
    return env, request, good, bad


def title_of(env, product_id):
    return env._world.products[product_id].title


def test_discovery_correct():
    env, _, good, _ = discovery()
    shown = env.search_catalog(title_of(env, good[0]))
    assert good[0] in ids_in(shown)
    env.recommend(good[0])
    assert (env.min_calls, env.get_reward(), env.success) == (2, 1.0, True)


def test_discovery_inefficient():
    env, _, good, _ = discovery()
    env.search_catalog(title_of(env, good[0]))
    env.get_product(good[0])
    env.search_catalog("charger")
    env.recommend(good[0])
    assert env.get_reward() == pytest.approx(0.9)  # 4 calls for 2: 0.8 + 0.2 * 0.5


def test_discovery_hallucinating():
    env, _, good, _ = discovery()
    env.recommend(good[0])  # right product, but its id was never shown
    assert env.reward_parts.hallucinated == 1
    assert env.get_reward() == pytest.approx(0.75)  # 1 call (efficiency capped at 1) - 0.25


def test_discovery_failing():
    env, _, good, bad = discovery(level=2)  # level 2 has near misses
    assert bad[0] in ids_in(env.search_catalog(title_of(env, bad[0])))
    assert good[0] in ids_in(env.search_catalog(title_of(env, good[0])))
    env.recommend(bad[0])
    assert "only the first recommendation counts" in env.recommend(good[0])
    assert (env.get_reward(), env.success) == (0.0, False)


def test_discovery_hidden_details_need_get_product():
    env, _, good, _ = discovery(level=4)
    shown = env.search_catalog(title_of(env, good[0]))
    assert "ships in" not in shown and "in stock" not in shown
    assert "ships in" in env.get_product(good[0])
    env.recommend(good[0])
    assert (env.min_calls, env.get_reward()) == (3, 1.0)


def test_discovery_near_misses_break_exactly_one_constraint():
    env, request, good, bad = discovery(level=MAX_LEVEL)
    axes = discovery_axes(MAX_LEVEL)
    assert len(env._constraints) == axes.constraints == 5
    assert len(bad) >= axes.distractors and good
    assert "must be in stock" in request


# --- cart building: min_calls 2 per item + checkout -----------------------------------------------------

def cart(level=2, seed=5):
    env = CartBuildingEnv()
    env.reset(seed=seed, level=level)
    return env, dict(env._targets)


def fill(env, targets):
    for product_id, quantity in targets.items():
        assert product_id in ids_in(env.search_catalog(title_of(env, product_id)))
        env.add_to_cart(product_id, quantity)


def test_cart_correct():
    env, targets = cart()
    fill(env, targets)
    env.checkout()
    assert (env.min_calls, env.get_reward(), env.success) == (3, 1.0, True)


def test_cart_inefficient():
    env, targets = cart()
    env.view_cart()
    fill(env, targets)
    env.view_cart()
    env.checkout()
    assert env.get_reward() == pytest.approx(0.92)  # 5 calls for 3: 0.8 + 0.2 * 0.6


def test_cart_hallucinating():
    env, targets = cart()
    (product_id, quantity), = targets.items()
    env.add_to_cart(product_id, quantity)  # never searched: the id was not retrieved
    env.checkout()
    assert env.get_reward() == pytest.approx(0.75)  # 2 calls (capped) - 0.25


def test_cart_failing_without_checkout_and_with_a_wrong_quantity():
    env, targets = cart()
    fill(env, targets)
    assert env.get_reward() == 0.0  # no checkout
    env2, targets2 = cart()
    (product_id, quantity), = targets2.items()
    env2.search_catalog(title_of(env2, product_id))
    env2.add_to_cart(product_id, quantity)
    env2.add_to_cart(product_id, 1)  # one too many
    env2.checkout()
    assert (env2.get_reward(), env2.success) == (0.0, False)


def test_cart_rules():
    env, targets = cart(level=MAX_LEVEL)
    assert len(targets) == cart_axes(MAX_LEVEL).items == 3
    product_id = next(iter(targets))
    stock = env._world.products[product_id].stock
    assert f"Only {stock} of {product_id} in stock" in env.add_to_cart(product_id, stock + 1)
    assert "quantity must be at least 1" in env.add_to_cart(product_id, 0)
    assert "There is no product" in env.add_to_cart("P-00000x", 1)
    assert "is not in the cart" in env.remove_from_cart(product_id)
    assert "The cart is empty" in env.checkout()
    env.add_to_cart(product_id, 1)
    assert "Removed" in env.remove_from_cart(product_id)
    env.add_to_cart(product_id, 1)
    env.checkout()
    assert "already placed" in env.add_to_cart(product_id, 1)
    assert env._world.checked_out == {product_id: 1}


# --- returns: min_calls 2 with the order id given (lookup, initiate), 3 without (list, lookup, initiate) -

def returns(level=0, seed=2):
    env = ReturnsEnv()
    request = env.reset(seed=seed, level=level)
    return env, request, env._goal


def test_returns_correct():
    env, request, (order_id, product_id) = returns()
    assert order_id in request
    assert product_id in ids_in(env.lookup_order(order_id))
    assert "created" in env.initiate_return(order_id, product_id, "damaged")
    assert (env.min_calls, env.get_reward(), env.success) == (2, 1.0, True)


def test_returns_inefficient():
    env, _, (order_id, product_id) = returns()
    env.list_orders()
    env.lookup_order(order_id)
    env.lookup_order(order_id)
    env.initiate_return(order_id, product_id, "damaged")
    assert env.get_reward() == pytest.approx(0.9)  # 4 calls for 2


def test_returns_hallucinating():
    env, _, (order_id, product_id) = returns()
    env.initiate_return(order_id, product_id, "damaged")  # the order id was in the request, the product id nowhere
    assert env.reward_parts.hallucinated == 1
    assert env.get_reward() == pytest.approx(0.75)


def test_returns_failing():
    env, _, (order_id, _) = returns()
    env.lookup_order(order_id)
    assert env.get_reward() == 0.0  # looked, never returned
    # the right return plus a wrong one (every id looked up first): the task fails, nothing hallucinated
    env2, _, (order_id2, product_id2) = returns(seed=2)  # seed 2: the other order is returnable too
    env2.list_orders()
    env2.lookup_order(order_id2)
    env2.initiate_return(order_id2, product_id2, "damaged")
    other = next(o for o in env2._world.orders.values() if o.id != order_id2 and o.status == "delivered"
                 and return_deadline(o, env2._world.products[o.lines[0].product_id]) is not None
                 and return_deadline(o, env2._world.products[o.lines[0].product_id]) >= TODAY)
    env2.lookup_order(other.id)
    assert "created" in env2.initiate_return(other.id, other.lines[0].product_id, "x")
    assert (env2.get_reward(), env2.success, env2.reward_parts.hallucinated) == (0.0, False, 0)


def test_returns_policy_at_the_top_level():
    env, request, (order_id, product_id) = returns(level=MAX_LEVEL, seed=4)
    assert order_id not in request and "delivered on" in request
    listing = env.list_orders()
    assert order_id in listing and len(listing.splitlines()) == order_axes(MAX_LEVEL).orders
    older = [o for o in env._world.orders.values() if o.id != order_id
             and product_id in {line.product_id for line in o.lines}]
    assert len(older) == 1  # bought before, out of the window
    env.lookup_order(older[0].id)
    assert "closed on" in env.initiate_return(older[0].id, product_id, "x")
    assert "has no item" in env.initiate_return(order_id, "P-12345", "x")
    assert "There is no order" in env.initiate_return("O-00000", product_id, "x")
    env.lookup_order(order_id)
    env.initiate_return(order_id, product_id, "x")
    assert "already exists" in env.initiate_return(order_id, product_id, "x")
    assert env.success and env.reward_parts.hallucinated == 2  # P-12345 and O-00000 were never shown


def test_returns_refuses_undelivered_and_final_sale_items():
    refusals = set()
    for seed in range(30):
        env, _, _ = returns(level=MAX_LEVEL, seed=seed)
        for order in env._world.orders.values():
            for line in order.lines:
                product = env._world.products[line.product_id]
                if order.status != "delivered" or product.final_sale:
                    message = env.initiate_return(order.id, line.product_id, "x")
                    refusals.add("not been delivered" if "not been delivered" in message else
                                 "final sale" if "final sale" in message else message)
    assert refusals == {"not been delivered", "final sale"}


# --- order tracking at level 2: no id given, list_orders shows status and date: min_calls 2 -----------

def tracking(level=2, seed=8):
    env = OrderTrackingEnv()
    request = env.reset(seed=seed, level=level)
    return env, request, env._goal


def test_tracking_correct():
    env, request, goal = tracking()
    assert goal[0] not in request
    assert goal[0] in env.list_orders()
    env.answer(*goal)
    assert (env.min_calls, env.get_reward(), env.success) == (2, 1.0, True)


def test_tracking_inefficient():
    env, _, goal = tracking()
    env.list_orders()
    env.lookup_order(goal[0])
    env.lookup_order(goal[0])
    env.answer(*goal)
    assert env.get_reward() == pytest.approx(0.9)


def test_tracking_hallucinating():
    env, _, goal = tracking()
    env.answer(*goal)  # right answer, order id never retrieved
    assert env.get_reward() == pytest.approx(0.75)


def test_tracking_failing():
    env, _, (order_id, status, date) = tracking()
    env.list_orders()
    env.answer(order_id, status, "2025-01-01")
    env.answer(order_id, status, date)  # only the first answer counts
    assert (env.get_reward(), env.success) == (0.0, False)


def test_tracking_top_level_hides_the_status_and_asks_for_the_most_recent_order():
    env, request, (order_id, status, date) = tracking(level=MAX_LEVEL)
    assert "most recent order" in request and env.min_calls == 3
    listing = env.list_orders()
    assert status not in listing and date not in listing
    assert status in env.lookup_order(order_id) and date in env.lookup_order(order_id)


# --- shared: determinism, reuse (TRL pools instances), the rows, TRL's tool rule ----------------------

@pytest.mark.parametrize("cls", [ProductDiscoveryEnv, CartBuildingEnv, ReturnsEnv, OrderTrackingEnv])
def test_a_world_is_a_function_of_seed_and_level_and_reset_clears_everything(cls):
    first, second = cls(), cls()
    request = first.reset(seed=3, level=4)
    assert second.reset(seed=3, level=4) == request
    assert cls().reset(seed=4, level=4) != request
    first.get_product("P-00000") if hasattr(first, "get_product") else first.list_orders()
    assert first.reset(seed=3, level=4) == request  # the same instance, reused as TRL does
    assert first.reward_parts == second.reward_parts and first._calls == 0


@pytest.mark.parametrize("axes", [discovery_axes, cart_axes, order_axes])
def test_every_axis_is_monotone_in_the_level(axes):
    levels = [dataclasses.astuple(axes(level)) for level in range(MAX_LEVEL + 1)]
    harder_when_higher = {  # field -> +1 when a larger value is harder, -1 when smaller is harder
        "page_size": -1, "order_id_given": -1,
    }
    names = [f.name for f in dataclasses.fields(axes(0))]
    for index, name in enumerate(names):
        sign = harder_when_higher.get(name, 1)
        values = [sign * int(level[index]) for level in levels]
        assert values == sorted(values), name
    with pytest.raises(ValueError, match="level=9"):
        axes(9)


@pytest.mark.parametrize("cls, tools", [
    (ProductDiscoveryEnv, ["get_product", "recommend", "search_catalog"]),
    (CartBuildingEnv, ["add_to_cart", "checkout", "get_product", "remove_from_cart", "search_catalog", "view_cart"]),
    (ReturnsEnv, ["initiate_return", "list_orders", "lookup_order"]),
    (OrderTrackingEnv, ["answer", "list_orders", "lookup_order"]),
])
def test_only_the_tools_are_public(cls, tools):
    import inspect

    public = [n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")]
    assert sorted(public) == sorted(tools + ["get_reward", "reset"])


def test_rows_start_episodes_in_all_four_environments():
    environments = load_environments(ECOM_ENVIRONMENTS)
    rows = ecom_rows(["discovery", "cart", "returns", "tracking"], 8, seed=100, level=1)
    episodes = start_episodes(environments, rows)
    assert [e.environment_name for e in episodes] == ["discovery", "cart", "returns", "tracking"] * 2
    assert all(e.messages[0]["role"] == "system" and e.messages[1]["content"] for e in episodes)
    assert all(e.reward() == 0.0 and e.success() is False for e in episodes)
    with pytest.raises(ValueError, match="name one or more of"):
        ecom_rows(["chess"], 1, seed=0)
