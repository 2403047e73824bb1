"""Moved to tests/support/stomp.py. Kept only because tests/e2e (owned
elsewhere) still imports it from here; delete once its imports name tests.support."""

from tests.support.stomp import BrowserUser

__all__ = ["BrowserUser"]
