"""Four e-commerce environments in TRL's convention: public methods are the tools, `reset(**row)` builds
the episode's world from the row's `seed` and `level` and returns the customer's request,
`get_reward()` scores the episode from the world state (see scoring.py).

Only tools are public: everything else is private or a property, since TRL (and our loader) turn
every public function of the class into a tool the model sees.

The agent's bookkeeping for the hallucination part: every id a tool result or the request showed is
"seen"; an id the agent passes to a tool (an id argument, or an id inside free text) that was not
seen before that call is hallucinated (a tool echoing it back afterwards does not make it retrieved). Ids the agent writes in its own text to the customer are
not read: `get_reward()` takes no argument in TRL's convention, so the environment sees tool calls
only; each task's final action is therefore a tool call that carries the ids it commits to.
"""

from __future__ import annotations

import datetime
import math
import random

from grpo.environments.ecom.difficulty import cart_axes, check_level, discovery_axes, order_axes
from grpo.environments.ecom.scoring import RewardParts, ecom_reward
from grpo.environments.ecom.world import (
    BRANDS, CATEGORIES, COLORS, ID_PATTERN, TODAY, Order, OrderLine, Product, World, make_catalog, new_id,
    product_card, product_line, query_words, return_deadline, search, variant,
)

SYSTEM_PROMPT = (
    "You are the shopping assistant of an online store. Use the tools to look things up and to act for the "
    "customer; use only product and order ids that a tool showed you. When the task is done, reply to the "
    "customer without calling a tool."
)
CARRIERS = ("UPS", "FedEx", "DHL", "USPS")
REASONS = ("it arrived damaged", "it does not fit", "I changed my mind", "it is not as described")


class _ShopEnv:
    """Bookkeeping shared by the four environments (no public methods: those would be tools)."""

    def __init__(self):
        self._world: World | None = None

    def reset(self, seed: int = 0, level: int = 0, **row) -> str:
        """Build the world of the episode (seed, level) and return the customer's request."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} must be an integer")
        self._level = check_level(level)
        self._calls = 0
        self._seen: set[str] = set()
        self._hallucinated: set[str] = set()
        rng = random.Random(f"ecom/{type(self).__name__}/{seed}/{level}")
        self._taken: set[str] = set()
        request, self._min_calls = self._generate(rng, level)
        self._rng = rng
        return self._shown(request)

    def get_reward(self) -> float:
        """The episode's reward (see grpo.environments.ecom.scoring)."""
        return self.reward_parts.total

    @property
    def reward_parts(self) -> RewardParts:
        if self._world is None:
            raise RuntimeError(f"{type(self).__name__}: get_reward before reset")
        return ecom_reward(self._completed(), self._calls, self._min_calls, len(self._hallucinated))

    @property
    def success(self) -> bool:
        return self.reward_parts.task == 1.0

    @property
    def level(self) -> int:
        return self._level

    @property
    def min_calls(self) -> int:
        return self._min_calls

    def _called(self, *ids, text: str = "") -> None:
        """Count a tool call and note the ids it uses that nothing showed yet (id arguments as given, ids
        inside free text)."""
        self._calls += 1
        used = {i.strip() for i in ids if isinstance(i, str) and i.strip()} | set(ID_PATTERN.findall(text))
        self._hallucinated |= used - self._seen

    def _shown(self, text: str) -> str:
        self._seen.update(ID_PATTERN.findall(text))
        return text

    def _product(self, product_id: str) -> Product | None:
        return self._world.products.get(product_id.strip()) if isinstance(product_id, str) else None

    def _generate(self, rng: random.Random, level: int) -> tuple[str, int]:
        raise NotImplementedError

    def _completed(self) -> bool:
        raise NotImplementedError


