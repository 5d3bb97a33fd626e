"""langdetect 1.0.9's ``detect(text)`` with ``DetectorFactory.seed = 0``, bit for bit, faster.

The reference spends most of its IFEval time here, so this module re-runs langdetect's
algorithm with the same inputs and the same floating-point operations, only batched:

* Profiles are langdetect's own JSON files, read in langdetect's order (``os.listdir``),
  with each probability computed as langdetect computes it (``1.0 * count / n_words``),
  kept in a cache file once built (``_langdetect_model``).
* Text cleaning and n-gram extraction follow ``Detector.append``/``cleaning_text``/
  ``_extract_ngrams`` and call langdetect's own normalisation (``NGram.normalize``,
  ``NGram.normalize_vi``, the URL and e-mail patterns).
* The random walk: every ``detect()`` reseeds its ``random.Random`` with 0, so every text
  reads the *same* Mersenne Twister stream from its start. We draw that stream once and
  replay ``random.choice`` and ``random.gauss`` on it. A self-check against
  ``random.Random`` runs before first use; if this interpreter's ``random`` ever differs,
  we hand every text to langdetect itself instead of guessing.
* Per-language products are taken in draw order, sums in language order with the
  interpreter's own ``sum`` semantics, so probabilities are identical, not just close.

What is different is only how much work is done: all texts of a batch advance one
convergence block per numpy step, and a text stops after a trial once the remaining
trials can no longer change which language wins.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import threading
from typing import TYPE_CHECKING

from cpu_scorer.ifeval import _langdetect_model
from cpu_scorer.ifeval._langdetect_model import Model as _Model

if TYPE_CHECKING:
    import numpy as np

# langdetect's Detector constants.
_N_TRIAL = 7
_ALPHA_DEFAULT = 0.5
_ALPHA_WIDTH = 0.05
_ITERATION_LIMIT = 1000
_PROB_THRESHOLD = 0.1
_CONV_THRESHOLD = 0.99999
_BASE_FREQ = 10000
_MAX_TEXT_LENGTH = 10000
UNKNOWN = "unknown"

# Python >= 3.12 sums floats with Neumaier compensation; langdetect's normalisation uses the
# builtin sum, so the reference's rounding depends on the interpreter. A plain running sum
# (numpy's cumsum) equals the builtin only before 3.12.
_SUM_IS_PLAIN = sys.version_info < (3, 12)

_SPACES = re.compile(" {2,}")
_LATIN = re.compile("[A-z]")  # langdetect counts 'A' <= ch <= 'z', brackets included
# langdetect means to skip the Latin Extended Additional block here, but compares its
# block number with a block name, so every character from U+0300 up counts.
# (Written as "not below U+0300": the same set, but [\u0300-\U0010ffff] takes ~15 ms to
# compile, in every process.)
_NON_LATIN = re.compile("[^\x00-\u02ff]")
_WORD = re.compile("[^ ]+ ?")
_ALONE = 4  # texts left in a batch that finish one by one
_HORIZON = 1024  # stream outputs whose acceptance is computed up front, per text


class _Normalizer(dict):
    """``str.translate`` table that maps each character through langdetect's normalize."""

    def __missing__(self, codepoint: int) -> str:
        from langdetect.utils.ngram import NGram

        value = NGram.normalize(chr(codepoint))
        self[codepoint] = value
        return value


_lock = threading.Lock()
_normalizer = _Normalizer()
_word_rows: dict[str, tuple[int, ...]] = {}
_WORD_CACHE_LIMIT = 50_000  # words; a few MB


@functools.lru_cache(maxsize=1)
def _model() -> _Model:
    """langdetect's profiles as a sparse matrix, from the cache when it holds them."""
    from langdetect.detector_factory import PROFILES_DIRECTORY

    from shared.cache import cache_root

    return _langdetect_model.load(PROFILES_DIRECTORY, cache_root() / "langdetect")


