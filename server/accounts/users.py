"""Shop users: creation and password checks."""

from __future__ import annotations

import asyncio
import re
import time

from pymongo.errors import DuplicateKeyError

from server.accounts.passwords import hash_password, verify_password
from server.infra.store import Store

USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MAX_PASSWORD = 1024
# Verified against when the user does not exist, so a wrong name costs as much
# time as a wrong password and names cannot be probed by timing.
_DUMMY_HASH = hash_password("paypush-no-such-user")


class InvalidUser(ValueError):
    pass


def check_credentials_shape(username: str, password: str) -> None:
    if not USERNAME.fullmatch(username):
        raise InvalidUser("username: 1-64 letters, digits or . _ @ -")
    if not 8 <= len(password) <= MAX_PASSWORD:
        raise InvalidUser(f"password: 8 to {MAX_PASSWORD} characters")


OPERATOR = "operator"  # may see every order and give money back


async def create_user(store: Store, username: str, password: str, *, replace: bool = False,
                      operator: bool = False) -> bool:
    """Create the user; with ``replace``, reset an existing user's password
    (and, with ``operator``, promote them). Returns True when a new user was created.

    ``replace`` without ``operator`` leaves an operator an operator: demoting
    is a deliberate act, not a side effect of a password reset.
    """
    check_credentials_shape(username, password)
    hashed = await asyncio.to_thread(hash_password, password)
    role = {"role": OPERATOR} if operator else {}
    try:
        await store.users.insert_one({"_id": username, "password": hashed, "created_at": time.time(), **role})
        return True
    except DuplicateKeyError:
        if not replace:
            raise InvalidUser(f"user {username!r} already exists") from None
    await store.users.update_one({"_id": username}, {"$set": {"password": hashed, **role}})
    return False


class Roles:
    """Who may do what beyond shopping: read from the users collection on each
    ask, so a promotion or demotion counts at once, without a new login."""

    def __init__(self, store: Store):
        self.store = store

    async def is_operator(self, username: str) -> bool:
        return await self.store.users.find_one({"_id": username, "role": OPERATOR},
                                               projection={"_id": 1}) is not None


async def authenticate(store: Store, username: str, password: str) -> bool:
    if not USERNAME.fullmatch(username) or len(password) > MAX_PASSWORD:
        return False
    user = await store.users.find_one({"_id": username})
    stored = user["password"] if user else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, password, stored)
    return ok and user is not None
