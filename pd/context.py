"""Texts against a model's context: refuse what cannot fit before any generation.

A document or question longer than the model's context either fails deep inside
generation (a 5 MB document tried to allocate terabytes) or silently yields garbage. A job
checks its texts here first, with the generator it will use, and the error names the text
and the numbers. :func:`passage_chars` sizes the passages ``pd inject`` splits long
documents into.
"""

from __future__ import annotations

from collections.abc import Mapping

from pd.errors import DataError

# Tokens kept free beside a text for the prompt's template and instructions.
PROMPT_MARGIN = 128


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` without special tokens (a byte-level vocabulary never needs more than its UTF-8 bytes)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_fits(texts: Mapping[str, str], tokenizer, context: int | None, reserve: int, what: str,
               model: str = "the model") -> None:
    """Refuse the first text whose tokens leave less than ``reserve`` of the ``context``.

    Args:
        texts: name (a document id, a question's id) -> text.
        tokenizer: the model's tokenizer (None: nothing is checked, e.g. a remote server).
        context: the model's context in tokens (None: unknown, nothing is checked).
        reserve: tokens the rest of the prompt and the reply need (:data:`PROMPT_MARGIN` is added).
        what: what a text is, for the message (``document``, ``question``).
        model: the model's name, for the message.

    Raises:
        DataError: one line naming the text, its tokens and characters, and the room there is.
    """
    if tokenizer is None or not context:
        return
    room = context - reserve - PROMPT_MARGIN
    for name, text in texts.items():
        if len(text.encode("utf-8")) + 2 <= room:  # cannot need more tokens than bytes (plus BOS/prefix)
            continue
        n = token_count(tokenizer, text)
        if n > room:
            raise DataError(f"{what} {name}: {n} tokens ({len(text)} characters), but {model} reads at most "
                            f"{context} tokens and needs {reserve + PROMPT_MARGIN} of them for the rest of the "
                            f"prompt and the reply, leaving {max(room, 0)}; shorten or split it")


def check_generator_fits(generator, texts: Mapping[str, str], reserve: int, what: str) -> None:
    """:func:`check_fits` with a generator's tokenizer and context (nothing checked for a remote server).

    Args:
        generator: a :class:`pd.generate.Generator` (its ``tokenizer`` and model config, when it has them).
        texts: name -> text.
        reserve: tokens for the rest of the prompt and the reply.
        what: what a text is (``document``, ``question``).

    Raises:
        DataError: as :func:`check_fits`.
    """
    from pd.serve.reply import context_length

    spec = getattr(generator, "spec", None)
    check_fits(texts, getattr(generator, "tokenizer", None), context_length(generator), reserve, what,
               spec.name if spec is not None else "the model")


def passage_chars(tokenizer, texts: Mapping[str, str], budget_tokens: int) -> int:
    """Characters per passage such that a passage of any of ``texts`` fits ``budget_tokens``.

    The densest text (fewest characters per token) sets the rate; a tenth is kept spare for
    passages denser than their text's average.

    Args:
        tokenizer: the model's tokenizer.
        texts: name -> text (the documents).
        budget_tokens: tokens a passage may have.

    Returns:
        The passage length in characters (at least 200).
    """
    rate = min((len(t) / max(1, token_count(tokenizer, t)) for t in texts.values() if t), default=4.0)
    return max(200, int(budget_tokens * rate * 0.9))


def check_dataset_fits(generator, dataset, reserve: int) -> None:
    """Every document and every test question of ``dataset`` against the generator's context.

    Args:
        generator: the job's generator.
        dataset: a :class:`pd.data.Dataset`.
        reserve: tokens for the rest of the prompt and the reply (the job's ``max_new_tokens``).

    Raises:
        DataError: as :func:`check_fits`, naming the document's or the question's id.
    """
    check_generator_fits(generator, {d.id: d.text for d in dataset.documents.values()}, reserve, "document")
    check_generator_fits(generator, {it.id: it.closed_book_question for it in dataset.items}, reserve, "question")
