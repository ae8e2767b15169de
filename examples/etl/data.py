"""Synthetic input for the ETL example: raw CSV partitions of orders, one per day.

The data is generated deterministically from the day, so a re-run produces the same
files (and the same warehouse rows): handy when showing resume and idempotent loads.
"""

from __future__ import annotations

import csv
import random
from datetime import date, timedelta
from pathlib import Path

__all__ = ["CUSTOMERS", "days_ending", "generate_day"]

REGIONS = ("north", "south", "east", "west")
CUSTOMERS = {cid: REGIONS[cid % len(REGIONS)] for cid in range(1, 201)}
PRODUCTS = {"widget": 4.5, "gadget": 12.0, "gizmo": 30.0, "doohickey": 7.25}


def days_ending(last: date, count: int) -> list[str]:
    """ISO dates of the ``count`` days ending with ``last``, oldest first."""
    return [(last - timedelta(days=i)).isoformat() for i in reversed(range(count))]


def generate_day(root: Path, day: str, orders: int = 20_000) -> Path:
    """Write ``root/raw/orders-{day}.csv`` (if missing) and return its path.

    About 1% of rows are dirty on purpose (missing customer, negative quantity), so
    the cleaning step has something to do.
    """
    path = root / "raw" / f"orders-{day}.csv"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(day)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["order_id", "day", "customer_id", "product", "quantity", "unit_price"])
        for n in range(orders):
            product = rng.choice(list(PRODUCTS))
            customer = rng.randint(1, len(CUSTOMERS))
            quantity = rng.randint(1, 9)
            if rng.random() < 0.005:
                customer_field = ""
            else:
                customer_field = str(customer)
            if rng.random() < 0.005:
                quantity = -quantity
            out.writerow(
                [f"{day}-{n:06d}", day, customer_field, product, quantity, PRODUCTS[product]]
            )
    tmp.replace(path)
    return path
