#!/bin/sh
# Entrypoint of the Redis stand-in, behaving like the official image's:
# options alone (or a .conf first) mean redis-server; started as root it
# drops to the redis user; the data directory keeps a private umask.
#
# The official binary is built with protected mode off by default (a
# container's clients come from other addresses); Debian's defaults to on,
# which refuses every non-loopback client when no password is set. So
# `--protected-mode no` is added unless the command line or the given config
# file sets protected-mode itself.
set -e

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = 'redis-server' ]; then
	sets_protected_mode=no
	for arg in "$@"; do
		[ "$arg" = '--protected-mode' ] && sets_protected_mode=yes
	done
	if [ -n "${2:-}" ] && [ "${2#-}" = "$2" ] && [ -f "$2" ] &&
		grep -qE '^[[:space:]]*protected-mode[[:space:]]' "$2"; then
		sets_protected_mode=yes
	fi
	if [ "$sets_protected_mode" = no ]; then
		set -- "$@" --protected-mode no
	fi
fi

um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi

exec "$@"
