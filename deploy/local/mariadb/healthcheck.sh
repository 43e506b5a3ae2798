#!/bin/bash
# healthcheck.sh of the MariaDB stand-in, with the official image's interface:
# each --TEST argument runs a test in order; exit 0 iff all pass.
#   --connect              the real server accepts connections (not the
#                          init-time server, which runs without networking)
#   --innodb_initialized   InnoDB is up and available
#   --innodb_buffer_pool_loaded
#   --mariadbupgrade       no mariadb-upgrade holds its lock
# Options: --defaults-file=F, --defaults-extra-file=F, --no-defaults,
# --datadir=D, --su-mysql. Credentials: the healthcheck user the entrypoint
# wrote to DATADIR/.my-healthcheck.cnf; without that file, root with
# MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD).
set -eo pipefail

datadir=/var/lib/mysql
defaults_file=
extra_file=
no_defaults=
connected=

client_args() {
	local args=()
	[ -n "$no_defaults" ] && args+=(--no-defaults)
	[ -n "$defaults_file" ] && args+=(--defaults-file="$defaults_file")
	if [ -n "$extra_file" ]; then
		args+=(--defaults-extra-file="$extra_file")
	elif [ -z "$defaults_file" ] && [ -z "$no_defaults" ] && [ -f "$datadir/.my-healthcheck.cnf" ]; then
		args+=(--defaults-extra-file="$datadir/.my-healthcheck.cnf")
	elif [ -n "${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}" ]; then
		args+=(--user=root)
	fi
	printf '%s\0' "${args[@]}"
}

# SQL over the socket, one value per line.
sql() {
	local args=()
	mapfile -d '' args < <(client_args)
	MYSQL_PWD=${MYSQL_PWD:-${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}} \
		mariadb "${args[@]}" --skip-ssl --protocol=socket --batch --skip-column-names -e "$1"
}

connect() {
	local s
	# The socket answers for the init-time server too: it says whether networking is on.
	s=$(sql 'select @@skip_networking' 2>/dev/null) || s=
	case $s in
		0) connected=0; return 0 ;;
		1) connected=1; return 1 ;;
	esac
	# No answer on the socket (another user, no credentials): try TCP; being
	# refused for credentials still means the server accepts connections.
	local args=()
	mapfile -d '' args < <(client_args)
	s=$(MYSQL_PWD=${MYSQL_PWD:-${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}} \
		mariadb "${args[@]}" --skip-ssl -h localhost --protocol=tcp --batch --skip-column-names \
		-e 'select @@skip_networking' 2>&1) || true
	case $s in
		0 | ERROR\ 1045\ *\(28000\)* | ERROR\ 1[0-9][0-9][0-9]\ \(28000\)* | ERROR\ 1820\ * | ERROR\ 4151\ * | ERROR\ 1226\ *)
			connected=0; return 0 ;;
		*)
			connected=1; return 1 ;;
	esac
}

innodb_initialized() {
	[ "$(sql "select 1 from information_schema.ENGINES where engine='innodb' and support in ('YES', 'DEFAULT', 'ENABLED')")" = 1 ]
}

innodb_buffer_pool_loaded() {
	[[ $(sql "select VARIABLE_VALUE from information_schema.GLOBAL_STATUS where VARIABLE_NAME='Innodb_buffer_pool_load_status'") == *'load completed'* ]]
}

mariadbupgrade() {
	local f=$datadir/mariadb_upgrade_info
	if [ -r "$f" ]; then
		flock --exclusive --nonblock 9 9<"$f"
		return $?
	fi
	return 0
}

if [ $# -eq 0 ]; then
	echo "At least one argument required" >&2
	exit 1
fi

while [ $# -gt 0 ]; do
	test=
	case $1 in
		--su-mysql)
			shift
			if [ "$(id -u)" = 0 ]; then
				exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
			fi
			continue
			;;
		--datadir=*) datadir=${1#*=} ;;
		--datadir) shift; datadir=$1 ;;
		--no-defaults) no_defaults=1; defaults_file=; extra_file= ;;
		--defaults-file=*) defaults_file=${1#*=}; no_defaults= ;;
		--defaults-extra-file=*) extra_file=${1#*=}; no_defaults= ;;
		--connect | --innodb_initialized | --innodb_buffer_pool_loaded | --mariadbupgrade)
			test=${1#--}
			;;
		--*)
			echo "healthcheck unknown option or test '${1#--}'" >&2
			exit 1
			;;
		*)
			echo "Unknown healthcheck option $1" >&2
			exit 1
			;;
	esac
	if [ -n "$test" ] && ! "$test"; then
		echo "healthcheck $test failed" >&2
		exit 1
	fi
	shift
done
# Without a passed connect test, success could be a false positive (the
# init-time server answers on the socket): the connect test decides.
if [ "$connected" != 0 ]; then
	connect
	exit $?
fi
