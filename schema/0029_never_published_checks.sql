-- A sampled session whose check never reached the verifier ends unverified too (docs/verification.md, "Checks that
-- cannot be judged"). Its worker wrote the usage record that marks it sampled, then died (or was stopped) before it
-- published the check or its notice, or Redis refused both: neither a verdict nor a row of
-- far_unverified_sessions would ever come, and its honest providers' money was held forever. The verifier now
-- records such a session itself ('never-published', verifier/lost_checks.py) once it finished well before the
-- oldest check still waiting in the stream, so its check cannot be among those still to come.

ALTER TABLE far_unverified_sessions DROP CONSTRAINT far_unverified_sessions_cause_check;
ALTER TABLE far_unverified_sessions ADD CONSTRAINT far_unverified_sessions_cause_check
    CHECK (cause IN ('over-budget', 'unpublished', 'nothing-recorded', 'recording-unusable', 'unknown-model',
                     'malformed', 'never-published'));

-- What the verifier's sweep reads: sampled sessions by when they finished.
CREATE INDEX far_mesh_sessions_sampled_idx ON far_mesh_sessions (finished_at) WHERE spot_checked;
