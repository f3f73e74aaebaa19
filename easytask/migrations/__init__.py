"""Alembic migrations of the EasyTask schema (SQLite and PostgreSQL); run with `easytask db upgrade`."""
