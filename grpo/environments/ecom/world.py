"""The shop an e-commerce episode happens in: a seeded catalog, a customer's orders, the store policy.

Everything is generated from a `random.Random` the environment seeds, so an episode's world is a
function of its row's (seed, level). Ids: products "P-" and orders "O-" and returns "R-" followed by
five digits (ID_PATTERN finds them in any text, for the hallucination check).
"""

from __future__ import annotations

import datetime
import random
import re
from dataclasses import dataclass, field, replace

ID_PATTERN = re.compile(r"\b[POR]-\d{5}\b")
TODAY = datetime.date(2025, 6, 15)  # the shop's fixed "today": dates in an episode are relative to it

# category -> (attribute name, its values, (lowest, highest) price, return window in days)
CATEGORIES = {
    "charger": ("connector", ("USB-C", "Lightning", "Micro-USB"), (8, 60), 30),
    "headphones": ("style", ("over-ear", "in-ear", "on-ear"), (15, 300), 30),
    "backpack": ("capacity", ("15L", "20L", "30L"), (20, 150), 60),
    "water bottle": ("material", ("steel", "glass", "plastic"), (5, 45), 60),
    "desk lamp": ("light", ("warm", "cool", "adjustable"), (12, 90), 30),
    "keyboard": ("layout", ("full-size", "tenkeyless", "compact"), (20, 200), 30),
    "phone case": ("fits", ("Pixel 8", "iPhone 15", "Galaxy S24"), (6, 50), 15),
    "running shoes": ("size", ("8", "9", "10", "11"), (40, 180), 60),
}
COLORS = ("black", "white", "red", "blue", "green", "gray")
BRANDS = ("Voltix", "Norda", "Kestrel", "Amberline", "Quillo", "Tarn", "Brisko", "Helia")


@dataclass(frozen=True)
class Product:
    id: str
    category: str
    brand: str
    color: str
    attribute: str  # the value of the category's attribute (CATEGORIES[category][0] names it)
    price: float
    stock: int
    ship_days: int
    final_sale: bool = False

    @property
    def title(self) -> str:
        return f"{self.brand} {self.color} {self.attribute} {self.category}"

    @property
    def return_days(self) -> int:
        return CATEGORIES[self.category][3]

    def words(self) -> set[str]:
        """What a search query word can match."""
        return set(query_words(self.title))


@dataclass(frozen=True)
class OrderLine:
    product_id: str
    quantity: int
    price: float


@dataclass(frozen=True)
class Order:
    id: str
    placed: datetime.date
    status: str  # "processing", "shipped" or "delivered"
    lines: tuple[OrderLine, ...]
    delivery: datetime.date | None = None  # expected (shipped) or actual (delivered); None while processing
    carrier: str | None = None


@dataclass
class World:
    """The mutable state of one episode: catalog, orders, cart, returns."""

    products: dict[str, Product]
    orders: dict[str, Order] = field(default_factory=dict)
    cart: dict[str, int] = field(default_factory=dict)  # product id -> quantity
    returns: list[tuple[str, str, str]] = field(default_factory=list)  # (return id, order id, product id)
    checked_out: dict[str, int] | None = None  # the cart at checkout


def new_id(rng: random.Random, prefix: str, taken: set[str]) -> str:
    while True:
        candidate = f"{prefix}-{rng.randrange(100000):05d}"
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def price_in(rng: random.Random, category: str) -> float:
    low, high = CATEGORIES[category][2]
    return round(rng.uniform(low, high), 2)


def make_catalog(rng: random.Random, size: int, taken: set[str]) -> dict[str, Product]:
    """`size` products, each a distinct (category, brand, color, attribute), so a product's title names it
    uniquely in the base catalog. Stock 0 for about one product in eight."""
    combos = [(c, b, col, a) for c, spec in CATEGORIES.items() for b in BRANDS for col in COLORS for a in spec[1]]
    if size > len(combos):
        raise ValueError(f"catalog size {size} is above the {len(combos)} distinct products the generator has")
    products = {}
    for category, brand, color, attribute in rng.sample(combos, size):
        product = Product(new_id(rng, "P", taken), category, brand, color, attribute, price_in(rng, category),
                          stock=0 if rng.random() < 0.125 else rng.randint(1, 20), ship_days=rng.randint(1, 9),
                          final_sale=category == "phone case" and rng.random() < 0.5)
        products[product.id] = product
    return products


def variant(rng: random.Random, product: Product, taken: set[str], **changes) -> Product:
    """A copy of `product` under a new id with `changes` applied."""
    return replace(product, id=new_id(rng, "P", taken), **changes)


def product_line(product: Product, details: bool) -> str:
    """One search result. details=False leaves out shipping and stock (then only get_product shows them)."""
    line = f"{product.id} | {product.title} | ${product.price:.2f}"
    if details:
        stock = f"{product.stock} in stock" if product.stock else "out of stock"
        line += f" | ships in {product.ship_days} days | {stock}"
    return line


def product_card(product: Product) -> str:
    attribute_name = CATEGORIES[product.category][0]
    stock = f"{product.stock} in stock" if product.stock else "out of stock"
    policy = "final sale (no returns)" if product.final_sale else f"returnable within {product.return_days} days"
    return (f"{product.id}: {product.title}\ncategory: {product.category}\nbrand: {product.brand}\n"
            f"color: {product.color}\n{attribute_name}: {product.attribute}\nprice: ${product.price:.2f}\n"
            f"{stock}\nships in {product.ship_days} days\n{policy}")


_WORD = re.compile(r"[a-z0-9][a-z0-9-]*")


def query_words(query: str) -> list[str]:
    """The words of a search query: lowercase runs of letters, digits and inner hyphens ("USB-C." -> "usb-c")."""
    return _WORD.findall(query.lower())


def search(products: dict[str, Product], words: list[str]) -> list[Product]:
    """Products whose words hold every one of `words`, cheapest first."""
    return sorted((p for p in products.values() if all(w in p.words() for w in words)), key=lambda p: (p.price, p.id))


def return_deadline(order: Order, product: Product) -> datetime.date | None:
    """The last day `product` of `order` can be returned, or None when it cannot be (not delivered, final sale)."""
    if order.status != "delivered" or product.final_sale:
        return None
    return order.delivery + datetime.timedelta(days=product.return_days)
