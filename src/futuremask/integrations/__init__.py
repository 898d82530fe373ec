"""Plugins for tools outside futuremask (lmms-eval, ...). Each imports its tool only inside its own module."""
