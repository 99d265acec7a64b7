"""Merging methods: a registry keyed by name, one small typed module per method. Torch-free at import."""

from tasks.merge.group import TensorGroup
from tasks.merge.params import MergeParams
from tasks.merge.registry import MERGER_NAMES, METHODS, MergeMethod, get_method

__all__ = ["MERGER_NAMES", "METHODS", "MergeMethod", "MergeParams", "TensorGroup", "get_method"]
