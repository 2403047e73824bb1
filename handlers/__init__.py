"""Tornado handlers: thin. Parse, call one service function, respond."""
