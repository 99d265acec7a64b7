"""Merging methods: a registry keyed by name, one small module per method."""

from tasks.merge.registry import MERGER_NAMES, get_merger

__all__ = ["MERGER_NAMES", "get_merger"]
