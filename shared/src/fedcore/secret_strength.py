"""Whether a configured secret looks generated or hand-written.

A gateway that boots with ``changeme`` as its sealing key seals every private key with a public
value, so services refuse short, low-variety and placeholder-looking secrets at start
(:func:`fedcore.settings.refuse_placeholder_secret` turns the verdict into a settings error).

The rules must never refuse a genuinely random secret, or a freshly generated one fails a
deployment (it did: a bare "test" prefix starts one ``token_urlsafe`` value in 32**4 ≈ 1e6, and
a CI run drew one). Each rule is therefore chosen so that together they refuse a uniformly
random secret with odds below one in a million — for ``token_urlsafe``, hex and base64 output
alike. :func:`false_positive_odds` computes that bound from the rules themselves (a test holds
it), so a rule added here without its cost shows up as a failing test, not as a flaky boot.
"""

from __future__ import annotations

import math
import re
import string
from typing import Final, Literal

Verdict = Literal["short", "placeholder", "low_variety"]

MIN_SECRET_LENGTH: Final = 32
# Fewer distinct characters than this is not random ("aaaa…", "abab…"): a random 32-character
# secret has fewer with odds ~1e-22 (base64) or ~4e-8 (hex).
MIN_DISTINCT_CHARACTERS: Final = 8

TOKEN_URLSAFE_ALPHABET: Final = string.ascii_letters + string.digits + "-_"
HEX_ALPHABET: Final = string.digits + "abcdef"
BASE64_ALPHABET: Final = string.ascii_letters + string.digits + "+/"

# Refused anywhere in the secret: long enough that a random secret never contains one by chance.
PHRASES: Final = (
    "changeme",
    "change-me",
    "change_me",
    "placeholder",
    "replaceme",
    "replace-me",
    "replace_me",
    "replace-with",
    "replace_with",
    "yoursecret",
    "your-secret",
    "your_secret",
    "your secret",
    "password",
    "0123456789",
    "abcdefgh",
)
# Short words people start placeholders with. Refused as a plain prefix they would also start
# random secrets now and then (above), so each is refused only where a random secret rarely has
# it: followed by anything but a letter ("test-…", "todo: …", "test1234…", "TODO(ops)…"), or by
# one of a few words ("TestSecret…", "testkey…"), or spelt out longer ("testing…", "xxxxxx…").
SHORT_WORDS: Final = ("xxxx", "todo", "test", "fixme")
_SECOND_WORDS: Final = ("secret", "token", "key", "pass", "value", "only", "local", "dev")
# Refused as plain prefixes: five letters or more (32**-5 or rarer each), and template markers
# ("${VAR}", "<your key>", "{{ secret }}") no generated secret's alphabet contains.
PREFIXES: Final = (
    "example",
    "secret",
    "dummy",
    "testing",
    "xxxxxx",
    "${",
    "<",
    "{{",
    *(word + second for word in SHORT_WORDS for second in _SECOND_WORDS),
)
_SHORT_WORD_THEN_NON_LETTER: Final = re.compile("(?:" + "|".join(SHORT_WORDS) + ")[^a-z]")
# Ignored around a secret before the rules look at it: whitespace, the quotes an env file may
# keep, zero-width characters and a byte-order mark ('"test-secret-…"' is still a placeholder).
STRIPPED_AROUND: Final = string.whitespace + "\"'\u200b\u200c\u200d\u2060\ufeff"


def placeholder_verdict(secret: str) -> Verdict | None:
    """Why ``secret`` is refused (``"short"``, ``"placeholder"``, ``"low_variety"``), or
    ``None`` when it may be used. The verdict never contains the secret."""
    if len(secret) < MIN_SECRET_LENGTH:
        return "short"
    # Surrounding space or quotes do not hide a placeholder (" test-secret…").
    lowered = secret.strip(STRIPPED_AROUND).lower()
    if (
        any(phrase in lowered for phrase in PHRASES)
        or lowered.startswith(PREFIXES)
        or _SHORT_WORD_THEN_NON_LETTER.match(lowered)
    ):
        return "placeholder"
    if len(set(secret)) < MIN_DISTINCT_CHARACTERS:
        return "low_variety"
    return None


def false_positive_odds(alphabet: str = TOKEN_URLSAFE_ALPHABET, length: int = 128) -> float:
    """An upper bound on the odds that :func:`placeholder_verdict` refuses a secret of
    ``MIN_SECRET_LENGTH`` to ``length`` characters drawn uniformly from ``alphabet``: each phrase
    at each position, each prefix and each short word followed by a non-letter (after any run
    of stripped characters the alphabet has), and too few distinct characters. A union bound:
    overlaps are counted twice."""
    size = len(alphabet)
    if size < MIN_DISTINCT_CHARACTERS:
        return 1.0  # every secret over it has too little variety

    def odds(text: str) -> float:
        # The rules compare lowercased text: a letter matches each of its cases the alphabet has.
        result = 1.0
        for char in text:
            result *= sum(1 for c in alphabet if c.lower() == char) / size
        return result

    non_letter = sum(1 for c in alphabet if c.lower() not in string.ascii_lowercase) / size
    # A prefix may start after any number of stripped characters: sum of stripped**k.
    stripped = sum(1 for c in alphabet if c in STRIPPED_AROUND) / size
    at_start = 1 / (1 - stripped)
    few = MIN_DISTINCT_CHARACTERS - 1
    # All characters drawn from some `few` symbols of the alphabet.
    low_variety = math.comb(size, few) * (few / size) ** MIN_SECRET_LENGTH
    return (
        sum(odds(phrase) * length for phrase in PHRASES)
        + at_start * sum(odds(prefix) for prefix in PREFIXES)
        + at_start * sum(odds(word) * non_letter for word in SHORT_WORDS)
        + low_variety
    )
