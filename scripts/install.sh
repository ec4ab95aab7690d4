#!/usr/bin/env bash
# Installs Reef from built binaries: the CNI plugins, reef-run, reef-agent and reefctl, man
# pages and shell completions (written by reef-docgen), a systemd unit for reef-agent, and,
# where the operator has none, an example conflist and agent environment file. Every path
# it writes is listed in a manifest that --uninstall removes exactly.
#
#   scripts/install.sh [--build]    install (--build: cargo build --release --workspace first)
#   scripts/install.sh --uninstall  remove what the install put there
#
# Environment:
#   DESTDIR           staging root prepended to every path (default: none, the real root)
#   PREFIX            where reef-run, reef-agent, reefctl and docs go (default /usr/local)
#   REEF_BIN_DIR      the built binaries (default ${CARGO_TARGET_DIR:-target}/release)
#   SYSTEMD_UNIT_DIR  where reef-agent.service goes (default PREFIX/lib/systemd/system for
#                     PREFIX /usr/local or /usr, else /etc/systemd/system)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGING=$ROOT/scripts/packaging
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PREFIX=${PREFIX:-/usr/local}
PREFIX=${PREFIX%/}
BIN_DIR=${REEF_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}

PLUGINS=(reef-bridge reef-routed reef-portmap reef-ipam)
COMMANDS=(reef-run reef-agent reefctl)
CNI_BIN=/opt/cni/bin
CNI_CONF=/etc/cni/net.d
ENV_FILE=/etc/default/reef-agent
MANIFEST=$PREFIX/share/reef/install-manifest

die() {
  echo "install.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# The unit goes where systemd looks for locally installed software: $PREFIX/lib/systemd/system
# is on its search path for PREFIX /usr/local (and /usr), below /etc/systemd/system, which
# stays the administrator's (`systemctl edit` drop-ins, full overrides). Any other PREFIX is
# not searched, so the unit goes to /etc/systemd/system there.
unit_dir() {
  if [[ -n ${SYSTEMD_UNIT_DIR:-} ]]; then
    echo "${SYSTEMD_UNIT_DIR%/}"
  elif [[ $PREFIX == /usr/local || $PREFIX == /usr ]]; then
    echo "$PREFIX/lib/systemd/system"
  else
    echo /etc/systemd/system
  fi
}

mode=install
build=0
for arg in "$@"; do
  case $arg in
    --build) build=1 ;;
    --uninstall) mode=uninstall ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done
# It ends up in the unit's ExecStart and in sed: plain path characters only.
[[ $PREFIX =~ ^/[A-Za-z0-9._/+-]*$ ]] || die "PREFIX must be an absolute path of letters, digits and ._/+-, not \"$PREFIX\""
[[ $mode == install || $build == 0 ]] || die "--build and --uninstall do not go together"

# Manifest lines, paths as on the target system (without DESTDIR):
#   dir PATH             a directory the install created (removed on uninstall if empty)
#   file PATH            a file the install owns
#   config SHA256 PATH   an example config, removed only while it is still the one shipped
declare -a manifest=()

record() { manifest+=("$*"); }

