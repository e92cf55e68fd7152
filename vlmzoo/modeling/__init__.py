"""Model building blocks and family models (docs/design.md §3)."""
