"""Pagination of the management API: cursors over a time ordering, stable under inserts."""

from rest_framework.pagination import CursorPagination


class NewestFirst(CursorPagination):
    """`?limit=` (1 to 500, default 50) rows a page; follow `next` for the following page."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class OldestFirst(NewestFirst):
    ordering = ("created_at", "id")
