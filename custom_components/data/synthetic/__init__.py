"""(filled in as components are added)."""
