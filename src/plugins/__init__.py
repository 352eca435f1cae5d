"""USP plugins layer (see docs/architecture.md)."""
