"""The retrieval contract shared by every retriever and by the rollout engine.

A `Retriever` maps a batch of queries to ranked `Passage` lists; `format_passages` renders one
list as the text that goes between ``<information>`` and ``</information>`` (Search-R1's layout:
``Doc 1 (Title: ...) text``). Corpus lines follow Search-R1's wiki-18 format, where ``contents`` is
``"\\"Title\\"\\ntext"``; `Passage.from_contents` splits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Passage:
    """One retrieved passage."""

    id: str
    """Corpus id of the passage (the ``id`` field of the corpus line)."""
    title: str
    """Title, without the surrounding quotes of the wiki-18 format."""
    text: str
    """Body text after the title line."""
    score: float | None = None
    """Retrieval score (inner product for dense retrievers); None when not requested."""

    @property
    def contents(self) -> str:
        """The passage in wiki-18 ``contents`` form: ``"Title"\\ntext``."""
        return f'"{self.title}"\n{self.text}'

    @classmethod
    def from_contents(cls, id: str, contents: str, score: float | None = None) -> Passage:
        """Split a wiki-18 ``contents`` string into title and text.

        >>> Passage.from_contents("7", '"Ada Lovelace"\\nAda was a mathematician.')
        Passage(id='7', title='Ada Lovelace', text='Ada was a mathematician.', score=None)
        >>> Passage.from_contents("8", "no title line").title
        ''
        """
        head, sep, body = contents.partition("\n")
        if not sep:
            return cls(id=str(id), title="", text=contents.strip(), score=score)
        return cls(id=str(id), title=head.strip().strip('"'), text=body.strip(), score=score)


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the ``topk`` best passages for each query, best first."""

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]: ...


def format_passages(passages: list[Passage]) -> str:
    """Render passages for an ``<information>`` block, one per line, numbered from 1.

    >>> format_passages([Passage("1", "Ada", "A mathematician."), Passage("2", "Bob", "A cook.")])
    'Doc 1 (Title: Ada) A mathematician.\\nDoc 2 (Title: Bob) A cook.'
    """
    return "\n".join(f"Doc {i} (Title: {p.title}) {p.text}" for i, p in enumerate(passages, 1))
