"""Deployment helpers: export and runtime checks for pruned models."""
