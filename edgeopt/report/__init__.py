"""Ledger -> terminal table, markdown, HTML."""
