"""Persistence: SQLModel tables and every query in one place."""
