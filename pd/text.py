"""Word-level text normalisation shared by BM25 retrieval and substring grading.

Both need the same idea of a "word": case-folded runs of letters and digits after Unicode
NFKC normalisation (:func:`fold`). Keeping it in one place means a retrieval query and a
graded answer are split the same way, and "Café" typed as one code point (NFC) or as "e" plus
a combining accent (NFD) is the same word. For ASCII text :func:`fold` is ``str.lower``.
"""

from __future__ import annotations

import re
import unicodedata

# Common English function words. Written for this project; short on purpose: only words
# that carry no answer content. Articles are included (Mallen et al. strip them too).
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the
    and or but nor so yet
    of in on at to for from by with about as into onto upon over under than
    is are was were be been being am
    do does did done has have had having
    it its it's this that these those there here
    i me my we our you your he him his she her they them their
    what which who whom whose when where why how
    will would shall should can could may might must
    not no
    """.split()
)

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits, no underscore
# Punctuation that joins two words ("New York-based", "and/or") becomes a space; every
# other punctuation mark or symbol is deleted, so "U.S." -> "us" and "1,000" -> "1000".
_JOINERS = frozenset("-‐‑‒–—―/\\")


# Names the text form :func:`fold` produces; caches of tokenised text include it, so a change of form re-tokenises.
TEXT_FORM = "nfkc-casefold"


def fold(text: str) -> str:
    """Text in the one form that grading and retrieval compare: Unicode NFKC, case-folded, NFKC again.

    NFKC composes a letter and its combining accent (NFD "Zu\u0308rich" -> "Zürich") and maps
    compatibility forms (ligature "ﬁ" -> "fi", full-width "Ａ" -> "A"); case-folding is
    ``lower`` made complete ("Straße" -> "strasse"); the second NFKC re-composes what folding
    decomposed. ASCII text comes out as ``text.lower()``.

    Args:
        text: any text.

    Returns:
        The folded text.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def words(text: str, stopwords: bool = False) -> list[str]:
    """Folded (:func:`fold`) alphanumeric runs; with ``stopwords=True`` the common ones are dropped.

    This is the BM25 tokeniser: punctuation of every kind separates words.
    """
    toks = _WORD_RE.findall(fold(text))
    return [t for t in toks if t not in STOPWORDS] if stopwords else toks


def strip_punctuation(text: str) -> str:
    """Delete punctuation and symbols, except that word-joining marks (hyphens, dashes, slashes) become spaces."""
    out = []
    for ch in text:
        if ch in _JOINERS:
            out.append(" ")
        elif unicodedata.category(ch)[0] in "PS":  # punctuation and symbols ($, %, +, °)
            continue
        else:
            out.append(ch)
    return "".join(out)


def normalise_answer(text: str, stopwords: bool = True) -> str:
    """Fold (:func:`fold`: NFKC, case), strip punctuation, drop articles and common stop-words, collapse spaces.

    The normalisation of substring-match grading (Mallen et al. 2022, as the paper's
    Appendix N describes it, with Unicode forms made equal as in retrieval).
    """
    toks = strip_punctuation(fold(text)).split()
    if stopwords:
        toks = [t for t in toks if t not in STOPWORDS]
    return " ".join(toks)
