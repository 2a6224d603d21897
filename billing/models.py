"""Billing: prices, budgets, reservations and usage records (built by the billing issue)."""
