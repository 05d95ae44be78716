"""A runbook on a terminal: rich's Markdown, except that code blocks are printed as written
(a line each however wide, no padding after it: a pasted command must run, and a `\\` must end
its line) and a link names what to open (`voke dr runbook show NAME` for another runbook),
not only its text. Print it with `crop=False`, so that a code line wider than the terminal
goes on rather than being cut. Imported only to render (rich is slow to import)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from rich.markdown import CodeBlock, Markdown, MarkdownElement
from rich.syntax import Syntax

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

_RUNBOOK_LINK = re.compile(r"(?P<name>[A-Za-z0-9][\w-]*)\.md")


class _CodeBlock(CodeBlock):
    """Highlighted in the terminal's own colours (no background to pad), never wrapped nor cut."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        code = str(self.text).rstrip()
        text = Syntax(code, self.lexer_name, theme="ansi_dark").highlight(code)
        text.rstrip()
        text.no_wrap, text.overflow, text.justify = True, "ignore", "default"
        yield text


class RunbookMarkdown(Markdown):
    elements: ClassVar[dict[str, type[MarkdownElement]]] = {
        **Markdown.elements,
        "fence": _CodeBlock,
        "code_block": _CodeBlock,
    }

    def __init__(self, markup: str) -> None:
        super().__init__(markup, hyperlinks=False)  # `text (target)`: a terminal may not follow links
        for token in self.parsed:
            for child in token.children or []:
                href = child.attrs.get("href") if child.type == "link_open" else None
                found = _RUNBOOK_LINK.fullmatch(str(href)) if href else None
                if found:  # a relative link to a sibling runbook: the command that shows it
                    child.attrs["href"] = f"voke dr runbook show {found['name']}"
