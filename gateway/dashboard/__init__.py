"""The operators' dashboard: the admin's landing page (and, filtered, each workspace's).

It reads the hourly rollup (billing.HourlyUsage), budgets and deployment health, never the
usage records themselves, so a page costs a handful of queries however many records exist.
"""
