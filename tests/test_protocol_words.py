"""Every protocol word has one home (docs/architecture.md, "One home for every word"): the rooms import the token
stream's field names and event kinds, the other streams' field names, the error codes and the Redis key names
from `protocol/`, and never spell them out themselves.

The source of every room but `protocol/` is read as Python (docstrings and comments may name the words; code may
not), including the Lua scripts it holds. A word found in code fails the test naming file:line, unless the
allow-list below says why that file uses the same letters for something else. `tests/` and `bench/` are not
checked: there a literal is an independent statement of the wire format, which is the point of a test.
"""

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.events import DATA_FIELD, EVENT_KINDS, KIND_FIELD
from protocol.usage import DEAD_LETTER_FIELDS, USAGE_FIELD, DeadLetterKind
from protocol.verification import UNVERIFIED_FIELD, VERIFICATION_FIELD
from workers.ending import RunEnd

REPO = Path(__file__).resolve().parents[1]
UNCHECKED = {"protocol", "tests"}

_KEY_CONSTANT = re.compile(r"^[A-Z_]+$")
_NOT_KEYS = ("_PREFIX", "_FIELD", "_GROUP", "_TTL_S")


def _words() -> dict[str, str]:
    """Each protocol word and what it is."""
    words = {KIND_FIELD: "token-stream field", DATA_FIELD: "token-stream field"}
    words |= {kind: "token-stream event kind" for kind in EVENT_KINDS}
    words |= {USAGE_FIELD: "usage-stream field", VERIFICATION_FIELD: "verification-stream field"}
    words |= {UNVERIFIED_FIELD: "verification-stream field"}
    words |= {field: "dead-letter field" for field in DEAD_LETTER_FIELDS}
    words |= {kind.value: "dead-letter kind" for kind in DeadLetterKind}
    words |= {keys.RELAY_WAKE_FIELD: "relay wake-stream field"}
    words |= {code.value: "stream error code" for code in StreamErrorCode}
    # how a run ended: its home is workers/ending.py (it never crosses a process boundary as protocol)
    words |= {end.value: "run end" for end in (RunEnd.SUPERSEDED, RunEnd.ALREADY_FINISHED, RunEnd.INVALID)}
    for name, value in vars(keys).items():
        if _KEY_CONSTANT.match(name) and isinstance(value, str) and not name.endswith(_NOT_KEYS):
            words[value] = "Redis key"
    return words


WORDS = _words()
KEY_PREFIXES = tuple(value for name, value in vars(keys).items() if name.endswith("_PREFIX"))
HOMES = {Path("workers/ending.py"): {end.value for end in RunEnd}}
"""Modules outside protocol/ that are a word's one home, with the words they define."""

