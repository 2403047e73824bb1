"""What sandbox mode seeds: a demo catalog and a demo shopper."""

from __future__ import annotations

import contextlib

from server.accounts.users import InvalidUser, create_user
from server.domain.catalog import add_sku
from server.infra.store import Store

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-pass-123"
# (id, name, price in fen, stock)
DEMO_SKUS: tuple[tuple[str, str, int, int], ...] = (
    ("tea-longjing", "West Lake Longjing tea, 100 g", 8800, 50),
    ("mug-celadon", "Celadon mug", 3900, 30),
    ("fan-silk", "Silk folding fan", 2500, 20),
    ("card-sticker", "Sticker card (limited)", 1, 5),
)
# A limited item: one shopper's order cannot take the whole run.
DEMO_MAX_PER_ORDER = {"card-sticker": 2}


async def seed_demo(store: Store) -> None:
    for sku_id, name, price, stock in DEMO_SKUS:
        await add_sku(store, sku_id, name, price, stock, DEMO_MAX_PER_ORDER.get(sku_id))
    # Already there: keep whatever password it has now.
    with contextlib.suppress(InvalidUser):
        await create_user(store, DEMO_USER, DEMO_PASSWORD)
