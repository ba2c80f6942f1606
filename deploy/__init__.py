"""Deployment: the launcher and the default config."""
