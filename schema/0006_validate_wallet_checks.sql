-- Proves 0005's wallet checks for the rows stored before them. In its own transaction, so VALIDATE takes only
-- a SHARE UPDATE EXCLUSIVE lock: the consumer keeps writing while the tables are scanned.
ALTER TABLE far_nodes VALIDATE CONSTRAINT far_nodes_wallet_check;
ALTER TABLE far_mesh_sessions VALIDATE CONSTRAINT far_mesh_sessions_user_wallet_check;
ALTER TABLE far_session_contributions VALIDATE CONSTRAINT far_session_contributions_wallet_check;
ALTER TABLE far_api_keys VALIDATE CONSTRAINT far_api_keys_wallet_check;
