"""Provider adapters: one module per upstream behind `ProviderAdapter` (see base.py)."""
