"""Perplexity on held-out text files, via the backend's ``loglikelihood_rolling``.

Data: every ``*.txt`` file (UTF-8) in ``data_dir/perplexity/`` -- or in ``data_dir``
itself when that subfolder does not exist -- is one sample, in file-name order; the
sample id is the file name. The text is scored verbatim (no stripping: a trailing
newline is a token the model must predict too). Without a data_dir the test pages of
WikiText-2 (``EleutherAI/wikitext_document_level``, raw) are used as they are stored;
lm-eval's ``wikitext`` task additionally detokenizes them, so its numbers differ.

Each sample's ``doc`` carries what the scorer and the worker need:

* ``words`` -- ``len(re.split(r"\\s+", text))``, lm-eval's word count (leading or trailing
  whitespace adds an empty "word", as it does there);
* ``bytes`` -- UTF-8 length of the text;
* ``window`` / ``stride`` -- the rolling-window settings (tokens): ``None`` means the
  model's context length, and a stride equal to the window, i.e. lm-eval's disjoint
  windows. A smaller stride re-reads ``window - stride`` tokens of context for every
  window after the first (more context per token, lower perplexity, more compute).
"""

from __future__ import annotations

import re
from pathlib import Path

from shared.errors import TandemError
from shared.tasks._base import Metric, Sample, TaskDef, load_from_hub

DEFAULT_WINDOW: int | None = None
DEFAULT_STRIDE: int | None = None

_WHITESPACE = re.compile(r"\s+")


def count_words(text: str) -> int:
    """lm-eval's word count: pieces of a split on whitespace runs."""
    return len(_WHITESPACE.split(text))


def text_sample(sample_id: str, text: str, **doc: object) -> Sample:
    """A rolling sample for ``text`` with the counts the perplexity metrics need."""
    return Sample(
        sample_id=sample_id,
        prompt=text,
        doc={
            **doc,
            "words": count_words(text),
            "bytes": len(text.encode("utf-8")),
            "window": DEFAULT_WINDOW,
            "stride": DEFAULT_STRIDE,
        },
    )


def _load(data_dir: Path | None) -> list[Sample]:
    if data_dir is None:
        rows = load_from_hub(
            "perplexity", "EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test"
        )
        return [text_sample(str(i), row["page"]) for i, row in enumerate(rows) if row["page"]]
    if data_dir.is_file():  # a held-out text named on its own (spec task_data)
        folder, paths = data_dir.parent, [data_dir]
    else:
        folder = data_dir / "perplexity" if (data_dir / "perplexity").is_dir() else data_dir
        paths = sorted(p for p in folder.glob("*.txt") if p.is_file())
    if not paths:
        raise TandemError(
            f"task perplexity: no *.txt files in {folder}; put one held-out text per .txt "
            "file in <data_dir>/perplexity/"
        )
    samples = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TandemError(f"task perplexity: cannot read {path} as UTF-8: {error}") from error
        if not text:
            raise TandemError(f"task perplexity: {path} is empty; nothing to score")
        samples.append(text_sample(path.name, text, file=path.name))
    return samples


PERPLEXITY = TaskDef(
    name="perplexity",
    kind="rolling",
    description="Perplexity of held-out .txt files: word/token perplexity, bits per byte",
    loader=_load,
    scorer="rolling",
    metrics=tuple(
        Metric(name, "perplexity", higher_is_better=False)
        for name in ("word_perplexity", "token_perplexity", "byte_perplexity", "bits_per_byte")
    ),
    headline="word_perplexity",
)