class _CatalogTools:
    _page_size = 8
    _details_in_search = True

    def search_catalog(self, query: str) -> str:
        """Search the store's catalog.

        Args:
            query: Words a product's title must all contain, e.g. "black USB-C charger"; words that no
                product has are ignored.

        Returns:
            The matching products, cheapest first, one per line: id | title | price.
        """
        self._called(text=query)
        vocabulary = set().union(*(p.words() for p in self._world.products.values()))
        words = query_words(query)
        known = [w for w in words if w in vocabulary]
        ignored = list(dict.fromkeys(w for w in words if w not in vocabulary))
        note = f" (ignored words no product has: {', '.join(ignored[:8])}{', ...' if len(ignored) > 8 else ''})" \
            if ignored else ""
        if not known:
            return self._shown(f"No search words matched any product{note}. Search with words from product titles, "
                               f"e.g. a brand, a color or a category.")
        found = search(self._world.products, known)
        if not found:
            return self._shown(f"No product has all of: {', '.join(known)}{note}.")
        shown = found[:self._page_size]
        lines = [product_line(p, self._details_in_search) for p in shown]
        more = f"\n(showing {len(shown)} of {len(found)}; add words to narrow the search)" if len(found) > len(shown) else ""
        return self._shown(f"{len(found)} match(es){note}:\n" + "\n".join(lines) + more)

    def get_product(self, product_id: str) -> str:
        """Show everything about one product: price, stock, shipping time, return policy.

        Args:
            product_id: The product's id, e.g. "P-01234".

        Returns:
            The product's details.
        """
        self._called(product_id)
        product = self._product(product_id)
        if product is None:
            return f"There is no product {product_id!r}."
        return self._shown(product_card(product))


class _OrderTools:
    _status_in_list = True

    def list_orders(self) -> str:
        """List the customer's orders, newest first.

        Returns:
            One line per order: id | date placed | status and delivery date | the items' titles.
        """
        self._called()
        lines = []
        for order in sorted(self._world.orders.values(), key=lambda o: (o.placed, o.id), reverse=True):
            titles = ", ".join(self._world.products[line.product_id].title for line in order.lines)
            status = f" | {_status_text(order)}" if self._status_in_list else ""
            lines.append(f"{order.id} | placed {order.placed.isoformat()}{status} | {titles}")
        return self._shown("\n".join(lines) if lines else "The customer has no orders.")

    def lookup_order(self, order_id: str) -> str:
        """Show one order: its status, dates, carrier and items with their product ids.

        Args:
            order_id: The order's id, e.g. "O-01234".

        Returns:
            The order's details, one item per line.
        """
        self._called(order_id)
        order = self._world.orders.get(order_id.strip())
        if order is None:
            return f"There is no order {order_id!r} for this customer."
        lines = [f"{order.id}: placed {order.placed.isoformat()}, {_status_text(order)}"]
        for line in order.lines:
            product = self._world.products[line.product_id]
            deadline = return_deadline(order, product)
            policy = "final sale" if product.final_sale else (
                f"returnable until {deadline.isoformat()}" if deadline else "returnable after delivery")
            lines.append(f"- {product.id} | {product.title} | qty {line.quantity} | ${line.price:.2f} | {policy}")
        return self._shown("\n".join(lines))


def _status_text(order: Order) -> str:
    if order.status == "delivered":
        return f"delivered {order.delivery.isoformat()}"
    if order.status == "shipped":
        return f"shipped with {order.carrier}, expected {order.delivery.isoformat()}"
    return "processing (not shipped yet)"


def _other(rng: random.Random, options, current):
    return rng.choice([o for o in options if o != current])


