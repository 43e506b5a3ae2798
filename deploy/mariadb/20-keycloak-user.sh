# Sourced by the MariaDB image's entrypoint on its first start (an empty data
# directory), after 10-feedback-user.sh.
#
# The bundled identity provider (compose.yaml's `keycloak`) keeps its realms,
# users and sessions in a database of its own, `keycloak`, as user `keycloak`
# with everything on that database (Keycloak creates and migrates its own
# schema at start) and nothing elsewhere: it cannot read the feedback, and the
# services cannot read it.
#
# A data directory made before this script existed does not run it: create
# the database and user once by hand (docs/identity.md, "Compose").
: "${KEYCLOAK_DB_PASSWORD:?KEYCLOAK_DB_PASSWORD must be set (see .env.example)}"
docker_process_sql --database=mysql <<SQL
CREATE DATABASE IF NOT EXISTS \`keycloak\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'keycloak'@'%' IDENTIFIED BY '${KEYCLOAK_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON \`keycloak\`.* TO 'keycloak'@'%';
SQL
