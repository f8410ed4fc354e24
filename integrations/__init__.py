"""Integrations with model zoos and training frameworks."""
