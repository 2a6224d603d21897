"""CSV exports: a cell a spreadsheet would read as a formula is written as text."""

import csv
import io

import pytest

from aperture.csv_export import csv_response, spreadsheet_safe


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+cmd|' /C calc'!A0", "'=1+cmd|' /C calc'!A0"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("plain", "plain"),
        ("a=1", "a=1"),
        ("", ""),
        ("2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("0.010000", "0.010000"),
        (404, 404),
        (0, 0),
        (None, None),
    ],
)
def test_a_cell_starting_like_a_formula_is_prefixed_with_a_quote(
    cell: object, written: object
) -> None:
    assert spreadsheet_safe(cell) == written


def test_every_cell_of_a_csv_response_is_neutralised_and_numbers_stay_numbers() -> None:
    response = csv_response(
        "x.csv", ["name", "count"], [['=HYPERLINK("https://evil.example")', 3], ["ok", -1]]
    )
    text = b"".join(response.streaming_content).decode()  # type: ignore[arg-type]
    assert list(csv.reader(io.StringIO(text))) == [
        ["name", "count"],
        ['\'=HYPERLINK("https://evil.example")', "3"],
        ["ok", "-1"],
    ]
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="x.csv"'
