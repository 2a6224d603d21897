"""Pagination of the management API: cursors over a time ordering, stable under inserts."""

from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request

from aperture.errors import InvalidRequest


class NewestFirst(CursorPagination):
    """`?limit=` (1 to 500, default 50) rows a page; follow `next` for the following page."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound as exc:  # DRF's answer to a cursor it did not make
            raise InvalidRequest(
                "Invalid cursor: pass the `next` or `previous` URL of a page as it is.",
                param="cursor",
            ) from exc


class OldestFirst(NewestFirst):
    ordering = ("created_at", "id")
