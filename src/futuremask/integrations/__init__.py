"""Integrations with other tools (optional dependencies, each imported only in its own subpackage)."""
