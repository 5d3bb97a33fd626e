"""tandem's batched langdetect against langdetect itself (seeded 0): the same answer for
every text, whatever the batch it is detected in."""

from __future__ import annotations

import random

import pytest

from cpu_scorer.ifeval import _langdetect

TEXTS = [
    "This is a perfectly ordinary English sentence about the weather.",
    "Ceci est une phrase française tout à fait ordinaire sur la météo.",
    "Das ist ein ganz gewöhnlicher deutscher Satz über das Wetter.",
    "Esta es una frase española completamente normal sobre el clima.",
    "Questa è una frase italiana del tutto normale sul tempo.",
    "Dit is een heel gewone Nederlandse zin over het weer.",
    "Это совершенно обычное русское предложение о погоде.",
    "这是一个关于天气的非常普通的中文句子。",
    "これは天気についてのごく普通の日本語の文です。",
    "이것은 날씨에 관한 아주 평범한 한국어 문장입니다.",
    "هذه جملة عربية عادية تماما عن الطقس.",
    "यह मौसम के बारे में एक बिल्कुल सामान्य हिंदी वाक्य है।",
    "Đây là một câu tiếng Việt hoàn toàn bình thường về thời tiết.",
    # Vietnamese written with combining marks: langdetect's normalize_vi composes them.
    "Đây la\u0300 mô\u0323t câu tiê\u0301ng Viê\u0323t",
    "ALL CAPITAL WORDS LEAVE ONLY THEIR FIRST LETTERS TO GO BY",
    "see https://example.com/a?b=c and mail me@example.org please, thanks",
    "mixed: the cat, le chat, die Katze, el gato, il gatto, de kat",
    "Hello мир 世界 مرحبا नमस्ते",
    "a",
    "ok ok ok ok",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 300,  # over 10 000 chars
    "x" * 12000,
]
NO_FEATURES = ["", "   ", "12345 67", "!!! ??? ...", "https://example.com"]


@pytest.fixture(scope="module")
def expected() -> list[str | None]:
    return [_langdetect._detect_with_langdetect(text) for text in TEXTS + NO_FEATURES]


def test_the_fast_path_is_in_use() -> None:
    # None would mean this interpreter's random differs and langdetect runs instead.
    assert _langdetect._stream() is not None


def test_same_answers_as_langdetect(expected: list[str | None]) -> None:
    _langdetect._memo.clear()
    assert _langdetect.detect_many(TEXTS + NO_FEATURES) == expected
    assert expected[-len(NO_FEATURES) :] == [None] * len(NO_FEATURES)


def test_answer_does_not_depend_on_the_batch(expected: list[str | None]) -> None:
    order = list(range(len(expected)))
    random.Random(7).shuffle(order)
    texts = TEXTS + NO_FEATURES
    _langdetect._memo.clear()
    shuffled = _langdetect.detect_many([texts[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(texts))] == expected
    _langdetect._memo.clear()
    assert [_langdetect.detect(text) for text in texts] == expected


def test_languages_are_langdetects_profiles() -> None:
    languages = _langdetect.languages()
    assert len(languages) == 55 and "en" in languages and "zh-cn" in languages
