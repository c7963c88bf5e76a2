"""A served step's record: the compact JSON a token's script pushes beside it, read back exactly or refused."""

import json

import pytest

from protocol.served_steps import ServedStep, StepSpan

ROUTE = (StepSpan("12D3KooWFirst", 0, 2), StepSpan("12D3KooWSecond", 2, 4, 'node "β"'))


def test_a_step_is_written_as_compact_json_naming_positions_and_route() -> None:
    record = ServedStep(tokens=7, spans=ROUTE).encode()
    assert record == '{"n":7,"s":[["12D3KooWFirst",0,2,null],["12D3KooWSecond",2,4,"node \\"\\u03b2\\""]]}'
    assert json.loads(record)["s"][1][3] == 'node "β"'


def test_steps_of_one_route_read_back_as_written_whatever_their_positions() -> None:
    for tokens in (1, 12, 0):
        step = ServedStep(tokens=tokens, spans=ROUTE)
        assert ServedStep.decode(step.encode()) == step
    assert ServedStep.decode(ServedStep(tokens=1, spans=ROUTE[:1]).encode()).spans == ROUTE[:1]


@pytest.mark.parametrize(
    "raw", ['{"n":1}', '{"n":-1,"s":[]}', '{"n":1,"s":[["p",2,2,null]]}', "not json", '{"n":true,"s":[]}']
)
def test_anything_else_is_refused_rather_than_guessed_at(raw: str) -> None:
    with pytest.raises(ValueError, match="not a served step"):
        ServedStep.decode(raw)
