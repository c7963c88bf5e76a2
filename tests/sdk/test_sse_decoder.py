"""farlabs.sse: events come out whole and in order however the network splits the bytes."""

from farlabs.sse import SSEDecoder

GATEWAY_BYTES = b'id: 1-0\ndata: {"token": "a"}\n\n: keep-alive\n\nid: 1-1\ndata: {"token": "b"}\n\n'


def test_the_gateways_events_come_out_with_their_ids_and_comments_are_skipped() -> None:
    assert SSEDecoder().feed(GATEWAY_BYTES) == [("1-0", '{"token": "a"}'), ("1-1", '{"token": "b"}')]


def test_an_event_split_at_every_byte_comes_out_once_it_is_complete() -> None:
    decoder = SSEDecoder()
    events = [event for i in range(len(GATEWAY_BYTES)) for event in decoder.feed(GATEWAY_BYTES[i : i + 1])]
    assert events == [("1-0", '{"token": "a"}'), ("1-1", '{"token": "b"}')]


def test_crlf_and_cr_line_ends_even_split_between_chunks_are_line_ends() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\r") == []
    assert decoder.feed(b"\ndata: x\r\n\r") == [("7", "x")]  # a lone CR already ends the blank line
    assert decoder.feed(b"\ndata:y\r\rdata: z\n\n") == [("7", "y"), ("7", "z")]  # that LF belonged to the CR


def test_multi_line_data_is_joined_and_the_last_id_carries_over_to_events_without_one() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 3\ndata: one\ndata: two\n\nevent: ignored\ndata: three\n\n") == [
        ("3", "one\ntwo"),
        ("3", "three"),
    ]
    assert decoder.last_event_id == "3"
