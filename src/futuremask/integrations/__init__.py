"""Integrations with other tools (lmms-eval, vLLM): optional dependencies, each imported only in its own module."""
