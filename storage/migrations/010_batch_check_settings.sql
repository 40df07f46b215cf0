-- The ledger's batch check gets back the settings 001 gave it. CREATE OR REPLACE FUNCTION
-- resets what ALTER FUNCTION had set, so migrations 008 and 009, which restated the function,
-- had dropped them: the check planned its per-entry lookups with the session's settings, free
-- to pick a sequential scan of processed_commands or ledger_entries from statistics taken
-- while the tables were small (see 001 for the quadratic batches that caused). A migration
-- that replaces the function again must restate these settings after it (a test checks).
ALTER FUNCTION ledger_entries_check_batch()
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off;
