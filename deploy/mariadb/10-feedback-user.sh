# Sourced by the MariaDB image's entrypoint on its first start (an empty data
# directory), after the root password and the `feedback` database exist.
#
# The services connect as `feedback`, never as root, with only what they
# need on their own database: they read and write the rows, and at start
# they run the schema's idempotent migrations (CREATE TABLE IF NOT EXISTS,
# dropping obsolete indexes and columns with ALTER TABLE), so CREATE, ALTER
# and INDEX too. No global privilege, no other database, no GRANT option.
: "${FEEDBACK_DB_PASSWORD:?FEEDBACK_DB_PASSWORD must be set (see .env.example)}"
docker_process_sql --database=mysql <<SQL
CREATE USER IF NOT EXISTS 'feedback'@'%' IDENTIFIED BY '${FEEDBACK_DB_PASSWORD}';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX ON \`feedback\`.* TO 'feedback'@'%';
SQL
