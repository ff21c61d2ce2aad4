"""lorafleet: the composition root (CLI, logging set-up) tying events, store, workers and engine."""

__version__ = "0.1.0"
