-- `orders:read`: the order queries of the read API (one order, a merchant's
-- orders, a customer's history). A role of its own because those answers
-- name customers, which the finance aggregates never do: a dashboard link
-- need not be able to list a customer's orders.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_roles_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_roles_check
    CHECK (roles <@ ARRAY['orders:write', 'orders:read', 'finance:read', 'ops:admin']);
