"""Passthrough: a provider's native API relayed raw, authenticated, limited and metered."""
