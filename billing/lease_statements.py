"""The SQL of budget slices (billing/leases.py): a request's charges moved onto the budgets
with the process's waiting ones, a charge written to wait, and a slice's return. Each locks
the budgets' rows first, in id order, then the leases' and charges' rows.
"""

CHARGE = """
INSERT INTO billing_budgetcharge
    (lease_id, budget_id, freed_micro, freed_images, cost_micro, cost_images)
SELECT * FROM unnest(
    %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]
)
"""
NO_MOVES = "SELECT " + ", ".join(["0::bigint"] * 6) + ", false WHERE false"


# One statement for the moves and this process's waiting charges. It locks their budgets'
# rows first, in id order (`locked`, which the lease update waits for), so that no two such
# statements, nor a statement and a per-request hold (budgets.py, also in id order), take
# them in opposite orders; then the leases' rows; each row only while the statement runs.
FLUSH_PG = """
WITH moves (lease_id, budget_id, freed_micro, freed_images, cost_micro, cost_images, retire) AS (
    {moves}
),
pending AS (SELECT budget_id FROM billing_budgetcharge WHERE lease_id = ANY(%s::bigint[])),
locked AS (
    SELECT id FROM billing_budget
    WHERE id IN (SELECT budget_id FROM moves UNION SELECT budget_id FROM pending)
    ORDER BY id FOR UPDATE
),
waiting AS (
    DELETE FROM billing_budgetcharge
    WHERE lease_id = ANY(%s::bigint[]) AND (SELECT count(*) FROM locked) >= 0
    RETURNING lease_id, budget_id, freed_micro, freed_images, cost_micro, cost_images, false
),
summed AS (
    SELECT lease_id, budget_id, sum(freed_micro)::bigint AS freed_micro,
        sum(freed_images)::bigint AS freed_images, sum(cost_micro)::bigint AS cost_micro,
        sum(cost_images)::bigint AS cost_images, bool_or(retire) AS retire
    FROM (SELECT * FROM moves UNION ALL SELECT * FROM waiting) AS m
    GROUP BY lease_id, budget_id
),
lease AS (
    UPDATE billing_budgetlease AS l SET
        amount_micro = l.amount_micro - m.freed_micro,
        images = l.images - m.freed_images,
        retired = l.retired OR m.retire
    FROM summed AS m
    WHERE l.id = m.lease_id AND (SELECT count(*) FROM locked) >= 0
    RETURNING l.id, l.budget_id, l.period_start, m.freed_micro, m.freed_images,
        m.cost_micro, m.cost_images
),
charged AS (
    SELECT budget_id, period_start, sum(freed_micro) AS freed_micro,
        sum(freed_images) AS freed_images, sum(cost_micro) AS cost_micro,
        sum(cost_images) AS cost_images
    FROM lease GROUP BY budget_id, period_start
),
changed AS (
    UPDATE billing_budget AS b SET
        used_micro = b.used_micro + c.cost_micro,
        reserved_micro = b.reserved_micro - c.freed_micro,
        used_images = b.used_images + c.cost_images,
        reserved_images = b.reserved_images - c.freed_images
    FROM charged AS c WHERE b.id = c.budget_id AND b.period_start = c.period_start
    RETURNING b.id, b.public_id, b.workspace_id, b.used_micro, b.used_images, b.limit_micro,
        b.limit_images, b.alert_thresholds, b.period_start
)
SELECT lease.id, lease.period_start, c.id, c.public_id, c.workspace_id, c.used_micro,
    c.used_images, c.limit_micro, c.limit_images, c.alert_thresholds
FROM lease LEFT JOIN changed AS c
    ON c.id = lease.budget_id AND c.period_start = lease.period_start
"""

MOVE_LEASE = """
UPDATE billing_budgetlease SET
    amount_micro = amount_micro - %(freed_micro)s,
    images = images - %(freed_images)s,
    retired = retired OR %(retire)s
WHERE id = %(lease)s
RETURNING budget_id, period_start
"""
MOVE_BUDGET = """
UPDATE billing_budget SET
    used_micro = used_micro + %(cost_micro)s,
    reserved_micro = reserved_micro - %(freed_micro)s,
    used_images = used_images + %(cost_images)s,
    reserved_images = reserved_images - %(freed_images)s
WHERE id = %(budget)s AND period_start = %(start)s
RETURNING id, public_id, workspace_id, used_micro, used_images, limit_micro, limit_images,
    alert_thresholds
"""


# Like FLUSH_PG, the budgets' rows first, in id order, then the leases': the slice's amount
# goes back to the budget's room, and the charges still waiting on it onto its spend.
RETURN_PG = """
WITH target AS (SELECT id, budget_id FROM billing_budgetlease WHERE {which}),
locked AS (
    SELECT id FROM billing_budget WHERE id IN (SELECT budget_id FROM target)
    ORDER BY id FOR UPDATE
),
waiting AS (
    DELETE FROM billing_budgetcharge
    WHERE lease_id IN (SELECT id FROM target) AND (SELECT count(*) FROM locked) >= 0
    RETURNING lease_id, cost_micro, cost_images
),
spent AS (
    SELECT lease_id, sum(cost_micro) AS micro, sum(cost_images) AS images
    FROM waiting GROUP BY lease_id
),
gone AS (
    DELETE FROM billing_budgetlease
    WHERE id IN (SELECT id FROM target) AND (SELECT count(*) FROM locked) >= 0
    RETURNING id, budget_id, period_start, amount_micro, images
),
returned AS (
    SELECT budget_id, period_start, sum(gone.amount_micro) AS micro,
        sum(gone.images) AS images, coalesce(sum(spent.micro), 0) AS spent_micro,
        coalesce(sum(spent.images), 0) AS spent_images, count(*)
    FROM gone LEFT JOIN spent ON spent.lease_id = gone.id
    GROUP BY budget_id, period_start
),
changed AS (
    UPDATE billing_budget AS b SET
        reserved_micro = b.reserved_micro - returned.micro,
        reserved_images = b.reserved_images - returned.images,
        used_micro = b.used_micro + returned.spent_micro,
        used_images = b.used_images + returned.spent_images
    FROM returned WHERE b.id = returned.budget_id AND b.period_start = returned.period_start
)
SELECT coalesce(sum(count), 0) FROM returned
"""
