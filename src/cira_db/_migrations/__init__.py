"""The parts of `cira_db.migrations`, one concern per module.

* ``_files``: finding and reading migration files, checksums, header flags,
  and the refusal of transaction control in transactional files;
* ``_split``: splitting SQL into statements (as psql does);
* ``_history``: ``schema_migrations`` and how it must agree with the files;
* ``_story``: the origin story's schema, as ``baseline`` expects it;
* ``_queries``: running the named queries of ``sql/migrator.sql``;
* ``_runner``: `Migrator` itself (plan, lock, check history, run each step).

Import from `cira_db.migrations`; these modules are private.
"""
