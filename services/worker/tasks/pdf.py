"""A minimal PDF writer for tables of text: no dependency, streamed page by page.

``write_table_pdf`` lays rows out in columns in Helvetica (the header in
Helvetica-Bold), repeats the title and header on every page and numbers the
pages. Objects are written as soon as a page is full, and only their byte
offsets are kept for the cross-reference table, so memory does not grow with
the number of rows. Column widths come from the header and the first page of
rows; longer cells are cut with "...". Text outside Windows-1252 shows as "?"
(the standard 14 fonts carry no other glyphs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from typing import BinaryIO

#: A4 portrait and landscape, in points.
PORTRAIT = (595.0, 842.0)
LANDSCAPE = (842.0, 595.0)
MARGIN = 40.0
FONT_SIZE = 9.0
LEADING = 12.0
CELL_PAD = 8.0
#: Helvetica advance widths (1/1000 em) for ASCII 32..126, from Adobe's AFM metrics.
_HELVETICA = (
    [278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278]
    + [556] * 10
    + [278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833]
    + [722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, 333]
    + [556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500]
    + [278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584]
)
_WIDTHS = dict(zip(range(32, 127), _HELVETICA, strict=True))
#: The page size and the width of each column, in points.
Geometry = tuple[tuple[float, float], list[float]]
#: Helvetica-Bold is at most this much wider than Helvetica for the same text.
_BOLD_FACTOR = 1.12


def text_width(text: str, size: float = FONT_SIZE, *, bold: bool = False) -> float:
    """The width in points of ``text`` set in Helvetica at ``size``; non-ASCII counts as an average glyph."""
    units = sum(_WIDTHS.get(ord(ch), 556) for ch in text)
    return units * size / 1000 * (_BOLD_FACTOR if bold else 1.0)


def fit(text: str, width: float, *, bold: bool = False) -> str:
    """``text`` cut with "..." so that it fits in ``width`` points."""
    if text_width(text, bold=bold) <= width:
        return text
    budget = width - text_width("...", bold=bold)
    used, kept = 0.0, 0
    for ch in text:
        used += text_width(ch, bold=bold)
        if used > budget:
            break
        kept += 1
    return text[:kept] + "..."


def _literal(text: str) -> bytes:
    """A PDF string literal in WinAnsiEncoding."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text)
    raw = clean.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


class _Writer:
    """Numbered objects appended to ``out``, remembering each one's byte offset."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.position = 0
        self.offsets: dict[int, int] = {}
        self.next_number = 1

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.position += len(data)

    def reserve(self) -> int:
        number = self.next_number
        self.next_number += 1
        return number

    def obj(self, number: int, body: bytes) -> None:
        self.offsets[number] = self.position
        self.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def stream(self, number: int, content: bytes) -> None:
        self.obj(number, b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")

    def finish(self, root: int, info: int) -> None:
        xref_at = self.position
        size = self.next_number
        self.write(b"xref\n0 %d\n0000000000 65535 f \n" % size)
        for number in range(1, size):
            self.write(b"%010d 00000 n \n" % self.offsets[number])
        self.write(b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\n" % (size, root, info))
        self.write(b"startxref\n%d\n%%%%EOF\n" % xref_at)


def _layout(columns: Sequence[str], sample: Sequence[Sequence[str]]) -> Geometry:
    """The page size and each column's width: natural widths, shrunk to the page when too wide."""
    natural = [
        max([text_width(name, bold=True), *(text_width(row[i]) for row in sample if i < len(row))]) + CELL_PAD
        for i, name in enumerate(columns)
    ]
    page = PORTRAIT if sum(natural) <= PORTRAIT[0] - 2 * MARGIN else LANDSCAPE
    available = page[0] - 2 * MARGIN
    total = sum(natural) or 1.0
    if total <= available:
        # Slack for wider cells on later pages: up to half as wide again, within the page.
        grow = 1 + min(0.5, (available - total) / total)
        return page, [width * grow for width in natural]
    # Every column keeps a share proportional to its natural width, but at least 40 points.
    widths = [max(40.0, available * width / total) for width in natural]
    scale = available / sum(widths)
    return page, [width * scale for width in widths]


