"""CRM world template, episode registry, change-log trigger and schema cloning.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ENTITY_DDL = """
CREATE SCHEMA IF NOT EXISTS world;
CREATE SCHEMA IF NOT EXISTS crm_meta;

CREATE TABLE world.client (
    client_id    text PRIMARY KEY,
    name         text NOT NULL CHECK (btrim(name) <> ''),
    industry     text,
    email        text,
    phone        text,
    address      text,
    status       text NOT NULL DEFAULT 'Prospect'
                 CHECK (status IN ('Active', 'Prospect', 'Inactive')),
    created_date timestamptz,
    owner        text
);
CREATE UNIQUE INDEX client_email_lower_key ON world.client (lower(email));
CREATE INDEX client_name_lower_idx ON world.client (lower(name));

CREATE TABLE world.company (
    company_id text PRIMARY KEY,
    name       text NOT NULL CHECK (btrim(name) <> ''),
    type       text CHECK (type IN ('Partner', 'Vendor', 'Competitor')),
    industry   text,
    address    text,
    contacts   text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE world.contact (
    contact_id text PRIMARY KEY,
    first_name text NOT NULL CHECK (btrim(first_name) <> ''),
    last_name  text NOT NULL CHECK (btrim(last_name) <> ''),
    title      text,
    email      text,
    phone      text,
    client_id  text NOT NULL REFERENCES world.client (client_id),
    notes      text
);
CREATE INDEX contact_client_idx ON world.contact (client_id);

CREATE TABLE world.opportunity (
    opportunity_id text PRIMARY KEY,
    name           text NOT NULL CHECK (btrim(name) <> ''),
    client_id      text NOT NULL REFERENCES world.client (client_id),
    stage          text NOT NULL CHECK (stage IN ('Prospecting', 'Qualification', 'Proposal',
                                                  'Negotiation', 'Closed-Won', 'Closed-Lost')),
    amount         numeric(14, 2) NOT NULL CHECK (amount > 0 AND amount <= 10000000),
    close_date     date,
    owner          text,
    probability    integer CHECK (probability BETWEEN 0 AND 100),
    notes          text
);
CREATE INDEX opportunity_client_idx ON world.opportunity (client_id);
CREATE INDEX opportunity_stage_idx ON world.opportunity (stage);

CREATE TABLE world.quote (
    quote_id       text PRIMARY KEY,
    opportunity_id text NOT NULL REFERENCES world.opportunity (opportunity_id) ON DELETE CASCADE,
    version        text NOT NULL,
    amount         numeric(14, 2) NOT NULL CHECK (amount > 0 AND amount <= 10000000),
    status         text NOT NULL DEFAULT 'Draft'
                   CHECK (status IN ('Draft', 'Sent', 'Approved', 'Rejected', 'Canceled')),
    valid_until    date,
    created_date   timestamptz,
    quote_prefix   text,
    UNIQUE (opportunity_id, version)
);

CREATE TABLE world.contract (
    contract_id    text PRIMARY KEY,
    client_id      text NOT NULL REFERENCES world.client (client_id),
    opportunity_id text REFERENCES world.opportunity (opportunity_id),
    start_date     date,
    end_date       date,
    value          numeric(14, 2) CHECK (value > 0),
    status         text CHECK (status IN ('Active', 'Pending', 'Expired')),
    document_url   text,
    CHECK (end_date IS NULL OR start_date IS NULL OR end_date > start_date)
);
CREATE INDEX contract_client_idx ON world.contract (client_id);
CREATE INDEX contract_opportunity_idx ON world.contract (opportunity_id);

CREATE TABLE world.document (
    document_id text PRIMARY KEY,
    entity_type text NOT NULL CHECK (entity_type IN ('Opportunity', 'Contract', 'Quote', 'Client')),
    entity_id   text NOT NULL,
    file_name   text NOT NULL,
    uploaded_by text,
    uploaded_at timestamptz,
    file_url    text
);
CREATE INDEX document_entity_idx ON world.document (entity_type, entity_id);

CREATE TABLE world.note (
    note_id     text PRIMARY KEY,
    entity_type text NOT NULL
                CHECK (entity_type IN ('Opportunity', 'Client', 'Contact', 'Quote', 'Contract')),
    entity_id   text NOT NULL,
    content     text NOT NULL CHECK (btrim(content) <> ''),
    created_by  text,
    created_at  timestamptz
);
CREATE INDEX note_entity_idx ON world.note (entity_type, entity_id);
"""

META_DDL = """
CREATE TABLE crm_meta.world_info (
    id          integer PRIMARY KEY CHECK (id = 1),
    version     text NOT NULL,
    seed        integer NOT NULL,
    row_counts  jsonb NOT NULL,
    loaded_at   timestamptz NOT NULL
);

CREATE TABLE crm_meta.episode (
    episode_id    text PRIMARY KEY,
    schema_name   text NOT NULL UNIQUE,
    token_hash    text NOT NULL UNIQUE,
    case_id       text,
    today         date NOT NULL,
    actor_name    text NOT NULL,
    actor_role    text NOT NULL,
    seed          jsonb NOT NULL,
    world_version text NOT NULL,
    call_seq      bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz NOT NULL,
    ttl_seconds   integer NOT NULL
);
CREATE INDEX episode_last_used_idx ON crm_meta.episode (last_used_at);

CREATE TABLE crm_meta.episode_snapshot (
    episode_id  text NOT NULL REFERENCES crm_meta.episode (episode_id) ON DELETE CASCADE,
    name        text NOT NULL,
    schema_name text NOT NULL UNIQUE,
    call_seq    bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (episode_id, name)
);

CREATE TABLE crm_meta.episode_pool (
    schema_name   text PRIMARY KEY,
    world_version text NOT NULL,
    created_at    timestamptz NOT NULL
);
"""

# The change-log trigger: one row per changed entity row, tagged with the tool call that
# made it (set per transaction with set_config('crm.tool_call_id', ..., true)).
LOG_CHANGE_FN = r"""
CREATE FUNCTION crm_meta.log_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    b jsonb;
    a jsonb;
    k text;
BEGIN
    IF coalesce(current_setting('crm.suppress_log', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        a := to_jsonb(NEW);
        k := a ->> TG_ARGV[0];
    ELSIF TG_OP = 'DELETE' THEN
        b := to_jsonb(OLD);
        k := b ->> TG_ARGV[0];
    ELSE
        b := to_jsonb(OLD);
        a := to_jsonb(NEW);
        IF a = b THEN
            RETURN NULL;
        END IF;
        k := a ->> TG_ARGV[0];
    END IF;
    EXECUTE format(
        'INSERT INTO %I.change_log (tool_call_id, tool, table_name, op, row_key, before, after) '
        'VALUES ($1, $2, $3, $4, $5, $6, $7)', TG_TABLE_SCHEMA)
    USING nullif(current_setting('crm.tool_call_id', true), ''),
          nullif(current_setting('crm.tool', true), ''),
          TG_TABLE_NAME, TG_OP, k, b, a;
    RETURN NULL;
END
$fn$
"""

# Copies the entity tables (and the change log, when the source has one) of schema `src`
# into a new schema `dst`: columns, defaults, checks, indexes, rows and foreign keys.
# With with_triggers, dst gets a change log (if it has none) and the change-log triggers.
CLONE_SCHEMA_FN = r"""
CREATE FUNCTION crm_meta.clone_schema(src text, dst text, with_triggers boolean)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    t text;
    fk record;
    entity_tables text[] := ARRAY['client', 'company', 'contact', 'opportunity', 'quote',
                                  'contract', 'document', 'note'];
    pks text[] := ARRAY['client_id', 'company_id', 'contact_id', 'opportunity_id', 'quote_id',
                        'contract_id', 'document_id', 'note_id'];
    has_log boolean;
BEGIN
    EXECUTE format('CREATE SCHEMA %I', dst);
    FOREACH t IN ARRAY entity_tables LOOP
        EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING ALL)', dst, t, src, t);
        EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I', dst, t, src, t);
    END LOOP;
    FOR fk IN
        SELECT c.conname, cl.relname AS tbl, rcl.relname AS reftbl,
               pg_get_constraintdef(c.oid) AS def
        FROM pg_constraint c
        JOIN pg_class cl ON cl.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = cl.relnamespace
        JOIN pg_class rcl ON rcl.oid = c.confrelid
        WHERE n.nspname = src AND c.contype = 'f' AND cl.relname = ANY(entity_tables)
        ORDER BY c.conname
    LOOP
        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', dst, fk.tbl, fk.conname,
            regexp_replace(fk.def, 'REFERENCES\s+\S+\(',
                           format('REFERENCES %I.%I(', dst, fk.reftbl)));
    END LOOP;
    SELECT EXISTS (SELECT 1 FROM information_schema.tables
                   WHERE table_schema = src AND table_name = 'change_log') INTO has_log;
    IF has_log THEN
        EXECUTE format('CREATE TABLE %I.change_log (LIKE %I.change_log INCLUDING ALL)', dst, src);
        EXECUTE format('INSERT INTO %I.change_log SELECT * FROM %I.change_log', dst, src);
        EXECUTE format(
            'SELECT setval(pg_get_serial_sequence(%L, ''seq''), '
            'coalesce((SELECT max(seq) FROM %I.change_log), 0) + 1, false)',
            quote_ident(dst) || '.change_log', dst);
    ELSIF with_triggers THEN
        EXECUTE format(
            'CREATE TABLE %I.change_log ('
            '  seq bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,'
            '  tool_call_id text, tool text, table_name text NOT NULL, op text NOT NULL,'
            '  row_key text NOT NULL, before jsonb, after jsonb)', dst);
    END IF;
    IF with_triggers THEN
        FOR i IN 1 .. array_length(entity_tables, 1) LOOP
            EXECUTE format(
                'CREATE TRIGGER log_change AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                'FOR EACH ROW EXECUTE FUNCTION crm_meta.log_change(%L)',
                dst, entity_tables[i], pks[i]);
        END LOOP;
    END IF;
END
$fn$
"""


def _statements(ddl: str) -> list[str]:
    """Splits plain DDL (no dollar quoting) into single statements for the driver."""
    return [part.strip() for part in ddl.split(";") if part.strip()]


def upgrade() -> None:
    for statement in [*_statements(ENTITY_DDL), *_statements(META_DDL)]:
        op.execute(statement)
    op.execute(LOG_CHANGE_FN)
    op.execute(CLONE_SCHEMA_FN)


def downgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE s text;
        BEGIN
            FOR s IN SELECT schema_name FROM crm_meta.episode
                     UNION SELECT schema_name FROM crm_meta.episode_snapshot
                     UNION SELECT schema_name FROM crm_meta.episode_pool LOOP
                EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s);
            END LOOP;
        END $$
        """
    )
    op.execute("DROP SCHEMA crm_meta CASCADE")
    op.execute("DROP SCHEMA world CASCADE")
