-- Why each mismatch is one (issue #25 item 2; docs/verification.md, "Recordings that cannot be verified").
--
-- A span's reply that cannot be verified (undecodable, in a dtype no honest server sends, the wrong shape,
-- positions missing, or a server that announced no dtype the verifier knows) used to be dropped with its whole
-- spot check, so any cheat could switch verification off by replying oddly on purpose. It is now a verdict
-- against the server, of the mismatch class (slashed, forfeited and counted towards a ban like any mismatch),
-- whose `cause` says why; its error is unbounded ('Infinity'). A recomputed mismatch has cause 'over-tolerance'.
-- An ok verdict has no cause.

ALTER TABLE far_verifications
    ADD COLUMN cause TEXT CHECK (cause IN ('over-tolerance', 'undecodable', 'unknown-dtype', 'wrong-shape',
                                           'missing-positions'));
UPDATE far_verifications SET cause = 'over-tolerance' WHERE verdict = 'mismatch';
ALTER TABLE far_verifications
    ADD CONSTRAINT far_verifications_mismatch_has_cause CHECK ((verdict = 'mismatch') = (cause IS NOT NULL));
