"""The web application: JSON API under /api (the console joins it later)."""