def _word_ngrams(word: str, row_of: dict[str, int]) -> tuple[int, ...]:
    """Rows of the n-grams langdetect emits for one space-delimited word.

    ``word`` may end with the single space that follows it. langdetect's NGram buffer is
    reset at every space, so a word's n-grams do not depend on its neighbours: they are
    all 1- to 3-grams ending at each of its characters, the leading space included,
    except where the character and the one before it are both upper case
    (langdetect's "capital word" rule) and except the lone space 1-gram.
    """
    padded = " " + word
    out = []
    for j in range(1, len(padded)):
        ch = padded[j]
        if ch.isupper() and padded[j - 1].isupper():
            continue
        if ch != " ":
            row = row_of.get(ch)
            if row is not None:
                out.append(row)
        row = row_of.get(padded[j - 1 : j + 1])
        if row is not None:
            out.append(row)
        if j >= 2:
            row = row_of.get(padded[j - 2 : j + 1])
            if row is not None:
                out.append(row)
    return tuple(out)


def _ngram_rows(text: str, model: _Model) -> list[int]:
    """The rows of ``Detector._extract_ngrams`` for ``detect(text)``, in its order."""
    from langdetect.detector import Detector
    from langdetect.utils.ngram import NGram

    # The cheap tests skip passes that cannot change the text: a URL needs "://", an
    # e-mail address "@", and the Vietnamese and non-Latin rules characters >= U+0300.
    if "://" in text:
        text = Detector.URL_RE.sub(" ", text)
    if "@" in text:
        text = Detector.MAIL_RE.sub(" ", text)
    wide = bool(text) and max(text) >= "\u0300"
    if wide:
        text = NGram.normalize_vi(text)
    text = _SPACES.sub(" ", text[:_MAX_TEXT_LENGTH])
    if wide and len(_LATIN.findall(text)) * 2 < len(_NON_LATIN.findall(text)):
        text = _LATIN.sub("", text)
    text = text.translate(_normalizer)
    rows: list[int] = []
    for word in _WORD.findall(text):
        cached = _word_rows.get(word)
        if cached is None:
            cached = _word_ngrams(word, model.row_of)
            if len(_word_rows) >= _WORD_CACHE_LIMIT:
                _word_rows.clear()
            _word_rows[word] = cached
        rows.extend(cached)
    return rows


