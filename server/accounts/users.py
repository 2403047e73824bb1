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


async def create_user(store: Store, username: str, password: str, *, replace: bool = False) -> bool:
    """Create the user; with ``replace``, reset an existing user's password.

    Returns True when a new user was created.
    """
    check_credentials_shape(username, password)
    hashed = await asyncio.to_thread(hash_password, password)
    try:
        await store.users.insert_one({"_id": username, "password": hashed, "created_at": time.time()})
        return True
    except DuplicateKeyError:
        if not replace:
            raise InvalidUser(f"user {username!r} already exists") from None
    await store.users.update_one({"_id": username}, {"$set": {"password": hashed}})
    return False


async def authenticate(store: Store, username: str, password: str) -> bool:
    if not USERNAME.fullmatch(username) or len(password) > MAX_PASSWORD:
        return False
    user = await store.users.find_one({"_id": username})
    stored = user["password"] if user else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, password, stored)
    return ok and user is not None
