#!/bin/bash
# Entrypoint of the MariaDB stand-in. It follows the interface of the official
# mariadb image's entrypoint, so that compose.yaml and init scripts written
# for that image work unchanged:
#   - a command starting with an option runs mariadbd with those options;
#   - on an empty datadir: mariadb-install-db, a temporary server on the
#     socket only, root's password from MARIADB_ROOT_PASSWORD (root@localhost
#     and root@MARIADB_ROOT_HOST, '%' by default), MARIADB_DATABASE,
#     MARIADB_USER/MARIADB_PASSWORD, then /docker-entrypoint-initdb.d
#     (*.sql piped to the client, *.sh executed when executable, else
#     sourced, with docker_process_sql defined), then the real server;
#   - MYSQL_* spellings and *_FILE variants of those variables are accepted;
#   - started as root, it re-executes itself as mysql.
# Not emulated: replication, restoring a backup from initdb.d, *_HASH
# passwords, compressed *.sql files, mariadb-upgrade of an older datadir.
set -eo pipefail
shopt -s nullglob

mysql_log() {
	local type=$1
	shift
	printf '%s [%s] [Entrypoint]: %s\n' "$(date --rfc-3339=seconds)" "$type" "$*"
}
mysql_note() { mysql_log Note "$@"; }
mysql_warn() { mysql_log Warn "$@" >&2; }
mysql_error() {
	mysql_log ERROR "$@" >&2
	exit 1
}

# file_env VAR [DEFAULT]: VAR from itself, else from the file named by VAR_FILE.
file_env() {
	local var=$1 file_var="${1}_FILE" value=${2:-}
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		mysql_error "Both $var and $file_var are set (but are exclusive)"
	fi
	if [ -n "${!var:-}" ]; then
		value=${!var}
	elif [ -n "${!file_var:-}" ]; then
		value=$(<"${!file_var}")
	fi
	export "$var"="$value"
	unset "$file_var"
}

# MARIADB_X and MYSQL_X: either spelling sets both (MARIADB_ wins).
_mariadb_file_env() {
	local mysql_var=$1 maria_var="MARIADB_${1#MYSQL_}"
	shift
	file_env "$mysql_var" "$@"
	file_env "$maria_var" "${!mysql_var}"
	if [ -n "${!maria_var:-}" ]; then
		export "$mysql_var"="${!maria_var}"
	fi
}

_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = '_is_sourced' ] && [ "${FUNCNAME[1]}" = 'source' ]
}

# The value of a server setting as mariadbd with these arguments would use it.
mysql_get_config() {
	local conf=$1
	shift
	"$@" --verbose --help 2>/dev/null |
		awk -v conf="$conf" '$1 == conf && /^[^ \t]/ { sub(/^[^ \t]+[ \t]+/, ""); print; exit }'
}

mysql_check_config() {
	local errors
	if ! errors=$("$@" --verbose --help 2>&1 >/dev/null); then
		mysql_error $'mariadbd failed while attempting to check config\n\tcommand was: '"$* --verbose --help"$'\n\t'"$errors"
	fi
}

docker_setup_env() {
	declare -g DATADIR SOCKET PORT DATABASE_ALREADY_EXISTS
	DATADIR=$(mysql_get_config datadir "$@")
	SOCKET=$(mysql_get_config socket "$@")
	PORT=$(mysql_get_config port "$@")

	_mariadb_file_env MYSQL_ROOT_HOST '%'
	_mariadb_file_env MYSQL_DATABASE
	_mariadb_file_env MYSQL_USER
	_mariadb_file_env MYSQL_PASSWORD
	_mariadb_file_env MYSQL_ROOT_PASSWORD

	: "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:=${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
	export MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MYSQL_ALLOW_EMPTY_PASSWORD=$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD
	: "${MARIADB_RANDOM_ROOT_PASSWORD:=${MYSQL_RANDOM_ROOT_PASSWORD:-}}"
	export MARIADB_RANDOM_ROOT_PASSWORD MYSQL_RANDOM_ROOT_PASSWORD=$MARIADB_RANDOM_ROOT_PASSWORD
	: "${MARIADB_INITDB_SKIP_TZINFO:=${MYSQL_INITDB_SKIP_TZINFO:-}}"
	export MARIADB_INITDB_SKIP_TZINFO MYSQL_INITDB_SKIP_TZINFO=$MARIADB_INITDB_SKIP_TZINFO

	DATABASE_ALREADY_EXISTS=
	if [ -d "$DATADIR/mysql" ]; then
		DATABASE_ALREADY_EXISTS=true
	fi
}

docker_verify_minimum_env() {
	if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] &&
		[ -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
		mysql_error $'Database is uninitialized and password option is not specified\n\tYou need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD'
	fi
}

