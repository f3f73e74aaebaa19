"""Corpora of hostile input, as data: `bad_input` holds what tests/test_bad_input.py sends."""