class _Stream:
    """The 32-bit outputs of ``random.Random(0)``, in order, grown on demand."""

    def __init__(self) -> None:
        import random

        self._source = random.Random(0)
        self.words = self._draw(1 << 16)

    def _draw(self, count: int) -> np.ndarray:
        import numpy as np

        # getrandbits(32 * n) concatenates n successive outputs, first output lowest.
        raw = self._source.getrandbits(32 * count).to_bytes(4 * count, "little")
        return np.frombuffer(raw, dtype="<u4").astype(np.int64)

    def ensure(self, length: int) -> None:
        import numpy as np

        while len(self.words) < length:
            self.words = np.concatenate([self.words, self._draw(len(self.words))])

    def random(self, pos: int) -> float:
        """``random.random()`` from the outputs at pos, pos + 1 (CPython's genrand_res53)."""
        a = int(self.words[pos]) >> 5
        b = int(self.words[pos + 1]) >> 6
        return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)

    def gauss_pair(self, pos: int) -> tuple[float, float]:
        """The value ``random.gauss()`` returns and the one it caches, from 4 outputs."""
        x2pi = self.random(pos) * math.tau
        g2rad = math.sqrt(-2.0 * math.log(1.0 - self.random(pos + 2)))
        return math.cos(x2pi) * g2rad, math.sin(x2pi) * g2rad

    def accepted(
        self, sizes: list[int], stop: int, start: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where ``random.choice`` of an n-sequence accepts a draw, for each n in sizes.

        CPython's ``randbelow(n)`` takes the top ``n.bit_length()`` bits of the next
        output and draws again while that is ``>= n``; each try uses one output. So the
        draws made from any stream position P are the accepted outputs at P and after,
        in order. Returns, over the outputs ``start`` to ``stop`` and concatenated over
        sizes: the accepted values, the stream position just after each, and where each
        size's run begins (``offsets``, one more than sizes).
        """
        import numpy as np

        self.ensure(stop)
        n = np.asarray(sizes, np.int64)[:, None]
        shift = 32 - np.array([int(x).bit_length() for x in sizes], np.int64)[:, None]
        candidates = self.words[start:stop] >> shift
        ok = candidates < n
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(ok.sum(axis=1), out=offsets[1:])
        ends = np.nonzero(ok)[1] + (start + 1)
        return candidates[ok], ends, offsets


@functools.lru_cache(maxsize=1)
def _stream() -> _Stream | None:
    """The replayed stream, or None when it does not match this interpreter's random."""
    import random

    import numpy as np

    stream = _Stream()
    real = random.Random(0)
    pos = 0
    sizes = [1, 2, 3, 1000, 2**15 + 3, 7, 9999]
    values, ends, offsets = stream.accepted(sizes, 4096)
    for i, n in enumerate(sizes):
        z, cached = stream.gauss_pair(pos)
        pos += 4
        if real.gauss(0.0, 1.0) != z or real.gauss(0.0, 1.0) != cached:
            return None
        own = slice(offsets[i], offsets[i + 1])
        first = int(np.searchsorted(ends[own], pos, side="right"))
        mine = values[own][first : first + 50].tolist()
        if mine != [real.choice(range(n)) for _ in range(50)]:
            return None
        pos = int(ends[own][first + 49])
    return stream


def _densify(model: _Model, rows: np.ndarray) -> np.ndarray:
    """Dense (len(rows), languages) probabilities for the given n-gram rows."""
    import numpy as np

    starts, ends = model.indptr[rows], model.indptr[rows + 1]
    counts = ends - starts
    out = np.zeros((len(rows), len(model.langs)))
    owner = np.repeat(np.arange(len(rows)), counts)
    flat = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    flat += np.repeat(starts, counts)
    out[owner, model.lang_index[flat]] = model.prob[flat]
    return out


def _sums(prob: np.ndarray) -> np.ndarray:
    """Sums over the last axis (languages), rounded as langdetect's builtin ``sum``."""
    import numpy as np

    if _SUM_IS_PLAIN:
        return np.cumsum(prob, axis=-1)[..., -1]
    rows = prob.reshape(-1, prob.shape[-1]).tolist()
    return np.array([sum(row) for row in rows]).reshape(prob.shape[:-1])


def _winner(langprob: np.ndarray, trials_done: int) -> int | None:
    """The index langdetect will return, if the remaining trials cannot change it.

    After ``trials_done`` trials a language can still gain at most 1/7 per trial (each
    trial adds a normalised distribution divided by 7). ``None`` means: run more trials.
    ``-1`` means no language passes langdetect's 0.1 threshold ("unknown").
    """
    import numpy as np

    if trials_done == _N_TRIAL:
        masked = np.where(langprob > _PROB_THRESHOLD, langprob, -1.0)
        best = int(np.argmax(masked))  # first of equals, as langdetect's stable sort
        return best if masked[best] > 0 else -1
    best = int(np.argmax(langprob))
    lead = float(langprob[best])
    langprob[best] = -1.0
    runner_up = float(langprob.max())
    langprob[best] = lead
    room = (_N_TRIAL - trials_done) / _N_TRIAL * (1 + 1e-9) + 1e-12
    if lead > _PROB_THRESHOLD and lead - runner_up > room:
        return best
    return None


def _detect_batch(ngram_rows: list[list[int]], model: _Model, stream: _Stream) -> list[str]:
    """langdetect's _detect_block for texts with at least one n-gram, run side by side.

    Each numpy step advances every unfinished text by one convergence block: langdetect
    checks for convergence after the first update of a trial and then after every fifth.
    State arrays hold only unfinished texts ("slots"), compacted whenever some finish.
    """
    import numpy as np

    n_langs = len(model.langs)
    # One probability row per distinct n-gram of the batch; texts share most of them.
    flat = np.concatenate([np.asarray(r, np.int64) for r in ngram_rows])
    seen = np.zeros(len(model.row_of), bool)
    seen[flat] = True
    probabilities = _densify(model, np.flatnonzero(seen))
    position_row = (np.cumsum(seen) - 1)[flat]  # n-gram number (all texts) -> that row
    sizes = [len(r) for r in ngram_rows]
    first_position = np.cumsum([0] + sizes[:-1])

    count = len(ngram_rows)
    text = np.arange(count)  # slot -> text
    gauss_next: list[float | None] = [None] * count  # per text, as random.gauss caches it
    # Every draw a text can make, precomputed: draws[s, i] is the probability row of the
    # i-th accepted stream output for its n-gram count, ends[s, i] the stream position
    # after it. A trial starting at position P draws from the first output at or after P.
    # Stored flat: slot s's draws are draws[offset[s] : offset[s] + drawn[s]].
    horizon = _HORIZON
    draws = ends = offset = drawn = np.empty(0, np.int64)

    def extend_horizon(length: int) -> None:
        nonlocal draws, ends, offset, drawn, horizon
        horizon = length
        values, ends, bounds = stream.accepted([sizes[t] for t in text.tolist()], horizon)
        offset, drawn = bounds[:-1], np.diff(bounds)
        draws = position_row[values + np.repeat(first_position[text], drawn)]

    extend_horizon(horizon)
    nxt = np.zeros(count, np.int64)  # index of each slot's next draw
    block = np.zeros(count, np.int64)
    trials = np.zeros(count, np.int64)
    weight = np.zeros(count)
    prob = np.full((count, n_langs), 1.0 / n_langs)
    langprob = np.zeros((count, n_langs))
    result = [UNKNOWN] * count

    def start_trial(s: int, pos: int) -> None:
        t = int(text[s])
        z = gauss_next[t]
        gauss_next[t] = None
        if z is None:
            z, gauss_next[t] = stream.gauss_pair(pos)
            pos += 4
        alpha = _ALPHA_DEFAULT + (0.0 + z * 1.0) * _ALPHA_WIDTH  # gauss(mu=0, sigma=1)
        weight[s] = alpha / _BASE_FREQ
        prob[s] = 1.0 / n_langs
        block[s] = 0
        while pos + 64 > horizon:  # so the search below sees the draws after pos
            extend_horizon(2 * horizon)
        nxt[s] = np.searchsorted(ends[offset[s] : offset[s] + drawn[s]], pos, side="right")

    for s in range(count):
        start_trial(s, 0)
    lanes = np.arange(5)
    while len(text) > _ALONE:
        if int((nxt - drawn).max()) + 5 > 0:  # some slot may run past its draws
            extend_horizon(2 * horizon)
        where = (offset + nxt)[:, None] + lanes
        factors = probabilities[draws[np.minimum(where, len(draws) - 1)]]
        factors += weight[:, None, None]  # weight + lang_prob_map[i], as langdetect adds
        first = block == 0
        nxt += 5
        if first.any():  # a trial's first check comes after one update, not five:
            factors[first, 1:] = 1.0  # times 1.0 changes nothing
            nxt[first] -= 4
        for j in range(5):
            prob *= factors[:, j]
        prob /= _sums(prob)[:, None]
        done = prob.max(axis=1) > _CONV_THRESHOLD
        if block.max() * 5 >= _ITERATION_LIMIT:
            done |= block * 5 >= _ITERATION_LIMIT
        block += 1
        if not done.any():
            continue
        stopped = np.flatnonzero(done)
        langprob[stopped] += prob[stopped] / _N_TRIAL
        trials[stopped] += 1
        finished = []
        for s in stopped.tolist():
            winner = _winner(langprob[s], int(trials[s]))
            if winner is None:  # the next trial starts where this one's draws ended
                start_trial(s, int(ends[offset[s] + nxt[s] - 1]))
            else:
                finished.append(s)
                if winner >= 0:
                    result[int(text[s])] = model.langs[winner]
        if finished:
            keep = np.ones(len(text), bool)
            keep[finished] = False
            # The flat draws stay; only the slots' views into them are dropped.
            text, offset, drawn, nxt = text[keep], offset[keep], drawn[keep], nxt[keep]
            block, trials, weight = block[keep], trials[keep], weight[keep]
            prob, langprob = prob[keep], langprob[keep]
    for s in range(len(text)):
        t = int(text[s])
        rows = position_row[first_position[t] : first_position[t] + sizes[t]]
        start = int(ends[offset[s] + nxt[s]] - 1) if nxt[s] < drawn[s] else horizon
        state = (prob[s].copy(), float(weight[s]), langprob[s].copy(), int(trials[s]))
        winner = _walk_alone(
            stream, probabilities, rows, gauss_next[t], int(block[s]), start, *state
        )
        if winner >= 0:
            result[t] = model.langs[winner]
    return result


def _walk_alone(
    stream: _Stream,
    probabilities: np.ndarray,
    rows: np.ndarray,
    gauss_next: float | None,
    block: int,
    start: int,
    prob: np.ndarray,
    weight: float,
    langprob: np.ndarray,
    trials: int,
) -> int:
    """The rest of one text's walk on its own, from its state in a batch; ``start`` is the
    stream position of its next draw. Once few texts are left in a batch, this costs less
    than a batch step (numpy's per-call overhead dominates there)."""
    n = len(rows)
    values: list[int] = []
    after: list[int] = []
    while True:
        need = 1 if block == 0 else 5
        if len(values) < need:
            more, more_ends, _ = stream.accepted([n], start + 256, start)
            values += rows[more].tolist()
            after += more_ends.tolist()
            start += 256
            continue
        for row in values[:need]:
            prob *= probabilities[row] + weight
        last = after[need - 1]
        del values[:need], after[:need]
        prob /= _sums(prob)
        if not (prob.max() > _CONV_THRESHOLD or block * 5 >= _ITERATION_LIMIT):
            block += 1
            continue
        langprob += prob / _N_TRIAL
        trials += 1
        winner = _winner(langprob, trials)
        if winner is not None:
            return winner
        # The next trial starts right after this one's last draw.
        start, values, after, block = last, [], [], 0
        z, gauss_next = gauss_next, None
        if z is None:
            z, gauss_next = stream.gauss_pair(start)
            start += 4
        weight = (_ALPHA_DEFAULT + (0.0 + z * 1.0) * _ALPHA_WIDTH) / _BASE_FREQ
        prob[:] = 1.0 / len(prob)


# Answers by text, so a batch can detect first and its checkers then look up. Bounded by
# the characters it keeps alive.
_memo: dict[str, str | None] = {}
_memo_chars = 0
_MEMO_CHARS = 8_000_000


def detect_many(texts: list[str]) -> list[str | None]:
    """langdetect's answer for each text: a language code, "unknown", or None where
    langdetect raises LangDetectException ("No features in text")."""
    global _memo_chars
    todo = [t for t in dict.fromkeys(texts) if t not in _memo]
    if todo:
        found = _detect_uncached(todo)
        with _lock:
            size = sum(map(len, todo))
            if _memo_chars + size > _MEMO_CHARS:
                _memo.clear()
                _memo_chars = 0
            _memo.update(zip(todo, found, strict=True))
            _memo_chars += size
    return [_memo[t] if t in _memo else _detect_uncached([t])[0] for t in texts]


def detect(text: str) -> str | None:
    """Like :func:`detect_many` for one text."""
    return detect_many([text])[0]


def _detect_uncached(texts: list[str]) -> list[str | None]:
    model = _model()
    stream = _stream()
    if stream is None:
        return [_detect_with_langdetect(t) for t in texts]
    with _lock:  # the word cache and the stream are shared
        rows = [_ngram_rows(t, model) for t in texts]
        with_features = [i for i, r in enumerate(rows) if r]
        found = (
            _detect_batch([rows[i] for i in with_features], model, stream) if with_features else []
        )
    out: list[str | None] = [None] * len(texts)
    for i, lang in zip(with_features, found, strict=True):
        out[i] = lang
    return out


@functools.lru_cache(maxsize=1)
def _langdetect_factory():  # type: ignore[no-untyped-def]
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def _detect_with_langdetect(text: str) -> str | None:
    """langdetect itself, on a private seeded factory (its global one stays untouched)."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _langdetect_factory().create()
    detector.append(text)
    try:
        return str(detector.detect())
    except LangDetectException:
        return None


def load() -> None:
    """Load the profiles and the random stream now (before forking workers, so they share)."""
    _model()
    _stream()


@functools.lru_cache(maxsize=1)
def languages() -> tuple[str, ...]:
    """The language codes langdetect can return (its profile names)."""
    from langdetect.detector_factory import PROFILES_DIRECTORY

    return tuple(sorted(n for n in os.listdir(PROFILES_DIRECTORY) if not n.startswith(".")))
