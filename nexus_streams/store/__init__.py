"""The pattern store: a Protocol (base.py) with a Redis and an in-memory implementation."""
