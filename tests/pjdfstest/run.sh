#!/usr/bin/env bash
# Runs pjdfstest against a fresh dsfs mount of the embedded default and fails on any failure
# not listed in tests/pjdfstest/pjdfstest.toml's expected_failures (or any unexpected pass).
# Needs root (pjdfstest switches users), the `pjdfstest` binary (cargo install pjdfstest), and
# the users named in the config: nobody/nogroup (Debian's) and `tests` (created here).
# Usage: tests/pjdfstest/run.sh [path/to/dsfs]   (default: target/release/dsfs)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dsfs="${1:-$here/../../target/release/dsfs}"
dsfs="$(cd "$(dirname "$dsfs")" && pwd)/$(basename "$dsfs")"
command -v pjdfstest >/dev/null || { echo "pjdfstest not found: cargo install pjdfstest" >&2; exit 1; }
getent group tests >/dev/null || groupadd tests
id tests >/dev/null 2>&1 || useradd -M -N -g tests -s /usr/sbin/nologin tests

work="$(mktemp -d /var/tmp/dsfs-pjdfstest.XXXXXX)"
mnt="$work/mnt"
# mktemp makes the directory 0700; pjdfstest's other users must be able to reach the mount.
chmod 755 "$work"
mkdir -p "$mnt"
cleanup() {
    cd /
    if grep -qs " $mnt " /proc/self/mountinfo; then
        "$dsfs" umount "$mnt" || fusermount3 -u -z "$mnt" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
# allow_other: pjdfstest runs parts of its cases as other users.
"$dsfs" mount --create "$work/repo" "$mnt" -o allow_other --log "$work/dsfs.log"
cd "$mnt"
set +e
pjdfstest -c "$here/pjdfstest.toml" -p "$mnt" > "$work/out.txt" 2>&1
status=$?
set -e
grep -E "FAILED|Summary" "$work/out.txt" || true
if [ $status -ne 0 ]; then
    echo "pjdfstest failed (status $status); the full output follows" >&2
    cat "$work/out.txt" >&2
    exit 1
fi
