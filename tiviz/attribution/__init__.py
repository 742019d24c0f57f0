"""Token attribution: methods by string id, one tidy table out."""

from tiviz.attribution.core import attribute
from tiviz.attribution.methods import DEFAULT_METHODS, METHODS, list_methods, resolve_methods

__all__ = ["DEFAULT_METHODS", "METHODS", "attribute", "list_methods", "resolve_methods"]
