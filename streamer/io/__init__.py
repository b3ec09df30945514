"""Thin I/O shells around the pure core: feeds, backfill, bar store, publisher, model, metrics."""
