"""A report as a list of sections made of blocks, rendered once to Markdown and once to HTML.

Sections are data (a title and blocks: paragraphs, tables, bullet lists, figures), so a new part
of the report (downstream scores, layer analysis) is one more `Section` appended to the list and
appears in both formats alike, without either renderer knowing about it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Figures:
    paths: tuple[Path, ...]
    """Relative to the report's directory, so the report stays valid when it is moved."""


Block = Paragraph | Table | Bullets | Figures


@dataclass(frozen=True)
class Section:
    """A titled part of the report; the untitled first section opens it under the main title."""

    title: str | None
    blocks: tuple[Block, ...]


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        return markdown_table(block)
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    return "\n\n".join(f"![{p.stem}]({p.as_posix()})" for p in block.paths)


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        if section.title:
            parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks if _has_content(block)]
    return "\n\n".join(parts) + "\n"


def _has_content(block: Block) -> bool:
    if isinstance(block, Paragraph):
        return bool(block.text)
    if isinstance(block, Table):
        return bool(block.rows)
    return bool(block.items if isinstance(block, Bullets) else block.paths)


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in block.rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    return "".join(
        f'<figure><img src="{html.escape(p.as_posix())}" alt="{html.escape(p.stem)}"></figure>'
        for p in block.paths
    )


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse}"
    "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def render_html(title: str, sections: Sequence[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        if section.title:
            body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks if _has_content(block)]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
