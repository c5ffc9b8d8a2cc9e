"""Helpers for scripts/make-fixtures.py (PyTorch reference data for the cta-eval TypeScript tests)."""
