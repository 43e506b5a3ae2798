#!/usr/bin/env bash
# Docker on a machine that reaches package registries but no image registry:
# every image a local compose run uses is built here from Debian packages.
#
#   scripts/lib/docker-local.sh engine        start dockerd (installs docker.io when missing)
#   scripts/lib/docker-local.sh compose       make `docker compose` work (Compose v2 built from its Go module)
#   scripts/lib/docker-local.sh base          image feedback-local/debian:bookworm (debootstrap + docker import)
#   scripts/lib/docker-local.sh stage         fill the build contexts under var/docker-local/ (no build)
#   scripts/lib/docker-local.sh images        stage and build the stand-in images (deploy/local/*)
#   scripts/lib/docker-local.sh stop-engine   stop the dockerd this script started
#   scripts/lib/docker-local.sh all           engine, compose, base, images
#
# Idempotent: each step checks what is already there and does only what is
# missing. The stand-ins emulate the interfaces of the official images that
# compose.yaml names; deploy/local/README.md lists where they differ.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VAR=$ROOT/var
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/feedback
DOCKERD_LOG=$VAR/dockerd.log
DOCKERD_PID=$VAR/dockerd.pid
COMPOSE_VERSION=v2.40.3
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
KAFKA_VERSION=4.1.1
KAFKA_LIB=${FEEDBACK_KAFKA_CACHE:-$CACHE/kafka-$KAFKA_VERSION}/lib
KEYCLOAK_VERSION=24.0.5
# Unpacked from Maven Central's zip (SHA-1 checked) by `scripts/infra.sh jars`.
KEYCLOAK_DIST=${FEEDBACK_KEYCLOAK_CACHE:-$CACHE/keycloak-$KEYCLOAK_VERSION}
BASE_IMAGE=feedback-local/debian:bookworm
STAGE=$VAR/docker-local
# deploy/local/<dir> -> image tag; every build context is staged under $STAGE/<dir>.
IMAGES=(
  "kafka feedback-local/kafka:$KAFKA_VERSION"
  "redis feedback-local/redis:7"
  "mariadb feedback-local/mariadb:11.4"
  "caddy feedback-local/caddy:2"
  "prometheus feedback-local/prometheus:v3"
  "grafana-standin feedback-local/grafana-standin"
  "keycloak feedback-local/keycloak:$KEYCLOAK_VERSION"
  "services feedback-local/course-feedback"
)