def _page_content(
    title: str, subtitle: str, columns: Sequence[str], rows: Sequence[Sequence[str]], page_no: int, geometry: Geometry
) -> bytes:
    (_, page_h), widths = geometry
    lines = [b"BT", b"/F2 13 Tf", b"1 0 0 1 %.2f %.2f Tm %s Tj" % (MARGIN, page_h - MARGIN - 13, _literal(title))]
    lines += [b"/F1 8 Tf", b"1 0 0 1 %.2f %.2f Tm %s Tj" % (MARGIN, page_h - MARGIN - 27, _literal(subtitle))]
    y = page_h - MARGIN - 48
    for font, cells, bold in [(b"/F2", columns, True)] + [(b"/F1", row, False) for row in rows]:
        lines.append(font + b" %.1f Tf" % FONT_SIZE)
        x = MARGIN
        for width, cell in zip(widths, cells, strict=False):
            text = fit(cell, width - CELL_PAD, bold=bold)
            lines.append(b"1 0 0 1 %.2f %.2f Tm %s Tj" % (x, y, _literal(text)))
            x += width
        y -= LEADING
        if bold:
            y -= 4
    if not rows:
        lines.append(b"/F1 %.1f Tf 1 0 0 1 %.2f %.2f Tm %s Tj" % (FONT_SIZE, MARGIN, y, _literal("No rows.")))
    lines += [b"/F1 8 Tf", b"1 0 0 1 %.2f %.2f Tm %s Tj" % (MARGIN, MARGIN - 12, _literal(f"Page {page_no}")), b"ET"]
    rule_y = page_h - MARGIN - 48 - 4
    lines.append(b"0.5 w %.2f %.2f m %.2f %.2f l S" % (MARGIN, rule_y, MARGIN + sum(widths), rule_y))
    return b"\n".join(lines)


def _pages(rows: Iterator[Sequence[str]], per_page: int) -> Iterator[list[Sequence[str]]]:
    while page := list(islice(rows, per_page)):
        yield page


def write_table_pdf(
    out: BinaryIO, *, title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], subtitle: str = ""
) -> int:
    """Write a PDF of ``rows`` under ``columns`` to ``out``; returns the number of pages."""
    writer = _Writer(out)
    writer.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    catalog, pages, regular, bold, info = (writer.reserve() for _ in range(5))
    writer.obj(regular, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    writer.obj(bold, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>")
    iterator = iter(rows)
    # The first page of rows decides the column widths (for whichever orientation it gets).
    per_page = int((LANDSCAPE[1] - 2 * MARGIN - 52 - 12) // LEADING)
    first = list(islice(iterator, per_page))
    geometry = _layout(columns, first)
    (page_w, page_h), _ = geometry
    per_page = int((page_h - 2 * MARGIN - 52 - 12) // LEADING)
    kids: list[int] = []
    groups: Iterable[list[Sequence[str]]] = _pages(chain(first, iterator), per_page) if first else [[]]
    for page_rows in groups:
        content, page = writer.reserve(), writer.reserve()
        writer.stream(content, _page_content(title, subtitle, columns, page_rows, len(kids) + 1, geometry))
        writer.obj(
            page,
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.0f %.0f] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R /F2 %d 0 R >> >> >>" % (pages, page_w, page_h, content, regular, bold),
        )
        kids.append(page)
    kids_refs = b" ".join(b"%d 0 R" % kid for kid in kids)
    writer.obj(pages, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids_refs, len(kids)))
    writer.obj(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % pages)
    writer.obj(info, b"<< /Title %s /Producer (jobrelay) >>" % _literal(title))
    writer.finish(catalog, info)
    return len(kids)
