"""USP application layer (see docs/architecture.md)."""
