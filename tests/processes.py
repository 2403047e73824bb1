"""Moved to tests/support/processes.py. Kept only because tests/e2e (owned
elsewhere) still imports it from here; delete once its imports name tests.support."""

from tests.support.processes import ROOT, ServerProcess, base_env, wait_http

__all__ = ["ROOT", "ServerProcess", "base_env", "wait_http"]
