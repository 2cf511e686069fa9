#!/bin/sh
# Installs the dsfs mount helpers:
#
#   /sbin/mount.dsfs                      the mount(8) helper (mount -t dsfs, fstab type dsfs)
#   /sbin/mount.fuse.dsfs -> mount.dsfs   the same for the type fuse.dsfs
#   /etc/systemd/system/dsfs@.service     the systemd template unit
#   /etc/dsfs/example.conf                its example configuration (an existing one is kept)
#   /usr/local/bin/dsfs                   only with --dsfs FILE
#
# usage: install.sh [--prefix DIR] [--dsfs FILE] [--dry-run]
#   --prefix DIR  install under DIR instead of / (for packaging or a test)
#   --dsfs FILE   also install this dsfs binary as /usr/local/bin/dsfs
#   --dry-run     print what would be done, change nothing
#
# Running it again is harmless: files that are already up to date are left alone. When it
# changed the unit on a running systemd (and --prefix is /), it runs 'systemctl daemon-reload'.

set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=
dry=0
dsfs_bin=

die() {
    printf 'install.sh: %s\n' "$1" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix)
            [ $# -ge 2 ] || die "--prefix needs a directory"
            prefix=$2
            shift 2
            ;;
        --prefix=*)
            prefix=${1#--prefix=}
            shift
            ;;
        --dsfs)
            [ $# -ge 2 ] || die "--dsfs needs a file"
            dsfs_bin=$2
            shift 2
            ;;
        --dsfs=*)
            dsfs_bin=${1#--dsfs=}
            shift
            ;;
        --dry-run | -n)
            dry=1
            shift
            ;;
        -h | --help)
            sed -n '2,16s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *) die "unknown argument '$1' (usage: install.sh [--prefix DIR] [--dsfs FILE] [--dry-run])" ;;
    esac
done
prefix=${prefix%/}
if [ -n "$dsfs_bin" ] && [ ! -x "$dsfs_bin" ]; then
    die "--dsfs $dsfs_bin: not an executable file"
fi
for f in mount.dsfs dsfs@.service dsfs-example.conf; do
    [ -f "$here/$f" ] || die "$here/$f is missing"
done

run() {
    if [ "$dry" -eq 1 ]; then
        printf 'would run: %s\n' "$*"
    else
        "$@"
    fi
}

# install_file SOURCE DEST MODE [keep]: copies SOURCE to DEST unless DEST already has the same
# contents and mode; with "keep", an existing DEST is never replaced. Sets changed=1 if it
# changed something (or would have), else changed=0.
install_file() {
    src=$1
    dest=$prefix$2
    mode=$3
    changed=0
    if [ -e "$dest" ] || [ -L "$dest" ]; then
        if [ "${4:-}" = keep ]; then
            echo "kept $dest (it exists)"
            return 0
        fi
        if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" &&
            [ "$(stat -c %a "$dest")" = "$mode" ]; then
            echo "unchanged $dest"
            return 0
        fi
    fi
    run mkdir -p "$(dirname "$dest")" || die "cannot create $(dirname "$dest")"
    run install -m "$mode" "$src" "$dest" || die "cannot install $dest"
    [ "$dry" -eq 1 ] || echo "installed $dest"
    changed=1
}

# install_link TARGET DEST: makes DEST a symbolic link to TARGET.
install_link() {
    dest=$prefix$2
    if [ -L "$dest" ] && [ "$(readlink "$dest")" = "$1" ]; then
        echo "unchanged $dest -> $1"
        return 0
    fi
    if [ -e "$dest" ] && [ ! -L "$dest" ]; then
        die "$dest exists and is not a link: remove it first"
    fi
    run mkdir -p "$(dirname "$dest")" || die "cannot create $(dirname "$dest")"
    run ln -sfn "$1" "$dest" || die "cannot link $dest"
    [ "$dry" -eq 1 ] || echo "linked $dest -> $1"
}

install_file "$here/mount.dsfs" /sbin/mount.dsfs 755
install_link mount.dsfs /sbin/mount.fuse.dsfs
install_file "$here/dsfs@.service" /etc/systemd/system/dsfs@.service 644
changed_unit=$changed
install_file "$here/dsfs-example.conf" /etc/dsfs/example.conf 644 keep
if [ -n "$dsfs_bin" ]; then
    install_file "$dsfs_bin" /usr/local/bin/dsfs 755
fi

if [ "$changed_unit" -eq 1 ] && [ -z "$prefix" ] && [ -d /run/systemd/system ] &&
    command -v systemctl >/dev/null 2>&1; then
    run systemctl daemon-reload
fi
if [ -z "$dsfs_bin" ] && ! command -v dsfs >/dev/null 2>&1 &&
    [ ! -x "$prefix/usr/local/bin/dsfs" ]; then
    echo "note: no dsfs binary on PATH or in $prefix/usr/local/bin: install one (--dsfs FILE)"
fi