class ProductDiscoveryEnv(_CatalogTools, _ShopEnv):
    """Find a product that meets the customer's hard constraints and recommend it."""

    def recommend(self, product_id: str) -> str:
        """Recommend one product to the customer; this ends the search (only the first recommendation counts).

        Args:
            product_id: The id of the product that meets every requirement.

        Returns:
            A confirmation.
        """
        self._called(product_id)
        if self._recommended is not None:
            return f"You already recommended {self._recommended}; only the first recommendation counts."
        if self._product(product_id) is None:
            return f"There is no product {product_id!r}; recommend a product id a search showed you."
        self._recommended = product_id.strip()
        return self._shown(f"Recommended {self._recommended} to the customer.")

    def _generate(self, rng, level):
        axes = discovery_axes(level)
        self._page_size, self._details_in_search = axes.page_size, not axes.hide_details
        products = make_catalog(rng, axes.catalog_size, self._taken)
        target = rng.choice(sorted((p for p in products.values() if p.stock > 0), key=lambda p: p.id))
        kinds = rng.sample(["brand", "color", "attribute", "max_price", "max_ship_days"], axes.constraints)
        self._constraints = {
            "brand": target.brand, "color": target.color, "attribute": target.attribute,
            "max_price": float(math.ceil((target.price + 0.01) / 5) * 5), "max_ship_days": target.ship_days,
        }
        self._constraints = {k: self._constraints[k] for k in kinds}
        self._category = target.category
        broken = kinds + ["stock"]
        for index in range(axes.distractors):
            near = self._near_miss(rng, target, broken[index % len(broken)])
            products[near.id] = near
        self._world = World(products)
        self._recommended: str | None = None
        return self._request(), 2 + (0 if self._details_in_search else 1)

    def _near_miss(self, rng, target: Product, kind: str) -> Product:
        """A copy of `target` that breaks exactly the constraint `kind`."""
        c = self._constraints
        change = {
            "brand": lambda: {"brand": _other(rng, BRANDS, target.brand)},
            "color": lambda: {"color": _other(rng, COLORS, target.color)},
            "attribute": lambda: {"attribute": _other(rng, CATEGORIES[target.category][1], target.attribute)},
            "max_price": lambda: {"price": round(c["max_price"] + rng.uniform(1, 20), 2)},
            "max_ship_days": lambda: {"ship_days": c["max_ship_days"] + rng.randint(1, 4)},
            "stock": lambda: {"stock": 0},
        }[kind]()
        return variant(rng, target, self._taken, **change)

    def _request(self) -> str:
        c = self._constraints
        parts = [f"I'm looking for a {self._category}"]
        if "brand" in c:
            parts.append(f"from {c['brand']}")
        if "color" in c:
            parts.append(f"in {c['color']}")
        if "attribute" in c:
            parts.append(f"with {CATEGORIES[self._category][0]} {c['attribute']}")
        if "max_price" in c:
            parts.append(f"that costs at most ${c['max_price']:.2f}")
        if "max_ship_days" in c:
            parts.append(f"that ships within {c['max_ship_days']} days")
        return " ".join(parts) + ". It must be in stock. Please find one and recommend it with the recommend tool."

    def _meets(self, product: Product) -> bool:
        c = self._constraints
        return (product.category == self._category and product.stock > 0
                and c.get("brand", product.brand) == product.brand
                and c.get("color", product.color) == product.color
                and c.get("attribute", product.attribute) == product.attribute
                and product.price <= c.get("max_price", math.inf)
                and product.ship_days <= c.get("max_ship_days", math.inf))

    def _completed(self) -> bool:
        return self._recommended is not None and self._meets(self._world.products[self._recommended])


