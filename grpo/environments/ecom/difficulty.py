"""What a difficulty level means in each e-commerce environment: several axes, one function per env.

Levels run from 0 to MAX_LEVEL; every axis is a monotone function of the level, so a higher level is
never easier on any axis. "Turns needed" is the task's `min_calls`, which grows with the axes
(hidden details, no order id given, more items).

| axis                         | discovery        | cart           | returns        | tracking        |
|------------------------------|------------------|----------------|----------------|-----------------|
| catalog size                 | 40 + 20 L        | 40 + 20 L      | 40 + 10 L      | 40 + 10 L       |
| hard constraints / items     | 1 + L // 2 (≤ 5) | 1 + L // 3     |                |                 |
| quantities above 1           |                  | L >= 2         |                |                 |
| distractors                  | 2 L near misses  | min(3, L) variants per item | min(3, L) similar items | min(3, L) similar items |
| order history                |                  |                | 2 + L orders   | 2 + L orders    |
| order id given in the task   |                  |                | L < 2          | L < 2           |
| details only via get_product | L >= 3          |                |                |                 |
| item bought before (older)   |                  |                | out of window (L >= 3) | older delivery (L >= 3) |
| status only via lookup_order |                  |                |                | L >= 4          |
| search results shown         | 8, 4 from L 5    | 8, 4 from L 5  |                |                 |
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LEVEL = 8


def check_level(level) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"level={level!r} must be an integer in [0, {MAX_LEVEL}]")
    return level


@dataclass(frozen=True)
class DiscoveryAxes:
    catalog_size: int
    constraints: int  # hard constraints besides the category
    distractors: int  # products that break exactly one constraint
    hide_details: bool  # search results omit shipping and stock
    page_size: int


@dataclass(frozen=True)
class CartAxes:
    catalog_size: int
    items: int
    max_quantity: int
    variants: int  # per item: products of the same brand and category in other colors / attributes
    page_size: int


@dataclass(frozen=True)
class OrderAxes:
    catalog_size: int
    orders: int
    order_id_given: bool
    similar: int  # other ordered products of the target's category
    repeat_purchase: bool  # the target product also sits in an older order (out of window / older delivery)
    status_hidden: bool  # list_orders shows ids and dates only (tracking)


def discovery_axes(level: int) -> DiscoveryAxes:
    level = check_level(level)
    return DiscoveryAxes(40 + 20 * level, min(5, 1 + level // 2), 2 * level, level >= 3, 8 if level < 5 else 4)


def cart_axes(level: int) -> CartAxes:
    level = check_level(level)
    return CartAxes(40 + 20 * level, 1 + level // 3, 1 if level < 2 else 3, min(3, level), 8 if level < 5 else 4)


def order_axes(level: int) -> OrderAxes:
    level = check_level(level)
    return OrderAxes(40 + 10 * level, 2 + level, level < 2, min(3, level), level >= 3, level >= 4)
