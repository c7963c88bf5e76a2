"""What the real-text tests share: the README's code blocks, read from README.md itself (the README stays the one
copy of its snippets), and a check that a reply is English rather than the noise a randomly initialised model
prints."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

COMMON_ENGLISH = frozenset(
    """a about after all also an and any are as at be because been but by can could do does for from had has have he
    her his how i if in into is it its just like make many may more most much no not now of on one only or other our
    out over people so some such than that the their them then there these they this those through to too two up us
    use used very was way we well were what when where which while who will with would you your""".split()
)
"""Some hundred of the most frequent English words: about half of the words of any English sentence, and none of
what a model with random weights prints (byte soup, or word pieces of a 49k vocabulary drawn at random)."""


def readme_snippet(language: str, containing: str) -> str:
    """The one ```language code block of README.md that contains `containing`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (snippet,) = [block for block in blocks if containing in block]
    return str(snippet)


def assert_english(text: str, *, mentions: str, at_least_words: int) -> None:
    """`text` is English prose: printable ASCII, at least `at_least_words` words of letters, a third or more of them
    among the most common English words, and about `mentions` (a word a sensible answer cannot do without).
    Wording may change with the model or the prompt; noise fails every clause."""
    assert text.isascii() and all(c.isprintable() or c in "\n\t" for c in text), repr(text)
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= at_least_words, repr(text)
    common = [w for w in words if w.lower() in COMMON_ENGLISH]
    assert len(common) * 3 >= len(words), f"{len(common)} common English words of {len(words)}: {text!r}"
    assert mentions.lower() in text.lower(), repr(text)
