"""USP ports layer (see docs/architecture.md)."""