class CartBuildingEnv(_CatalogTools, _ShopEnv):
    """Put exactly the requested products, in the requested quantities, in the cart and check out."""

    def add_to_cart(self, product_id: str, quantity: int) -> str:
        """Add a product to the cart.

        Args:
            product_id: The product's id, e.g. "P-01234".
            quantity: How many to add (at least 1).

        Returns:
            The cart after the change.
        """
        self._called(product_id)
        if self._world.checked_out is not None:
            return "The order was already placed; the cart cannot change."
        product = self._product(product_id)
        if product is None:
            return f"There is no product {product_id!r}."
        if quantity < 1:
            return f"quantity must be at least 1, got {quantity}."
        total = self._world.cart.get(product.id, 0) + quantity
        if total > product.stock:
            return f"Only {product.stock} of {product.id} in stock; the cart would hold {total}."
        self._world.cart[product.id] = total
        return self._shown(f"Added {quantity} x {product.title} ({product.id}).\n{self._cart_text()}")

    def remove_from_cart(self, product_id: str) -> str:
        """Remove a product from the cart entirely.

        Args:
            product_id: The product's id.

        Returns:
            The cart after the change.
        """
        self._called(product_id)
        if self._world.checked_out is not None:
            return "The order was already placed; the cart cannot change."
        if self._world.cart.pop(product_id.strip(), None) is None:
            return f"{product_id!r} is not in the cart.\n{self._cart_text()}"
        return self._shown(f"Removed {product_id.strip()}.\n{self._cart_text()}")

    def view_cart(self) -> str:
        """Show the cart.

        Returns:
            One line per product in the cart, and the total.
        """
        self._called()
        return self._shown(self._cart_text())

    def checkout(self) -> str:
        """Place the order for everything in the cart; the cart cannot change afterwards.

        Returns:
            The order confirmation.
        """
        self._called()
        if self._world.checked_out is not None:
            return "The order was already placed."
        if not self._world.cart:
            return "The cart is empty; add products before checking out."
        self._world.checked_out = dict(self._world.cart)
        return self._shown(f"Order placed.\n{self._cart_text()}")

    def _cart_text(self) -> str:
        if not self._world.cart:
            return "Cart: empty."
        lines = []
        total = 0.0
        for product_id, quantity in sorted(self._world.cart.items()):
            product = self._world.products[product_id]
            total += quantity * product.price
            lines.append(f"- {product_id} | {product.title} | qty {quantity} | ${product.price:.2f} each")
        return "Cart:\n" + "\n".join(lines) + f"\ntotal ${total:.2f}"

    def _generate(self, rng, level):
        axes = cart_axes(level)
        self._page_size = axes.page_size
        products = make_catalog(rng, axes.catalog_size, self._taken)
        combos = {(p.category, p.brand, p.color, p.attribute) for p in products.values()}
        candidates = sorted((p for p in products.values() if p.stock >= axes.max_quantity), key=lambda p: p.id)
        targets = rng.sample(candidates, axes.items)
        for target in targets:
            for _ in range(axes.variants):
                sibling = self._sibling(rng, target, combos)
                if sibling is not None:
                    products[sibling.id] = sibling
        self._world = World(products)
        self._targets = {p.id: rng.randint(1, axes.max_quantity) for p in targets}
        wanted = "; ".join(
            f"{self._targets[p.id]} x the {p.color} {p.brand} {p.category} with {CATEGORIES[p.category][0]} "
            f"{p.attribute}" for p in targets)
        request = f"Please put these in my cart: {wanted}. Then check out."
        return request, 2 * axes.items + 1

    def _sibling(self, rng, target: Product, combos: set) -> Product | None:
        """A product of the target's brand and category differing in color or attribute (not yet in the catalog)."""
        options = [(target.category, target.brand, color, attribute) for color in COLORS
                   for attribute in CATEGORIES[target.category][1]]
        free = [o for o in options if o not in combos]
        if not free:
            return None
        combo = rng.choice(free)
        combos.add(combo)
        return variant(rng, target, self._taken, color=combo[2], attribute=combo[3])

    def _completed(self) -> bool:
        return self._world.checked_out == self._targets


class _OrderHistory(_OrderTools, _ShopEnv):
    """An order history around one target product (shared by returns and tracking)."""

    def _history(self, rng, level, target_order: Order, older_copy: Order | None) -> None:
        axes = order_axes(level)
        products = self._world.products
        target = products[target_order.lines[0].product_id]
        orders = [target_order] + ([older_copy] if older_copy else [])
        similar = sorted((p for p in products.values() if p.category == target.category and p.id != target.id),
                         key=lambda p: p.id)
        others = sorted((p for p in products.values() if p.category != target.category), key=lambda p: p.id)
        for index in range(axes.orders - len(orders)):
            pool = similar if index < axes.similar and similar else others
            items = [rng.choice(pool)] + rng.sample(others, rng.randint(0, 2))
            orders.append(self._order(rng, items))
        self._world.orders = {o.id: o for o in orders}

    def _order(self, rng, items: list[Product], status: str | None = None, delivered_days_ago: int | None = None):
        status = status or rng.choice(("delivered", "delivered", "shipped", "processing"))
        placed = TODAY - datetime.timedelta(days=rng.randint(1, 150))
        delivery, carrier = None, None
        if status == "delivered":
            ago = delivered_days_ago if delivered_days_ago is not None else rng.randint(1, 140)
            delivery = TODAY - datetime.timedelta(days=ago)
            placed = delivery - datetime.timedelta(days=rng.randint(2, 6))
            carrier = rng.choice(CARRIERS)
        elif status == "shipped":
            placed = TODAY - datetime.timedelta(days=rng.randint(1, 4))
            delivery = TODAY + datetime.timedelta(days=rng.randint(1, 5))
            carrier = rng.choice(CARRIERS)
        lines = tuple(OrderLine(p.id, rng.randint(1, 2), p.price) for p in dict.fromkeys(items))
        return Order(new_id(rng, "O", self._taken), placed, status, lines, delivery, carrier)


