-- Sampled sessions that end unverified through no fault of their servers (docs/verification.md, "Checks that
-- cannot be judged"; docs/payouts.md, "When a row is payable").
--
-- A session counts as sampled (`far_mesh_sessions.spot_checked`) as soon as its worker recorded its spans, and
-- the claim held its rows until the verifier recorded verdicts. A check that never reaches a verdict for a
-- reason that is not the servers' (the worker dropped it over the byte budget or Redis refused it, it recorded
-- nothing, the model is not in the verifier's catalog, the entry does not parse, every span's recording by the
-- worker is unusable) held its honest providers' money forever. Such a session now gets one row here, written
-- by the verifier (from the worker's small "not verified" notice, or on its own), and is then payable exactly
-- as an unsampled session is: once older than the verifier's maximum lag, never a row a mismatch names.
--
-- A separate table rather than a verdict: nothing that reads `far_verifications` (node counters, reputation,
-- bans, slashes, forfeitures, the claim's "verified" and "convicted" clauses) can mistake it for a judgement.
-- A row here never overrides a mismatch: the claim's "not convicted" clause reads `far_verifications` alone.

CREATE TABLE far_unverified_sessions (
    request_id   TEXT PRIMARY KEY CHECK (length(request_id) BETWEEN 1 AND 64),
    model_id     TEXT,  -- NULL when the entry was too malformed to say
    -- over-budget / unpublished / nothing-recorded: the worker's notice; recording-unusable / unknown-model /
    -- malformed: the verifier's own finding
    cause        TEXT NOT NULL CHECK (cause IN ('over-budget', 'unpublished', 'nothing-recorded', 'recording-unusable',
                                                'unknown-model', 'malformed')),
    spans        INTEGER NOT NULL CHECK (spans >= 0),  -- the spans that went unjudged, as far as known
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
