"""Tracing: nothing at all while off, and spans that join one trace across a traceparent string when on."""

from collections.abc import Iterator
from pathlib import Path

import pytest

import telemetry
from telemetry.json_lines import read_spans


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Path]:
    """Tracing to JSON lines under a directory of this test's own; off again afterwards."""
    directory = tmp_path / "spans"
    telemetry.configure(f"file:{directory}", "far-mesh-test")
    try:
        yield directory
    finally:
        telemetry.reset()


def test_tracing_is_off_unless_configured_and_then_costs_one_shared_no_op() -> None:
    assert not telemetry.enabled()
    first, second = telemetry.span("a"), telemetry.span("b", attributes={"far.tokens": 1})
    assert first is second  # nothing is built per span
    with first as span:
        assert not span.is_recording()
    assert telemetry.traceparent_of() is None
    assert not telemetry.start_span("c").is_recording()


def test_configuring_off_leaves_tracing_off() -> None:
    telemetry.configure("off", "far-mesh-test")
    assert not telemetry.enabled()


@pytest.mark.parametrize("value", ["otlp:", "file:", "jaeger", "on"])
def test_an_unknown_target_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="FAR_MESH_TRACING"):
        telemetry.parse_target(value)


def test_a_file_target_is_a_directory_each_process_writes_its_own_file_in(tmp_path: Path) -> None:
    assert telemetry.parse_target(f"file:{tmp_path}") == telemetry.TracingTarget("file", tmp_path)
    assert telemetry.parse_target("otlp") == telemetry.TracingTarget("otlp")


def test_a_span_started_from_another_process_traceparent_joins_its_trace(traced: Path) -> None:
    root = telemetry.start_span("gateway.request", root=True)
    traceparent = telemetry.traceparent_of(root)
    assert traceparent is not None and traceparent.startswith("00-")
    remote = telemetry.start_span("worker.run", parent=traceparent)  # as the worker sees the job's field
    with telemetry.span("worker.prefill", parent=remote):
        with telemetry.span("worker.step"):  # the current span is the parent by default
            pass
    telemetry.end_span(remote, attributes={"far.tokens": 3})
    telemetry.end_span(root, error="Refused")
    telemetry.flush()
    spans = {s["name"]: s for s in read_spans(traced)}
    assert {s["trace_id"] for s in spans.values()} == {spans["gateway.request"]["trace_id"]}
    assert spans["gateway.request"]["parent_id"] is None
    assert spans["worker.run"]["parent_id"] == spans["gateway.request"]["span_id"]
    assert spans["worker.prefill"]["parent_id"] == spans["worker.run"]["span_id"]
    assert spans["worker.step"]["parent_id"] == spans["worker.prefill"]["span_id"]
    assert spans["worker.run"]["attributes"] == {"far.tokens": 3}
    assert spans["gateway.request"]["status"] == "ERROR"
    assert spans["worker.run"]["service"] == "far-mesh-test"


def test_a_span_may_start_and_end_at_given_times(traced: Path) -> None:
    waited = telemetry.start_span("queue.wait", root=True, start_ns=1_000_000_000)
    telemetry.end_span(waited, end_ns=3_000_000_000)
    telemetry.flush()
    [span] = read_spans(traced)
    assert (span["start_ns"], span["end_ns"]) == (1_000_000_000, 3_000_000_000)


def test_a_malformed_traceparent_starts_a_new_trace_instead_of_failing(traced: Path) -> None:
    telemetry.end_span(telemetry.start_span("worker.run", parent="not-a-traceparent"))
    telemetry.flush()
    [span] = read_spans(traced)
    assert span["parent_id"] is None


def test_the_settings_pattern_is_the_one_the_tracer_reads() -> None:
    from protocol.settings import CommonSettings

    assert CommonSettings.model_fields["far_mesh_tracing"].metadata[0].pattern == telemetry.TRACING_PATTERN