class ReturnsEnv(_OrderHistory):
    """Start the return the customer asks for, on the right order line, within the store's policy."""

    def initiate_return(self, order_id: str, product_id: str, reason: str) -> str:
        """Start a return of one item of a delivered order, if the store's policy allows it.

        Args:
            order_id: The order's id, e.g. "O-01234".
            product_id: The id of the item to return, as lookup_order shows it.
            reason: Why the customer returns it.

        Returns:
            The return's id, or why the return is not possible.
        """
        self._called(order_id, product_id, text=reason)
        order = self._world.orders.get(order_id.strip())
        if order is None:
            return f"There is no order {order_id!r} for this customer."
        product_id = product_id.strip()
        if product_id not in {line.product_id for line in order.lines}:
            return f"Order {order.id} has no item {product_id!r}."
        product = self._world.products[product_id]
        if any(o == order.id and p == product_id for _, o, p in self._world.returns):
            return f"A return for {product_id} in {order.id} already exists."
        if order.status != "delivered":
            return f"Order {order.id} has not been delivered yet; it cannot be returned."
        if product.final_sale:
            return f"{product.title} was a final sale item and cannot be returned."
        deadline = return_deadline(order, product)
        if TODAY > deadline:
            return f"The return window for {product_id} in {order.id} closed on {deadline.isoformat()}."
        return_id = new_id(self._rng, "R", self._taken)
        self._world.returns.append((return_id, order.id, product_id))
        return self._shown(f"Return {return_id} created for {product.title} ({product_id}) from {order.id}.")

    def _generate(self, rng, level):
        axes = order_axes(level)
        products = make_catalog(rng, axes.catalog_size, self._taken)
        self._world = World(products)
        target = rng.choice(sorted((p for p in products.values() if not p.final_sale), key=lambda p: p.id))
        window = target.return_days
        target_order = self._order(rng, [target], "delivered", rng.randint(1, window - 1))
        older = None
        if axes.repeat_purchase:
            older = self._order(rng, [target], "delivered", window + rng.randint(5, 60))
        self._history(rng, level, target_order, older)
        self._goal = (target_order.id, target.id)
        received = target_order.delivery.isoformat()
        if axes.order_id_given:
            request = f"Hi, I'd like to return the {target.title} from order {target_order.id}"
        else:
            request = f"Hi, I'd like to return the {target.title} that was delivered on {received}"
        request += f", because {rng.choice(REASONS)}."
        return request, 2 if axes.order_id_given else 3

    def _completed(self) -> bool:
        return [(o, p) for _, o, p in self._world.returns] == [self._goal]


class OrderTrackingEnv(_OrderHistory):
    """Tell the customer the status and the delivery date of the order they ask about."""

    def answer(self, order_id: str, status: str, delivery_date: str) -> str:
        """Give the customer the order's status; this ends the conversation (only the first answer counts).

        Args:
            order_id: The order's id.
            status: The order's status (choices: ["processing", "shipped", "delivered"])
            delivery_date: The expected (shipped) or actual (delivered) delivery date as YYYY-MM-DD.

        Returns:
            A confirmation.
        """
        self._called(order_id)
        if self._answer is not None:
            return "You already answered; only the first answer counts."
        self._answer = (order_id.strip(), status.strip().lower(), delivery_date.strip())
        return self._shown(f"Told the customer: order {order_id.strip()} is {status}, delivery date {delivery_date}.")

    def _generate(self, rng, level):
        axes = order_axes(level)
        self._status_in_list = not axes.status_hidden
        products = make_catalog(rng, axes.catalog_size, self._taken)
        self._world = World(products)
        target = rng.choice(sorted(products.values(), key=lambda p: p.id))
        status = rng.choice(("shipped", "delivered"))
        target_order = self._order(rng, [target], status, rng.randint(1, 10))
        older = None
        if axes.repeat_purchase:
            older = self._order(rng, [target], "delivered", (TODAY - target_order.placed).days + rng.randint(5, 60))
        self._history(rng, level, target_order, older)
        self._answer: tuple[str, str, str] | None = None
        self._goal = (target_order.id, target_order.status, target_order.delivery.isoformat())
        if axes.order_id_given:
            request = f"Where is my order {target_order.id}? Please tell me its status and delivery date."
        else:
            request = (f"Where is my most recent order with the {target.title}? "
                       f"Please tell me its status and delivery date.")
        min_calls = 2 if axes.order_id_given or not axes.status_hidden else 3
        return request, min_calls

    def _completed(self) -> bool:
        return self._answer == self._goal