docker_create_db_directories() {
	mkdir -p "$DATADIR"
	if [ "$(id -u)" = 0 ]; then
		find "$DATADIR" \! -user mysql -exec chown mysql: '{}' +
		find "${SOCKET%/*}" -maxdepth 0 \! -user mysql -exec chown mysql: '{}' \;
	fi
}

docker_init_database_dir() {
	mysql_note "Initializing database files"
	# mariadb-install-db passes the server options on; it cannot take ones with spaces.
	local arg server_args=()
	for arg in "${@:2}"; do
		if [[ $arg =~ [[:space:]] ]]; then
			mysql_warn "Not passing argument '$arg' to mariadb-install-db: it does not support arguments with whitespace."
		else
			server_args+=("$arg")
		fi
	done
	mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal \
		"${server_args[@]}" \
		--skip-test-db \
		--old-mode='UTF8_IS_UTF8MB3' \
		--default-time-zone=SYSTEM --enforce-storage-engine= \
		--skip-log-bin \
		--expire-logs-days=0 \
		--loose-innodb_buffer_pool_load_at_startup=0 \
		--loose-innodb_buffer_pool_dump_at_shutdown=0
	mysql_note "Database files initialized"
}

# The client as root on the socket; MYSQL_DATABASE first, so arguments can override it.
docker_exec_client() {
	if [ -n "$MYSQL_DATABASE" ]; then
		set -- --database="$MYSQL_DATABASE" "$@"
	fi
	mariadb --protocol=socket -uroot -hlocalhost --socket="$SOCKET" "$@"
}

# SQL on stdin, as root with MARIADB_ROOT_PASSWORD (or with no password when
# the first argument is --dont-use-mysql-root-password); other arguments go
# to the client:
#   docker_process_sql --database=mysql <<<"CREATE USER ..."
#   docker_process_sql --dont-use-mysql-root-password --database=mydb <file.sql
docker_process_sql() {
	if [ "$1" = '--dont-use-mysql-root-password' ]; then
		shift
		MYSQL_PWD='' docker_exec_client "$@"
	else
		MYSQL_PWD=$MARIADB_ROOT_PASSWORD docker_exec_client "$@"
	fi
}

