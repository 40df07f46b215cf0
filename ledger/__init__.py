"""The ledger's rules, pure: deciding a command against an account, planning a batch's rows.
No I/O; below storage, above the wire contracts."""
