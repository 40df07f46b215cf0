-- A balance limit per asset, set in the catalogue (`wallet assets add --balance-max`,
-- `wallet assets set-balance-max`): the most a wallet may hold of it, held money included; a
-- credit that would take a wallet past it is refused (balance_limit_exceeded). NULL: the
-- ledger's own bound, 10^18, far below what a bigint sum of many balances could overflow at.
ALTER TABLE assets ADD COLUMN balance_max bigint
    CHECK (balance_max BETWEEN 1 AND 1000000000000000000);
