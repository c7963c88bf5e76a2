from types import SimpleNamespace
from typing import cast

from transformers import AutoTokenizer

from mesh.client import MeshClient
from protocol.catalog import ModelSpec
from workers.served_model import (
    RETIRED_CLIENT_GRACE_S,
    RETIRED_CLIENT_MAX_S,
    SUSPECT_CLIENT_REPLACED_EVERY_S,
    ServedModel,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_client(*, dht_alive: bool = True) -> MeshClient:
    config = SimpleNamespace(eos_token_id=2, max_position_embeddings=64, num_hidden_layers=4)
    return cast(
        MeshClient,
        SimpleNamespace(
            spec=SimpleNamespace(model_id="far-tiny"),
            model=SimpleNamespace(config=config),
            dht=SimpleNamespace(is_alive=lambda: dht_alive),
            close=lambda: None,
        ),
    )


def test_a_client_whose_dht_died_is_replaced_at_once() -> None:
    served = ServedModel(fake_client(dht_alive=False), max_jobs=1)

    assert served.needs_new_client() == "its DHT process died"


def test_a_client_that_found_no_route_while_every_block_was_announced_is_replaced_at_most_once_a_minute() -> None:
    clock = Clock()
    served = ServedModel(fake_client(), max_jobs=1, clock=clock)
    served.note_no_route(every_block_announced=True)
    assert served.needs_new_client() is None  # it only just connected

    clock.now += SUSPECT_CLIENT_REPLACED_EVERY_S
    assert served.needs_new_client() == "it found no route while the DHT announced every block"

    served.replace_client(fake_client())
    served.note_no_route(every_block_announced=True)
    assert served.needs_new_client() is None


def test_missing_blocks_or_a_later_step_that_went_through_clear_the_client() -> None:
    clock = Clock()
    served = ServedModel(fake_client(), max_jobs=1, clock=clock)
    clock.now += SUSPECT_CLIENT_REPLACED_EVERY_S

    served.note_no_route(every_block_announced=False)  # the swarm's fault, not this client's
    assert served.needs_new_client() is None

    served.note_no_route(every_block_announced=True)
    served.note_routed()
    assert served.needs_new_client() is None


def test_decoding_asks_a_fast_tokenizer_directly_and_gives_what_transformers_decode_gives(
    tiny_models: tuple[ModelSpec, ...],
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[0].weights_source)
    client = fake_client()
    client.tokenizer = tokenizer
    served = ServedModel(client, max_jobs=1)
    windows = [list(range(start, start + 6)) for start in range(0, len(tokenizer), 3)] + [[], [0, 1, 2], [2, 2]]
    for ids in windows:
        expected = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert served.decode(ids) == expected


def closable_client() -> tuple[MeshClient, list[str]]:
    closed: list[str] = []
    client = fake_client()
    client.close = lambda: closed.append("closed")  # type: ignore[method-assign]
    return client, closed


def test_a_replaced_client_is_closed_only_once_its_sessions_are_gone_and_its_grace_has_passed() -> None:
    clock = Clock()
    old, closed = closable_client()
    served = ServedModel(old, max_jobs=1, clock=clock)
    session = served.open_session(max_length=8, routes=SimpleNamespace())  # a request still stepping through it
    served.replace_client(fake_client())
    clock.now += RETIRED_CLIENT_GRACE_S
    assert served.close_retired() == 0 and closed == []  # closing it would hang that session's next call

    del session  # the request ended (or failed over to the new client)
    assert served.close_retired() == 1 and closed == ["closed"]
    assert served.retired_clients == 0


def test_a_replaced_client_is_kept_its_grace_even_unused_and_closed_after_the_longest_wait_whatever_uses_it() -> None:
    clock = Clock()
    old, closed = closable_client()
    served = ServedModel(old, max_jobs=1, clock=clock)
    session = served.open_session(max_length=8, routes=SimpleNamespace())
    served.replace_client(fake_client())
    assert served.close_retired() == 0  # a call started on it just before the swap may still be running

    clock.now += RETIRED_CLIENT_MAX_S
    assert served.close_retired() == 1 and closed == ["closed"] and session is not None
