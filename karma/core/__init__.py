"""The model: synchronous, deterministic, no I/O, no clock reads."""