ALLOWED: dict[tuple[str, str], str] = {
    # The same letters, another vocabulary: none of these is a Redis stream's field, kind or key.
    ("gateway/usage_api.py", "data"): "the JSON list of GET /v1/usage, OpenAI's shape",
    ("gateway/usage_api.py", "usage"): 'OpenAI\'s object name, "object": "usage"',
    ("gateway/openai_api.py", "data"): "the JSON list of GET /v1/models, OpenAI's shape",
    ("gateway/openai_api.py", "token"): "OpenAI's logprobs, and the token events' own JSON field, read raw: parsing "
    "each event through TokenEvent would cost the relay's CPU (the field is defined by protocol/events.py's model)",
    ("gateway/openai_api.py", "error"): "OpenAI's error body, and the error event's own JSON field, read raw",
    ("gateway/batch_api.py", "data"): "an OpenAI list's `data`, in the Batch API's list answers",
    ("gateway/batch_openapi.py", "data"): "an OpenAI list's `data` in the Batch API's part of the document",
    ("gateway/batch_input.py", "data"): "an OpenAI list's `data`, in a failed batch's `errors`",
    ("gateway/batch_runner.py", "error"): "a Batch API output line's `error` and OpenAI's error body, and the error "
    "event's own JSON field, read raw as gateway/openai_api.py reads it",
    ("gateway/openapi.py", "data"): "the SSE `data:` line in the OpenAPI document, not a Redis field",
    ("gateway/openapi.py", "error"): "the gateway's HTTP error body in the OpenAPI document",
    ("gateway/errors.py", "error"): 'the gateway\'s HTTP error body, {"error": {"code", ...}}',
    ("gateway/errors.py", "conflict"): "the gateway's HTTP 409 code",
    ("gateway/openai_errors.py", "error"): "OpenAI's HTTP error body",
    ("gateway/sse.py", "error"): "the deadline's error event, built by the gateway (it is on no Redis stream)",
    ("workers/ending.py", "error"): 'a failed run\'s usage-record finish_reason, "error"',
    (
        "workers/queue_worker.py",
        "data",
    ): "a pub/sub message's payload, as redis-py hands it over (the wake-up's job id)",
    ("payouts/payer.py", "data"): "an Ethereum transaction's data",
    ("payouts/payer.py", "done"): "a payout step's outcome",
    ("accounting/metrics.py", "reason"): "a Prometheus label name",
    ("chain/deploy.py", "data"): "an Ethereum transaction's data",
    ("chain/transfers.py", "data"): "an Ethereum transaction's or log's data",
    ("chain/deposits.py", "data"): "an Ethereum log's or transaction's data",
    ("chain/node.py", "error"): "a JSON-RPC error answer",
    ("chain/client.py", "error"): "a JSON-RPC error answer",
    ("portal/errors.py", "error"): "the portal's HTTP error body",
    ("portal/errors.py", "conflict"): "the portal's HTTP 409 code",
    ("portal/errors.py", "invalid"): "the portal's HTTP 422 code",
    ("portal/app.py", "error"): "the portal's HTTP error body and page variable",
    ("portal/openapi.py", "error"): "the portal's HTTP error body in its OpenAPI document",
    ("portal/openapi.py", "kind"): "a signed document's kind (register, transfer)",
    ("portal/documents.py", "kind"): "a signed document's kind (register, transfer)",
    ("portal/routes.py", "kind"): "a signed document's kind (register, transfer)",
    ("portal/routes.py", "reason"): "a form field",
    ("portal/balances.py", "kind"): "a journal entry's kind (deposit, charge; schema/0020)",
    ("portal/balances.py", "entry_id"): "a journal entry's id (far_journal_entries)",
    ("portal/balances.py", "token"): "the $FAR token's address in the deposit instructions",
    ("mesh/node_registration.py", "kind"): "a signed document's kind (register), asked of the portal",
    ("mesh/node_registration.py", "error"): "the portal's HTTP error body, read by the node launcher",
    ("devstack/chain_node.py", "token"): "the deployed $FAR token contract's address",
    ("payouts/batches.py", "token"): "the $FAR contract a payment batch pays in, a column of the ledger",
    ("devstack/harness/system.py", "data"): "the embedded PostgreSQL's data directory",
    ("devstack/harness/sse.py", "token"): "the harness reads SSE events as a client does, from their JSON",
    # The soak's buyers read the gateway's SSE and OpenAI JSON as a client does, an independent reading of the wire.
    ("devstack/harness/soak/buyers.py", "token"): "a token event's JSON field, read as a client reads it",
    ("devstack/harness/soak/buyers.py", "done"): "the final event's JSON field, read as a client reads it",
    ("devstack/harness/soak/buyers.py", "error"): "the error event's and HTTP error body's JSON field",
    ("devstack/harness/soak/buyers.py", "usage"): "OpenAI's usage object in a completion",
}


