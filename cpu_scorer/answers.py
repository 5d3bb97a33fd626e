"""Answers of generative tasks: extraction, normalization, comparison.

GSM8K follows lm-eval's ``gsm8k`` filters and ``exact_match`` metric; MATH follows its
``minerva_math`` task (Lewkowycz et al. 2022, appendix D, as lm-eval 0.4.13 implements
it). Both are checked against lm-eval's own outputs on fixture cases
(``tests/fixtures/lmeval/metrics.json``, made by ``bench/lmeval_fixtures.py``).
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

INVALID = "[invalid]"  # lm-eval's regex filter fallback

# ---- GSM8K -----------------------------------------------------------------------------
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# exact_match's regexes_to_ignore, applied in this order to both sides, then lower-case.
_IGNORED = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def _pick(pattern: re.Pattern[str], text: str, which: int) -> str:
    """The ``which``-th match of ``pattern`` (its first non-empty group when it has
    several), stripped; INVALID when nothing matches."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    match = found[which]
    if isinstance(match, tuple):
        groups = [group for group in match if group]
        match = groups[0] if groups else INVALID
    return match.strip()


def gsm8k_strict(response: str) -> str:
    """The number after "#### " (the first such)."""
    return _pick(_STRICT, response, 0)


def gsm8k_flexible(response: str) -> str:
    """The last number-like span of the response."""
    return _pick(_FLEXIBLE, response, -1)


def gsm8k_normalize(text: str) -> str:
    for pattern in _IGNORED:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_match(extracted: str, reference: str) -> bool:
    """exact_match with gsm8k's settings (ignore case; drop commas, dollar signs,
    everything up to "#### ", a final period)."""
    return gsm8k_normalize(extracted) == gsm8k_normalize(reference)


# ---- MATH (Minerva) --------------------------------------------------------------------
MATH_INVALID = "[invalidanswer]"
_FINAL = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")

# Appendix D's substitutions and removed expressions, in their order.
_SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
_REMOVED = (
    "square ways integers dollars mph inches ft hours km units \\ldots sue points feet "
    "minutes digits cents degrees cm gm pounds meters meals edges students "
    "childrentickets multiples"
).split() + [
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
]
_COMMAND = re.compile(r"(\\[a-zA-Z]+)")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+")


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x`` up to a dollar
    sign) of ``text``, braces balanced; None when there is none."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return None


def unbox(boxed: str) -> str:
    """``\\boxed{x}`` or ``\\boxed x`` -> ``x``."""
    if boxed.startswith("\\boxed "):
        return boxed[len("\\boxed ") :]
    if not (boxed.startswith("\\boxed{") and boxed.endswith("}")):
        raise ValueError(f"not a boxed expression: {boxed!r}")
    return boxed[len("\\boxed{") : -1]


def math_target(solution: str) -> str:
    """The reference answer: the solution's last boxed expression, normalized."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError("the reference solution has no \\boxed answer")
    return normalize_math(unbox(boxed))


def math_extract(response: str) -> str:
    """The answer after "Final Answer: The final answer is" (Minerva's format)."""
    match = _FINAL.search(response + "I hope it is correct.")
    return match.group(1).strip() if match else MATH_INVALID


def normalize_math(answer: str) -> str:
    """Minerva's normalization of a final answer (see the module docstring)."""
    answer = answer.split("=")[-1]
    words = [expr for expr in _REMOVED if expr.isalpha()]
    # Unit words first, while whitespace still delimits them (never inside a command).
    for word in words:
        answer = re.sub(rf"(?<!\\)\b{word}\b", "", answer)
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _REMOVED:
        if expr.isalpha():
            # Glued units, outside LaTeX command names ("\left" keeps its "ft").
            parts = _COMMAND.split(answer)
            parts[::2] = [part.replace(expr, "") for part in parts[::2]]
            answer = "".join(parts)
        else:
            answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", answer)
    answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """SIGALRM-based, so only in the main thread (the daemon and ``tandem score``
    score there); elsewhere no limit applies."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("sympy took too long")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def math_equivalent(candidate: str, target: str) -> bool:
    """Equal strings, or expressions sympy parses whose difference simplifies to zero
    (within 5 s); anything sympy cannot parse or compare counts as different."""
    if candidate and candidate == target:
        return True
    try:
        import sympy
        from sympy.parsing.latex import parse_latex
    except ImportError:
        return False
    try:
        with _time_limit(5):
            difference = parse_latex(candidate) - parse_latex(target)
            return bool(sympy.simplify(difference) == 0)
    except Exception:  # noqa: BLE001 - a parse or simplify failure means "not equal"
        return False
