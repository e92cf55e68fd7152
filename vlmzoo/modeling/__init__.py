"""Model building blocks and family models (DESIGN.md §3)."""
