from workers.stop_sequences import StopMatcher


def _stream(matcher: StopMatcher, pieces: list[str]) -> list[str]:
    return [matcher.feed(piece, final=i == len(pieces) - 1) for i, piece in enumerate(pieces)]


def test_text_that_cannot_start_a_stop_is_released_at_once() -> None:
    assert _stream(StopMatcher(["END"]), ["Hello", " world", "!"]) == ["Hello", " world", "!"]


def test_a_stop_spanning_several_tokens_never_reaches_the_client() -> None:
    matcher = StopMatcher(["\nUser:"])
    out = [matcher.feed(piece) for piece in ["Sure", ".\n", "Us", "er", ": next", " turn"]]
    assert out == ["Sure", ".", "", "", "", ""]
    assert matcher.stopped and "".join(out) == "Sure."


def test_only_text_that_could_still_become_a_stop_is_held_back() -> None:
    matcher = StopMatcher(["abc"])
    assert matcher.feed("xxab") == "xx" and matcher.held == "ab"
    assert matcher.feed("d") == "abd" and matcher.held == ""  # "abd" can no longer become "abc"
    assert not matcher.stopped


def test_the_earliest_of_several_stops_wins_and_text_after_it_in_the_same_token_is_dropped() -> None:
    matcher = StopMatcher(["world", "lo"])
    assert matcher.feed("hello world") == "hel" and matcher.stopped
    assert matcher.feed("more") == "" and matcher.flush() == ""


def test_the_last_token_releases_what_was_held() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == "" and matcher.feed("O", final=True) == "STO"
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("xS") == "x" and matcher.flush() == "S"


def test_a_stop_at_the_very_start_releases_nothing() -> None:
    matcher = StopMatcher(["A"])
    assert matcher.feed("A lot") == "" and matcher.stopped


def test_no_stops_pass_text_through_unchanged() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("anything") == "anything" and matcher.held == "" and not matcher.stopped
