"""The read side: projection worker, checkpoints, replay and the query API (issue: read side).

Nothing here yet: balances are read from the ledger itself until the projector exists.
"""