say() { printf '[docker-local %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }
# Seconds since $1 (from `date +%s`), for the progress lines.
took() { echo "$(($(date +%s) - $1))s"; }

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# ------------------------------------------------------------------ apt ----
APT_UPDATED=0
apt_install() {
  if [[ $APT_UPDATED == 0 ]]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  # Packages must not start their own services here (there is no init system,
  # and a started dockerd would not be ours to stop): a policy-rc.d that
  # refuses, for the length of the install, marked so a leftover is ours.
  local policy=/usr/sbin/policy-rc.d marker='# placed by feedback scripts/lib/docker-local.sh'
  if [[ -e $policy ]] && grep -qF "$marker" "$policy"; then rm -f "$policy"; fi
  local placed=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$marker" >"$policy" && chmod +x "$policy" && placed=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
    --no-install-recommends "$@" || rc=$?
  if ((placed)); then rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get install $* failed"
}

# --------------------------------------------------------------- engine ----
cmd_engine() {
  command -v docker >/dev/null || die "no docker client on PATH"
  if docker_answers; then
    say "docker engine answering ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    return
  fi
  command -v dockerd >/dev/null || apt_install docker.io
  mkdir -p "$VAR"
  local pid=""
  if [[ -s $DOCKERD_PID ]]; then
    pid=$(cat "$DOCKERD_PID")
    if kill -0 "$pid" 2>/dev/null && grep -qa dockerd "/proc/$pid/cmdline" 2>/dev/null; then
      say "dockerd (pid $pid) is starting"
    else
      pid=""
    fi
  fi
  if [[ -z $pid ]]; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the daemon outlives the shell that started it and its signals.
    nohup setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DOCKERD_PID"
  fi
  local start waited=0 limit=60
  start=$(date +%s)
  until docker_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DOCKERD_LOG" | sed 's/^/    /' >&2 || true
      rm -f "$DOCKERD_PID"
      die "dockerd exited while starting (log: $DOCKERD_LOG)"
    fi
    waited=$(($(date +%s) - start))
    ((waited < limit)) || die "dockerd (pid $pid) did not answer within ${limit}s (log: $DOCKERD_LOG)"
    sleep 1
  done
  say "docker engine answering after $(took "$start") (dockerd pid $pid)"
}

cmd_stop_engine() {
  if [[ ! -s $DOCKERD_PID ]]; then
    say "no pid file $DOCKERD_PID: no dockerd of ours to stop"
    return
  fi
  local pid
  pid=$(cat "$DOCKERD_PID")
  if ! kill -0 "$pid" 2>/dev/null || ! grep -qa dockerd "/proc/$pid/cmdline" 2>/dev/null; then
    say "dockerd (pid $pid) is not running"
    rm -f "$DOCKERD_PID"
    return
  fi
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  local waited=0
  while kill -0 "$pid" 2>/dev/null && ((waited < 60)); do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    die "dockerd (pid $pid) still running after 60s"
  fi
  rm -f "$DOCKERD_PID"
  say "dockerd stopped"
}

require_engine() { docker_answers || die "the docker engine does not answer: run '$0 engine' first"; }

# -------------------------------------------------------------- compose ----
cmd_compose() {
  if docker compose version >/dev/null 2>&1; then
    say "$(docker compose version)"
    return
  fi
  local cached=$CACHE/docker-compose-$COMPOSE_VERSION/docker-compose
  if [[ ! -x $cached ]]; then
    local go=go
    command -v go >/dev/null || go=/usr/local/go/bin/go
    [[ -x $(command -v "$go") ]] || die "Go is needed to build the Compose CLI (not found)"
    local start work dir
    start=$(date +%s)
    say "building the Compose CLI $COMPOSE_VERSION from its Go module source (a few minutes)"
    # `go install module@version` refuses this module (its go.mod has exclude
    # directives), so it builds from a writable copy of the module's source.
    dir=$(GOTOOLCHAIN=local "$go" mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    [[ -d $dir ]] || die "go mod download gave no source directory"
    mkdir -p "$VAR"
    work=$(mktemp -d "$VAR/compose-src.XXXXXX")
    cp -r "$dir" "$work/src"
    chmod -R u+w "$work/src"
    mkdir -p "$(dirname "$cached")"
    # The version stamped in, as the project's Makefile does, so that
    # `docker compose version` names it.
    (cd "$work/src" && CGO_ENABLED=0 GOTOOLCHAIN=local "$go" build -trimpath \
      -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
      -o "$cached.tmp" ./cmd) || { rm -rf "$work"; die "building the Compose CLI failed"; }
    mv "$cached.tmp" "$cached"
    rm -rf "$work"
    say "Compose CLI built in $(took "$start"), cached at $cached"
  else
    say "Compose CLI $COMPOSE_VERSION found in the cache ($cached)"
  fi
  mkdir -p "$(dirname "$COMPOSE_PLUGIN")"
  install -m 0755 "$cached" "$COMPOSE_PLUGIN"
  docker compose version >/dev/null 2>&1 || die "docker compose version fails after installing $COMPOSE_PLUGIN"
  say "installed: $(docker compose version)"
}

# ----------------------------------------------------------------- base ----
# The first URIs of the Debian stanza (not the security one) in the host's apt sources.
debian_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources
  [[ -r $f ]] || die "$f not found: no Debian mirror to bootstrap from"
  awk '
    /^[[:space:]]*$/ { if (uri != "" && suites ~ /(^| )bookworm( |$)/) { print uri; found = 1; exit } uri = ""; suites = ""; next }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { $1 = ""; suites = $0; sub(/^ /, "", suites) }
    END { if (!found && uri != "" && suites ~ /(^| )bookworm( |$)/) print uri }
  ' "$f" | head -n1
}

cmd_base() {
  require_engine
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "image $BASE_IMAGE present"
    return
  fi
  command -v debootstrap >/dev/null || apt_install debootstrap
  local mirror start rootfs
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "no bookworm URIs in /etc/apt/sources.list.d/debian.sources"
  mkdir -p "$VAR"
  rootfs=$(mktemp -d "$VAR/base-rootfs.XXXXXX")
  # debootstrap mounts proc and sys inside while it works: unmount before removing.
  trap 'base_cleanup "'"$rootfs"'"' EXIT
  start=$(date +%s)
  say "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$VAR/debootstrap.log" 2>&1 ||
    { tail -n 20 "$VAR/debootstrap.log" >&2; die "debootstrap failed (log: $VAR/debootstrap.log)"; }
  say "debootstrap done in $(took "$start")"

  # apt inside: the host's deb822 sources (bookworm, updates, security).
  rm -f "$rootfs/etc/apt/sources.list"
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
  # What the Debian images on Docker Hub set up for containers: no docs, man
  # pages or translations from later installs, no .deb left in apt's cache,
  # and no service started by a package's postinst during a build.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  printf 'APT::Install-Recommends "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
  printf '#!/bin/sh\n# containers have no init system: packages start no services\nexit 101\n' \
    >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/bootstrap.log "$rootfs"/usr/share/doc/*/changelog* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  mkdir -p "$rootfs/var/lib/apt/lists/partial"
  # Some postinst scripts (update-alternatives for Java) link man pages into
  # these directories: they must exist even though their content is excluded.
  mkdir -p "$rootfs"/usr/share/man/man{1..8}
  # The engine gives each container its own hosts, hostname and resolv.conf.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  base_unmount "$rootfs"

  start=$(date +%s)
  say "docker import -> $BASE_IMAGE"
  tar --numeric-owner --xattrs -C "$rootfs" -c . |
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      - "$BASE_IMAGE" >/dev/null
  say "imported in $(took "$start"): $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec))"
  base_cleanup "$rootfs"
  trap - EXIT
}

base_unmount() {
  local rootfs=$1 m
  # Deepest first.
  while IFS= read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done < <(awk -v r="$rootfs" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r)
}

base_cleanup() {
  local rootfs=$1
  [[ -d $rootfs ]] || return 0
  base_unmount "$rootfs"
  if awk -v r="$rootfs" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    say "warning: mounts remain under $rootfs; not removing it" >&2
    return 0
  fi
  rm -rf --one-file-system "$rootfs"
}

# --------------------------------------------------------------- images ----
# Copies deploy/local/<dir> to $STAGE/<dir>, plus what each image needs from
# outside it (Kafka's jars, the probe, Keycloak's distribution, the service
# binaries and config).
stage_one() {
  local dir=$1 src=$ROOT/deploy/local/$1 dst=$STAGE/$1
  [[ -f $src/Dockerfile ]] || die "no $src/Dockerfile"
  rm -rf "$dst"
  mkdir -p "$dst"
  cp -a "$src/." "$dst/"
  case $dir in
    kafka)
      [[ -f $KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar ]] ||
        die "Kafka $KAFKA_VERSION jars missing in $KAFKA_LIB: run scripts/infra.sh up (it caches them from Maven Central)"
      mkdir -p "$dst/lib"
      # Hard links when the cache is on the same file system: no copy of the jars.
      cp -l "$KAFKA_LIB"/*.jar "$dst/lib/" 2>/dev/null || cp "$KAFKA_LIB"/*.jar "$dst/lib/"
      cp "$ROOT/scripts/lib/kafka_probe.py" "$dst/kafka_probe.py"
      ;;
    keycloak)
      [[ -f $KEYCLOAK_DIST/complete && -x $KEYCLOAK_DIST/bin/kc.sh ]] ||
        die "Keycloak $KEYCLOAK_VERSION missing in $KEYCLOAK_DIST: run scripts/infra.sh jars (it caches it from Maven Central)"
      # Hard links when the cache is on the same file system (about 190 MB);
      # the cache's own marker file stays out.
      cp -al "$KEYCLOAK_DIST" "$dst/keycloak" 2>/dev/null || cp -a "$KEYCLOAK_DIST" "$dst/keycloak"
      rm -f "$dst/keycloak/complete"
      ;;
    services)
      local bin
      mkdir -p "$dst/bin"
      for bin in ingest aggregator query; do
        [[ -x $ROOT/target/release/$bin ]] ||
          die "$ROOT/target/release/$bin missing: run 'cargo build --release --bin ingest --bin aggregator --bin query' first"
        cp -l "$ROOT/target/release/$bin" "$dst/bin/$bin" 2>/dev/null || cp "$ROOT/target/release/$bin" "$dst/bin/$bin"
      done
      cp -a "$ROOT/config" "$dst/config"
      ;;
  esac
}

# One hash of a staged context (paths, modes and contents) and the base image's id.
context_hash() {
  local ctx=$1
  {
    docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
    (cd "$ctx" && find . -type f -printf '%p %m\n' | LC_ALL=C sort)
    (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

build_one() {
  local dir=$1 tag=$2 ctx=$STAGE/$1 hash have start
  hash=$(context_hash "$ctx")
  have=$(docker image inspect -f '{{index .Config.Labels "feedback.context-hash"}}' "$tag" 2>/dev/null || true)
  if [[ $have == "$hash" ]]; then
    say "$tag up to date (context unchanged)"
    return
  fi
  local previous
  previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  start=$(date +%s)
  say "building $tag from deploy/local/$dir"
  mkdir -p "$VAR/docker-local-logs"
  local log=$VAR/docker-local-logs/$dir.build.log
  # The classic builder: the engine here has no buildx (docker build says
  # the legacy builder is deprecated; it builds these Dockerfiles fine).
  if ! DOCKER_BUILDKIT=0 docker build --force-rm --label "feedback.context-hash=$hash" -t "$tag" "$ctx" >"$log" 2>&1; then
    tail -n 30 "$log" | sed 's/^/    /' >&2
    die "building $tag failed (log: $log)"
  fi
  say "built $tag in $(took "$start") ($(docker image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec))"
  # The image this one replaces, now untagged: removed unless a container uses it.
  if [[ -n $previous && $previous != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
}

# Selects entries of IMAGES by directory name (all when none is given).
selected() {
  local entry dir
  for entry in "${IMAGES[@]}"; do
    dir=${entry%% *}
    if (($# == 0)) || [[ " $* " == *" $dir "* ]]; then echo "$entry"; fi
  done
}

cmd_stage() {
  local entry
  while read -r entry; do
    stage_one "${entry%% *}"
    say "staged $STAGE/${entry%% *}"
  done < <(selected "$@")
}

cmd_images() {
  require_engine
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "image $BASE_IMAGE missing: run '$0 base' first"
  local entry
  while read -r entry; do
    stage_one "${entry%% *}"
    build_one "${entry%% *}" "${entry#* }"
  done < <(selected "$@")
}

# ----------------------------------------------------------------- main ----
usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

case ${1:-} in
  engine) cmd_engine ;;
  compose) cmd_compose ;;
  base) cmd_base ;;
  stage) shift; cmd_stage "$@" ;;
  images) shift; cmd_images "$@" ;;
  stop-engine) cmd_stop_engine ;;
  all)
    cmd_engine
    cmd_compose
    cmd_base
    cmd_images
    ;;
  *) usage ;;
esac
