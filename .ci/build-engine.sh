#!/usr/bin/env bash
# Builds one Redis or Valkey engine of the engine matrix from its Debian source package and caches it
# outside the repository, keyed by version. The default engine, Redis 7.0, is Debian's binary package
# (.ci/setup.sh installs it); the others are newer than this machine's Debian release, so their source
# packages (trixie and sid) are fetched with apt, verified against the archive's Sources index, and their
# upstream tarballs built with TLS.
#
# Usage: .ci/build-engine.sh ENGINE     ENGINE: one of the names below (`.ci/build-engine.sh list`);
#        .ci/build-engine.sh ci         the engine of this commit's CI run (below).
# Prints the directory that holds redis-server, redis-sentinel and redis-cli on its last line (a Valkey
# build also has its valkey-* names; the redis-* ones are Valkey's own compatibility links).
# The tests run on an engine with RMSG_ENGINE=ENGINE (tests/support/engines.py puts that directory first
# on PATH).
#
# The archive is the one this machine's apt sources name; the suites are added as deb-src lines in a
# private apt directory under the cache (the machine's own apt configuration is not touched).
set -euo pipefail

declare -A PACKAGE=([redis-8.0]="redis=5:8.0.6-3" [valkey-8.1]="valkey=8.1.1+dfsg1-3+deb13u3" [valkey-9.1]="valkey=9.1.2-1")
SUITES="trixie sid"

if [ "${1:-}" = list ] || [ -z "${1:-}" ]; then
  printf '%s\n' "${!PACKAGE[@]}" | sort
  [ -n "${1:-}" ] || { echo "usage: $0 ENGINE|list|ci" >&2; exit 2; }
  exit 0
fi
if [ "$1" = ci ]; then
  # The engine CI runs the matrix set of the redis tier on besides the default (.ci/test): RMSG_CI_ENGINE,
  # else one that moves on with every commit (the number of commits of HEAD), so that every engine is
  # tested every few commits and a warm run builds nothing; the same commit tests the same engine again.
  if [ -n "${RMSG_CI_ENGINE:-}" ]; then echo "$RMSG_CI_ENGINE"; exit 0; fi
  mapfile -t names < <(printf '%s\n' "${!PACKAGE[@]}" | sort)
  repo="$(dirname "$0")/.."
  if [ "$(git -C "$repo" rev-parse --is-shallow-repository 2>/dev/null)" = false ]; then
    count=$(git -C "$repo" rev-list --count HEAD)
  else  # a shallow clone counts the same few commits every time: the commit's hash moves on instead
    count=$(( 16#$(git -C "$repo" rev-parse --short=6 HEAD 2>/dev/null || date +%j) ))
  fi
  echo "${names[$(( 10#$count % ${#names[@]} ))]}"
  exit 0
fi
engine=$1
spec="${PACKAGE[$engine]:-}"
[ -n "$spec" ] || { echo "unknown engine '$engine'; known: $(printf '%s ' "${!PACKAGE[@]}")" >&2; exit 2; }
source_package=${spec%%=*}
debian_version=${spec#*=}
upstream=${debian_version#*:}
upstream=${upstream%-*}
upstream=${upstream%+dfsg*}

CACHE="${RMSG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-messaging-operator}"
DEST="$CACHE/engines/$engine-$upstream"
log() { printf '[engine %s] %s\n' "$engine" "$*" >&2; }

if [ -x "$DEST/bin/redis-server" ] && [ -x "$DEST/bin/redis-cli" ] && [ -e "$DEST/bin/redis-sentinel" ]; then
  log "cached: $("$DEST/bin/redis-server" --version)"
  echo "$DEST"
  exit 0
fi

# the Debian archive of this machine's apt sources, not a mirror named here: a deb822 stanza signed by
# Debian's archive keyring, else a one-line `deb URI suite main` of sources.list (security suites left out)
archive=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  archive=$(awk 'BEGIN {RS = ""} /debian-archive-keyring/ {
      for (i = 1; i <= NF; i++) if ($i == "URIs:" && $(i + 1) !~ /security/) {print $(i + 1); exit}}' "$f")
  [ -z "$archive" ] || break
done
if [ -z "$archive" ] && [ -f /etc/apt/sources.list ]; then
  archive=$(awk '$1 == "deb" && $0 !~ /security/ && / main/ {
      for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$archive" ] || { log "no Debian archive found in this machine's apt sources"; exit 1; }

apt_dir="$CACHE/engines/.apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
: >"$apt_dir/sources.list"
for suite in $SUITES; do
  echo "deb-src [signed-by=$keyring] $archive $suite main" >>"$apt_dir/sources.list"
done
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
# as root, apt drops to its own user to download, who cannot write in the cache
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)

work=$(mktemp -d "${TMPDIR:-/tmp}/rmsg-engine-$engine.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
log "fetching the source package $source_package $debian_version ($SUITES)"
apt-get "${apt_opts[@]}" -qq update
if ! (cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only --tar-only "$spec" >/dev/null); then
  log "$spec is not in the archive any more; it has:"
  apt-cache "${apt_opts[@]}" showsrc "$source_package" | awk '/^Version:/ {print "  " $2}' >&2
  log "update PACKAGE in $0 to one of them"
  exit 1
fi
shopt -s nullglob
tarballs=("$work"/*.orig.tar.gz "$work"/*.orig.tar.xz "$work"/*.orig.tar.bz2)
shopt -u nullglob
[ "${#tarballs[@]}" -eq 1 ] || { log "expected one upstream tarball, got: ${tarballs[*]:-none}"; exit 1; }
tarball=${tarballs[0]}
mkdir "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1

log "building $(basename "$tarball") with TLS ($(nproc) jobs)"
make -C "$work/src" -j "$(nproc)" BUILD_TLS=yes >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
rm -rf "$DEST.tmp"
make -C "$work/src" PREFIX="$DEST.tmp" install >>"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
log "built in $(( $(date +%s) - started )) s: $("$DEST/bin/redis-server" --version)"
echo "$DEST"
