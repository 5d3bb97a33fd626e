"""The requests every backend is checked on, shared by the conformance tests and by
the script that measured the tolerances (tests/backends/measure.py)."""

from __future__ import annotations

from gpu_worker.backends.base import GenerationRequest, LoglikelihoodRequest, RollingRequest

QUESTIONS = [
    "Question: What is the capital of France?\nA. Paris\nB. London\nC. Rome\nD. Berlin\nAnswer:",
    "Question: Which planet is known as the red planet?\nA. Venus\nB. Mars\nC. Jupiter\n"
    "D. Saturn\nAnswer:",
    "Question: How many legs does a spider have?\nA. Six\nB. Eight\nC. Ten\nD. Four\nAnswer:",
]

LOGLIK = [LoglikelihoodRequest(q, f" {letter}") for q in QUESTIONS for letter in "ABCD"] + [
    # Multi-token continuations, a context ending in a space (lm-eval moves it to the
    # continuation), and non-ASCII text.
    LoglikelihoodRequest("The quick brown fox", " jumps over the lazy dog."),
    LoglikelihoodRequest("Paris is the capital of ", "France"),
    LoglikelihoodRequest("Der Bär läuft über die", " Straße und grüßt 🐻."),
]

ROLLING = [
    RollingRequest("The cat sat on the mat. It was a sunny day and the birds were singing."),
    RollingRequest("Ein schöner Tag: 東京は晴れです。 ✓"),
]

# Chat-rendered by the test (through the backend's own template) before generation.
GEN_PROMPTS = [
    "Write a haiku about the sea.",
    "List three primary colors.",
    "What is 2 + 2?",
    "Say hello in French, Spanish and Japanese (こんにちは).",
]


def generation_requests(backend, max_new_tokens: int, stop: tuple[str, ...] = ()):
    return [GenerationRequest(backend.render(p, True), max_new_tokens, stop) for p in GEN_PROMPTS]
