#!/bin/sh
# The container of the local cluster's pod runner, set up inside the container's own new mount
# namespace (the runner starts it as `unshare --mount --propagation private sh container-init.sh`,
# inside the pod's network and UTS namespaces), then exec'ed into the container's own command.
#
#   container-init.sh SPEC -- COMMAND [ARG...]
#
# SPEC holds one instruction per line (paths have no blanks; the runner checks):
#   root DIR               build the container's root file system under DIR: a copy-on-write overlay
#                          of the machine's / (the "image"), with /proc, /dev and /sys, writes going to
#                          a tmpfs, so mount points and files the container creates never touch the host
#   bind SRC DST ro|rw     a volume: SRC bind-mounted on DST inside the root (created when missing)
#   file SRC DST           a file bind-mounted on DST (e.g. /etc/resolv.conf)
#   dns DIR                DIR (holding `hosts`, rewritten atomically by the cluster) mounted on
#                          /etc/rmsg-local-dns, and /etc/hosts a symlink into it
#   hostname NAME          /etc/hostname of the root
#   workdir DIR            the working directory of COMMAND
#   reach PATH             every directory above PATH made traversable (o+x) in the container's root
#                          (the copy-on-write layer only): the image's interpreter is usable by its user
#   readonly               the root file system read-only (securityContext.readOnlyRootFilesystem);
#                          the volumes stay as they are mounted
#   user UID GID GROUPS FLAGS  COMMAND runs as UID:GID with the supplementary GROUPS (comma-separated,
#                          or - for none), through setpriv (which sets the parent-death signal KILL
#                          again); FLAGS (comma-separated, or -): nnp (no new privileges), dropall (no
#                          capabilities at all)
# The environment of COMMAND is this script's environment, as the runner gave it.
set -eu
spec="$1"
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "container-init: no command" >&2; exit 127; }

root=""
workdir="/"
privs=""
readonly_root=0
while read -r kind a b c d; do
  case "$kind" in
    ""|"#"*) continue ;;
    root)
      mkdir -p "$a/scratch" "$a/rootfs"
      mount -t tmpfs -o mode=0755 rmsg-local-scratch "$a/scratch"
      mkdir -p "$a/scratch/upper" "$a/scratch/work"
      mount -t overlay rmsg-local-root -o "lowerdir=/,upperdir=$a/scratch/upper,workdir=$a/scratch/work" "$a/rootfs"
      root="$a/rootfs"
      mount -t proc proc "$root/proc"
      mount --rbind /dev "$root/dev"
      mount --rbind /sys "$root/sys"
      ;;
    bind)
      [ -n "$root" ] || { echo "container-init: bind before root" >&2; exit 126; }
      if [ -d "$a" ]; then mkdir -p "$root$b"; else mkdir -p "$(dirname "$root$b")"; : >>"$root$b"; fi
      mount --bind "$a" "$root$b"
      if [ "$c" = ro ]; then mount -o remount,bind,ro "$root$b"; fi
      ;;
    file)
      mkdir -p "$(dirname "$root$b")"
      rm -f "$root$b"
      : >"$root$b"
      mount --bind "$a" "$root$b"
      ;;
    dns)
      mkdir -p "$root/etc/rmsg-local-dns"
      mount --bind "$a" "$root/etc/rmsg-local-dns"
      rm -f "$root/etc/hosts"
      ln -s rmsg-local-dns/hosts "$root/etc/hosts"
      ;;
    hostname)
      printf '%s\n' "$a" >"$root/etc/hostname"
      ;;
    workdir)
      workdir="$a"
      mkdir -p "$root$a"
      ;;
    reach)
      d="$(dirname "$a")"
      while [ "$d" != / ]; do chmod o+x "$root$d"; d="$(dirname "$d")"; done
      ;;
    readonly)
      readonly_root=1
      ;;
    user)
      # --pdeathsig again: changing user clears the one the runner set (the container would outlive it)
      privs="--reuid=$a --regid=$b --pdeathsig KILL"
      if [ "$c" = - ]; then privs="$privs --clear-groups"; else privs="$privs --groups=$c"; fi
      case ",$d," in *,nnp,*) privs="$privs --no-new-privs" ;; esac
      case ",$d," in *,dropall,*) privs="$privs --bounding-set=-all --inh-caps=-all" ;; esac
      ;;
    *)
      echo "container-init: unknown instruction $kind" >&2
      exit 126
      ;;
  esac
done <"$spec"
[ -n "$root" ] || { echo "container-init: no root" >&2; exit 126; }
if [ "$readonly_root" = 1 ]; then mount -o remount,ro "$root"; fi
if [ -n "$privs" ]; then
  # shellcheck disable=SC2086 # $privs is a list of options
  exec unshare --root="$root" --wd="$workdir" -- setpriv $privs -- "$@"
fi
exec unshare --root="$root" --wd="$workdir" -- "$@"
