"""The visible text of an HTML page as blocks, one per block-level element, with the headings
each sits under (loaders.load_html makes them Blocks). The standard library's parser is enough:
pages are read for their text, never rendered."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_HTML_BLOCKS = {"p", "div", "li", "td", "th", "pre", "blockquote", "dd", "dt", "section", "article", "tr", "br", "table", "ul", "ol", "figcaption", "caption"}
_HTML_SKIP = {"script", "style", "head", "noscript", "template", "svg"}


class _HtmlText(HTMLParser):
    """Collects the visible text of a page as blocks, closing a block at every block-level tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, int, int, str, bool]] = []  # (text, first line, last line, section, heading)
        self.headings: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.start_line = 1
        self.skip = 0
        self.heading_level = 0

    def _flush(self) -> None:
        text = re.sub(r"[ \t\r\f\v]+", " ", "".join(self.parts)).strip()
        text = re.sub(r"\s*\n\s*", "\n", text)
        end = self.getpos()[0]
        if text:
            if self.heading_level:
                while self.headings and self.headings[-1][0] >= self.heading_level:
                    self.headings.pop()
                self.headings.append((self.heading_level, text))
            section = " > ".join(t for _, t in self.headings)
            self.blocks.append((text, self.start_line, max(end, self.start_line), section, bool(self.heading_level)))
        self.parts.clear()
        self.start_line = end

    def handle_starttag(self, tag, attrs) -> None:
        if tag in _HTML_SKIP:
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = int(tag[1])
        elif tag in _HTML_BLOCKS:
            self._flush()

    def handle_endtag(self, tag) -> None:
        if tag in _HTML_SKIP:
            self.skip = max(0, self.skip - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = 0
        elif tag in _HTML_BLOCKS:
            self._flush()

    def handle_data(self, data) -> None:
        if not self.skip:
            if not "".join(self.parts).strip():
                self.start_line = self.getpos()[0]
            self.parts.append(data)


def html_blocks(text: str) -> list[tuple[str, int, int, str, bool]]:
    """(text, first line, last line, section, is a heading) of each block of the page `text`."""
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.blocks
