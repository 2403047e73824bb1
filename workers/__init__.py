"""Coroutine consumers run inside the server process."""
