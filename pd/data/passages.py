"""Long documents as passages: cut at paragraph, sentence or word boundaries, each with its offset.

``pd inject`` sizes passages to the teacher's prompt (:func:`pd.context.passage_chars`);
the folder loader (:func:`pd.data.load_folder`) cuts a longer document with
:func:`document_passages`, so every job that loads the folder sees the same passages.
"""

from __future__ import annotations


def document_passages(rel: str, raw: str, max_chars: int | None) -> list[tuple[str, str, int]]:
    """A document's text as passages with their ids: the document itself when it is short enough.

    Args:
        rel: the document's id (its path relative to the folder).
        raw: the file's text.
        max_chars: the longest passage (None: no limit).

    Returns:
        (id, text, character offset in ``raw``) triples: ``(rel, stripped text, offset)`` for a whole
        document, ``(f"{rel}#{offset}", passage, offset)`` for each passage of a split one; none for
        an empty document.
    """
    text = raw.strip()
    if not text:
        return []
    lead = len(raw) - len(raw.lstrip())
    if not max_chars or len(text) <= max_chars:
        return [(rel, text, lead)]
    return [(f"{rel}#{lead + off}", part, lead + off) for off, part in split_passages(text, max_chars)]


def split_passages(text: str, max_chars: int) -> list[tuple[int, str]]:
    """``text`` in consecutive passages of at most ``max_chars`` characters, cut at the last paragraph
    break, else sentence end, else space, inside each window (mid-word only when there is none).

    Args:
        text: the document's text.
        max_chars: the longest passage (at least 1).

    Returns:
        (character offset in ``text``, passage stripped of surrounding whitespace) pairs, in order;
        whitespace-only pieces are left out.
    """
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + max_chars)
        if end < len(text):
            window = text[start:end]
            cut = max(window.rfind("\n\n"), -1)
            if cut <= 0:
                cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "), window.rfind("\n"))
                cut = cut + 1 if cut > 0 else window.rfind(" ")
            end = start + cut if cut > 0 else end
        piece = text[start:end]
        if piece.strip():
            out.append((start + len(piece) - len(piece.lstrip()), piece.strip()))
        start = end
    return out