# $1 escaped for a single-quoted SQL string literal.
docker_sql_escape_string_literal() {
	local newline=$'\n' escaped=${1//\\/\\\\}
	escaped=${escaped//$newline/\\n}
	echo "${escaped//\'/\\\'}"
}

docker_temp_server_start() {
	"$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" --loose-wsrep_on=OFF \
		--expire-logs-days=0 --loose-innodb_buffer_pool_load_at_startup=0 &
	declare -g MARIADB_PID=$!
	mysql_note "Waiting for server startup"
	# Root has a password only once the datadir was initialised before.
	local extra=() i
	if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
		extra=(--dont-use-mysql-root-password)
	fi
	for i in {30..0}; do
		if docker_process_sql "${extra[@]}" --database=mysql <<<'SELECT 1' &>/dev/null; then
			break
		fi
		if ! kill -0 "$MARIADB_PID" 2>/dev/null; then
			i=0
			break
		fi
		sleep 1
	done
	if [ "$i" = 0 ]; then
		mysql_error "Unable to start server."
	fi
}

docker_temp_server_stop() {
	kill "$MARIADB_PID"
	wait "$MARIADB_PID"
}

random_password() {
	head -c 48 /dev/urandom | base64 -w0 | tr -d '=+/' | head -c 32
}

# A user for healthcheck.sh, its password in a file only mysql can read.
create_healthcheck_users() {
	local password escaped host
	password=$(random_password)
	escaped=$(docker_sql_escape_string_literal "$password")
	for host in 127.0.0.1 ::1 localhost; do
		echo "CREATE USER IF NOT EXISTS healthcheck@'$host' IDENTIFIED BY '$escaped';"
		echo "SET PASSWORD FOR healthcheck@'$host' = PASSWORD('$escaped');"
		echo "GRANT ${MARIADB_HEALTHCHECK_GRANTS:-USAGE} ON *.* TO healthcheck@'$host';"
	done
	(
		umask 0077
		printf '[mariadb-client]\nport=%s\nsocket=%s\nuser=healthcheck\npassword=%s\nprotocol=tcp\n' \
			"$PORT" "$SOCKET" "$password" >"$DATADIR/.my-healthcheck.cnf"
	)
}

docker_setup_db() {
	if [ -z "$MARIADB_INITDB_SKIP_TZINFO" ]; then
		mariadb-tzinfo-to-sql --skip-write-binlog /usr/share/zoneinfo |
			docker_process_sql --dont-use-mysql-root-password --database=mysql
	fi
	if [ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
		MARIADB_ROOT_PASSWORD=$(random_password)
		export MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD=$MARIADB_ROOT_PASSWORD
		mysql_note "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
	fi
	local root_password
	root_password=$(docker_sql_escape_string_literal "$MARIADB_ROOT_PASSWORD")

	local root_elsewhere=''
	if [ -n "$MARIADB_ROOT_HOST" ] && [ "$MARIADB_ROOT_HOST" != localhost ]; then
		root_elsewhere="CREATE USER 'root'@'$MARIADB_ROOT_HOST' IDENTIFIED BY '$root_password';
GRANT ALL ON *.* TO 'root'@'$MARIADB_ROOT_HOST' WITH GRANT OPTION;
GRANT PROXY ON ''@'%' TO 'root'@'$MARIADB_ROOT_HOST' WITH GRANT OPTION;"
	fi

	local create_database=''
	if [ -n "$MARIADB_DATABASE" ]; then
		mysql_note "Creating database $MARIADB_DATABASE"
		create_database="CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
	fi

	local create_user='' user_grants=''
	if [ -n "$MARIADB_USER" ] && [ -n "$MARIADB_PASSWORD" ]; then
		mysql_note "Creating user $MARIADB_USER"
		create_user="CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$(docker_sql_escape_string_literal "$MARIADB_PASSWORD")';"
		if [ -n "$MARIADB_DATABASE" ]; then
			mysql_note "Giving user $MARIADB_USER access to schema $MARIADB_DATABASE"
			user_grants="GRANT ALL ON \`${MARIADB_DATABASE//_/\\_}\`.* TO '$MARIADB_USER'@'%';"
		fi
	fi

	mysql_note "Securing system users (equivalent to running mysql_secure_installation)"
	docker_process_sql --dont-use-mysql-root-password --database=mysql --binary-mode <<-EOSQL
		SET @orig_sql_log_bin = @@SESSION.SQL_LOG_BIN;
		SET @@SESSION.SQL_LOG_BIN = 0;
		SET @@SESSION.SQL_MODE = REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');
		DROP USER IF EXISTS root@'127.0.0.1', root@'::1';
		EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname, '\'');
		SET PASSWORD FOR 'root'@'localhost' = PASSWORD('$root_password');
		$root_elsewhere
		$(create_healthcheck_users)
		SET @@SESSION.SQL_LOG_BIN = @orig_sql_log_bin;
		$create_database
		$create_user
		$user_grants
	EOSQL
}

docker_process_init_files() {
	# Older init scripts call "${mysql[@]}".
	# shellcheck disable=SC2034
	mysql=(docker_process_sql)
	echo
	local f
	for f; do
		case $f in
			*.sh)
				if [ -x "$f" ]; then
					mysql_note "$0: running $f"
					"$f"
				else
					mysql_note "$0: sourcing $f"
					# shellcheck disable=SC1090
					. "$f"
				fi
				;;
			*.sql)
				mysql_note "$0: running $f"
				docker_process_sql <"$f"
				echo
				;;
			*) mysql_warn "$0: ignoring $f" ;;
		esac
		echo
	done
}

docker_mariadb_init() {
	# Fails early when the directory is unreadable, before a half-made datadir.
	ls /docker-entrypoint-initdb.d/ >/dev/null
	docker_init_database_dir "$@"
	mysql_note "Starting temporary server"
	docker_temp_server_start "$@"
	mysql_note "Temporary server started."
	docker_setup_db
	docker_process_init_files /docker-entrypoint-initdb.d/*
	mysql_note "Stopping temporary server"
	docker_temp_server_stop
	mysql_note "Temporary server stopped"
	echo
	mysql_note "MariaDB init process done. Ready for start up."
	echo
}

_mysql_want_help() {
	local arg
	for arg; do
		case $arg in
			-'?' | --help | --print-defaults | -V | --version) return 0 ;;
		esac
	done
	return 1
}

_main() {
	if [ "${1:0:1}" = '-' ]; then
		set -- mariadbd "$@"
	fi
	if { [ "$1" = mariadbd ] || [ "$1" = mysqld ]; } && ! _mysql_want_help "$@"; then
		mysql_note "Entrypoint script for MariaDB Server $(mariadbd --version | awk '{ print $3 }') started."
		mysql_check_config "$@"
		docker_setup_env "$@"
		docker_create_db_directories
		if [ "$(id -u)" = 0 ]; then
			mysql_note "Switching to dedicated user 'mysql'"
			exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
		fi
		if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
			docker_verify_minimum_env
			docker_mariadb_init "$@"
		else
			mysql_note "Database already initialized in $DATADIR: skipping initialization"
		fi
	fi
	exec "$@"
}

if ! _is_sourced; then
	_main "$@"
fi