def _room_files() -> Iterator[Path]:
    for room in sorted(REPO.iterdir()):
        if room.name not in UNCHECKED and (room / "__init__.py").exists():
            yield from sorted(room.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            found.add(id(body[0].value))
        if isinstance(body, list):  # an attribute's docstring: a string right after an assignment
            for before, after in zip(body, body[1:], strict=False):
                if isinstance(before, ast.Assign | ast.AnnAssign) and isinstance(after, ast.Expr):
                    found.add(id(after.value))
    return found


def _what(text: str) -> str | None:
    if text in WORDS:
        return WORDS[text]
    if text.startswith(KEY_PREFIXES):
        return "Redis key prefix"
    return None


def _findings(path: Path) -> Iterator[tuple[int, str, str, bool]]:
    """(line, word, what it is, whether the allow-list may excuse it) for every protocol word in `path`'s code.

    A kind compared with an event's `.kind` or a word quoted in a Lua script is in the stream's sense whatever
    the file: no allowance excuses it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):  # `x.kind == "done"`: an event kind compared by its letters
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr == "kind" for o in operands):
                for operand in operands:
                    for constant in ast.walk(operand):
                        if isinstance(constant, ast.Constant) and constant.value in EVENT_KINDS:
                            yield node.lineno, constant.value, "token-stream event kind compared with .kind", False
        if not isinstance(node, ast.Constant) or id(node) in docstrings:
            continue
        value = node.value
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if not isinstance(text, str):
            continue
        what = _what(text)
        if what is not None:
            yield node.lineno, text, what, True
        if "redis.call(" in text:  # a Lua script: its quoted words are Redis commands and options only
            for quoted in re.findall(r"'([^']*)'|\"([^\"]*)\"", text):
                word = quoted[0] or quoted[1]
                if (what := _what(word)) is not None:
                    yield node.lineno, word, what + " quoted in a Lua script", False


def test_no_room_spells_out_a_protocol_word_that_protocol_defines() -> None:
    found = []
    for path in _room_files():
        relative = path.relative_to(REPO)
        for line, word, what, allowable in _findings(path):
            if word in HOMES.get(relative, set()):
                continue
            if allowable and (relative.as_posix(), word) in ALLOWED:
                continue
            found.append(f"{relative}:{line}: {word!r} is a {what}; import it from protocol/")
    assert not found, "\n".join(found)


def test_every_allowance_is_still_needed() -> None:
    """An allowance whose file no longer uses the word goes, so the list stays an honest account."""
    used = set()
    for path in _room_files():
        relative = path.relative_to(REPO).as_posix()
        used |= {(relative, word) for _, word, _, allowable in _findings(path) if allowable}
    assert sorted(set(ALLOWED) - used) == []


def test_arqs_keys_are_arqs_own() -> None:
    """The worker shortens arq's in-progress mark by name, and the gateway reads a job's keys to tell whether it
    was ever queued; a renamed prefix in arq would make the one mark nothing and the other start a job twice."""
    assert keys.ARQ_IN_PROGRESS_PREFIX == in_progress_key_prefix
    assert (keys.ARQ_JOB_PREFIX, keys.ARQ_RESULT_PREFIX) == (job_key_prefix, result_key_prefix)


def test_within_protocol_only_keys_py_builds_a_redis_key() -> None:
    """protocol/ defines the words, so the scan above skips it; its Redis keys still have one home, keys.py."""
    found = [
        f"{path.relative_to(REPO)}:{line}: {word!r} is a {what}; build it in protocol/keys.py"
        for path in sorted((REPO / "protocol").rglob("*.py"))
        if path.name != "keys.py"
        for line, word, what, _ in _findings(path)
        if what.startswith("Redis key")
    ]
    assert not found, "\n".join(found)


def test_the_scan_finds_each_kind_of_spelt_out_word(tmp_path: Path) -> None:
    """The scanner itself: a field name, a kind compared, a key built by hand and a Lua literal are all found."""
    source = tmp_path / "room.py"
    source.write_text(
        '"""Docstrings may say "kind" and gen: freely."""\n'
        'FIELD = b"kind"\n'
        'def ended(entry): return entry.kind in ("done", "error")\n'
        'def key(request_id): return f"gen:{request_id}"\n'
        "SCRIPT = \"redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])\"\n"
        'CODE = "no_route"\n'
    )
    found = {(line, word) for line, word, _, _ in _findings(source)}
    assert found == {(2, "kind"), (3, "done"), (3, "error"), (4, "gen:"), (5, "data"), (6, "no_route")}
