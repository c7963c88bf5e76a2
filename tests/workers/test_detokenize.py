from collections.abc import Sequence

from workers.detokenize import IncrementalDecoder

BYTES = {0: b"h", 1: b"\xc3", 2: b"\xa9", 3: b" ", 4: b"\xf0\x9f", 5: b"\x9a", 6: b"\x80", 7: b"!"}


def byte_decode(ids: Sequence[int]) -> str:
    return b"".join(BYTES[i] for i in ids).decode("utf-8", errors="replace")


def test_a_character_split_across_tokens_is_held_back_until_it_completes() -> None:
    decoder = IncrementalDecoder(byte_decode)
    pieces = [decoder.push(i) for i in [0, 1, 2, 3, 4, 5, 6, 7]]
    assert pieces == ["h", "", "é", " ", "", "", "🚀", "!"]


def test_no_emitted_piece_contains_a_replacement_character_and_all_join_to_the_full_text() -> None:
    ids = [4, 5, 6, 1, 2] * 4 + [0]
    decoder = IncrementalDecoder(byte_decode)
    pieces = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == byte_decode(ids)