# Creates $1 (a target path) under DESTDIR, recording each directory it had to create.
ensure_dir() {
  local dir=$1 missing=()
  while [[ -n $dir && ! -d $DESTDIR$dir ]]; do
    missing=("$dir" "${missing[@]}")
    dir=${dir%/*}
  done
  local d
  for d in "${missing[@]}"; do
    mkdir -m 755 "$DESTDIR$d"
    record dir "$d"
  done
}

# Copies $1 to target path $2 with mode $3: into a temporary file beside it, then renamed,
# so a runtime executing a plugin at that moment sees the old binary or the new one.
put() {
  local src=$1 dst=$2 mode=$3
  ensure_dir "${dst%/*}"
  local tmp="$DESTDIR$dst.reef-install.$$"
  install -m "$mode" "$src" "$tmp"
  mv -f "$tmp" "$DESTDIR$dst"
  record file "$dst"
}

# Installs the example $1 as $2 unless the operator's file is there; recorded with its
# checksum, so uninstall can tell it from an edited one.
put_config() {
  local src=$1 dst=$2
  ensure_dir "${dst%/*}"
  install -m 644 "$src" "$DESTDIR$dst"
  record config "$(sha256sum <"$src" | cut -d' ' -f1)" "$dst"
}

# Carries the entries of an earlier install's manifest over, so a reinstall still removes
# the directories and examples the first one created.
load_manifest() {
  local path=$DESTDIR$MANIFEST
  [[ -f $path ]] || return 0
  local line
  while IFS= read -r line; do
    [[ -n $line ]] && manifest+=("$line")
  done <"$path"
}

write_manifest() {
  ensure_dir "${MANIFEST%/*}"
  local tmp="$DESTDIR$MANIFEST.reef-install.$$"
  # One line per path, the latest (a config rewritten after the operator deleted it is
  # recorded with the checksum of the example written last).
  printf '%s\n' "${manifest[@]}" | awk '
    { p = $0; sub(/^[^ ]+ /, "", p); if ($1 == "config") sub(/^[^ ]+ /, "", p)
      if (!(p in at)) at[p] = ++n; lines[at[p]] = $0 }
    END { for (i = 1; i <= n; i++) print lines[i] }' >"$tmp"
  mv -f "$tmp" "$DESTDIR$MANIFEST"
}

has_cni_config() {
  local f
  for f in "$DESTDIR$CNI_CONF"/*.conf "$DESTDIR$CNI_CONF"/*.conflist "$DESTDIR$CNI_CONF"/*.json; do
    [[ -e $f ]] && return 0
  done
  return 1
}

docs=
started=0
# A failed install still writes its manifest, so --uninstall can remove what it wrote.
# shellcheck disable=SC2317 # called by the EXIT trap
install_exit() {
  local status=$?
  if ((started)); then
    write_manifest || true
    echo "install.sh: failed; what was written is in $DESTDIR$MANIFEST" >&2
  fi
  if [[ -n $docs ]]; then
    rm -rf "$docs"
  fi
  return "$status"
}

install_all() {
  if ((build)); then
    (cd "$ROOT" && cargo build --release --workspace)
  fi
  # Everything is checked before anything is written.
  local name missing=()
  for name in "${PLUGINS[@]}" "${COMMANDS[@]}" reef-docgen; do
    [[ -x $BIN_DIR/$name ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    die "not built in $BIN_DIR: ${missing[*]}
  build them first: cargo build --release --workspace (or run this script with --build),
  or point REEF_BIN_DIR at the directory that holds them"
  fi

  docs=$(mktemp -d)
  trap install_exit EXIT
  "$BIN_DIR/reef-docgen" "$docs" >/dev/null

  # The staging root itself is the caller's, not the install's: never recorded.
  if [[ -n $DESTDIR ]]; then
    mkdir -p "$DESTDIR"
  fi
  load_manifest
  started=1
  for name in "${PLUGINS[@]}"; do
    put "$BIN_DIR/$name" "$CNI_BIN/$name" 755
  done
  for name in "${COMMANDS[@]}"; do
    put "$BIN_DIR/$name" "$PREFIX/bin/$name" 755
  done
  local rel
  while IFS= read -r rel; do
    put "$docs/$rel" "$PREFIX/share/$rel" 644
  done < <(cd "$docs" && find . -type f | sed 's|^\./||' | sort)

  local unit
  unit=$(unit_dir)/reef-agent.service
  sed "s|@BINDIR@|$PREFIX/bin|g" "$PACKAGING/reef-agent.service.in" >"$docs.service"
  put "$docs.service" "$unit" 644
  rm -f "$docs.service"

  local notes=()
  if has_cni_config; then
    notes+=("kept $CNI_CONF: it already holds a network configuration (no example written)")
  else
    put_config "$PACKAGING/10-reef.conflist" "$CNI_CONF/10-reef.conflist"
    notes+=("wrote the example network $CNI_CONF/10-reef.conflist (reef-bridge on reef0, 10.88.0.0/16)")
  fi
  if [[ -e $DESTDIR$ENV_FILE ]]; then
    notes+=("kept $ENV_FILE (already there)")
  else
    put_config "$PACKAGING/reef-agent.default" "$ENV_FILE"
    notes+=("wrote $ENV_FILE: set REEF_AGENT_OPTS (--etcd, --node, --iface, TLS) before starting the agent")
  fi
  write_manifest
  started=0

  echo "installed Reef: plugins in $DESTDIR$CNI_BIN, commands in $DESTDIR$PREFIX/bin, unit $DESTDIR$unit"
  printf '  %s\n' "${notes[@]}"
  echo "  manifest: $DESTDIR$MANIFEST (scripts/install.sh --uninstall removes what it lists)"
  if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
    systemctl daemon-reload
    echo "  then: systemctl enable --now reef-agent"
  fi
}

uninstall_all() {
  local path=$DESTDIR$MANIFEST
  [[ -f $path ]] || die "no manifest at $path: nothing was installed with this DESTDIR and PREFIX"
  local kind rest sum target dirs=() removed=0
  while read -r kind rest; do
    case $kind in
      file)
        rm -f "$DESTDIR$rest"
        removed=$((removed + 1))
        ;;
      config)
        sum=${rest%% *}
        target=${rest#* }
        [[ -e $DESTDIR$target ]] || continue
        if [[ $(sha256sum <"$DESTDIR$target" | cut -d' ' -f1) == "$sum" ]]; then
          rm -f "$DESTDIR$target"
          removed=$((removed + 1))
        else
          echo "kept $target: it differs from the example Reef installed (the operator's now)"
        fi
        ;;
      dir) dirs+=("$rest") ;;
      *) die "unreadable manifest line in $path: $kind $rest" ;;
    esac
  done <"$path"
  rm -f "$path"
  # Deepest first; a directory that still holds something (an operator's file) stays.
  local d
  while IFS= read -r d; do
    if [[ -n $d ]]; then
      rmdir "$DESTDIR$d" 2>/dev/null || true
    fi
  done < <(printf '%s\n' "${dirs[@]}" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
  echo "removed Reef ($removed files)"
  if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
    systemctl daemon-reload
  fi
}

case $mode in
  install) install_all ;;
  uninstall) uninstall_all ;;
esac
