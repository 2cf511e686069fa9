#!/usr/bin/env bash
# A throwaway Ceph cluster on 127.0.0.1 for dsfs's RADOS tests, CI and the README's "try it".
#
#   tests/ceph/cluster.sh start [--osds N] [--dir DIR] [--pool NAME]
#       Starts 1 monitor and N OSDs (default 1; BlueStore on sparse files) in DIR (default: a new
#       temporary directory), writes DIR/ceph.conf and a keyring for client.dsfs, creates the
#       pool (size N, min_size 1), waits until a real `rados put`/`get` of 1 MiB round-trips,
#       and prints the environment the tests read (DSFS_TEST_CEPH_CONF=... lines).
#   tests/ceph/cluster.sh stop DIR [--keep]
#       Stops every daemon this script started in DIR (by the PIDs it recorded) and removes DIR
#       (unless --keep).
#   tests/ceph/cluster.sh stop-osd DIR ID | start-osd DIR ID | stop-mon DIR | start-mon DIR
#       Fault injection for the tests: stop or restart one daemon.
#   tests/ceph/cluster.sh env DIR
#       Prints the environment again.
#
# Nothing here needs systemd or a block device; the packages are Debian 12's ceph-mon, ceph-osd
# and ceph-common (16.2). No manager daemon is started: `ceph -s` then shows no placement groups,
# but I/O works, which is why readiness is a real put and get.
set -euo pipefail

# On failure, stop whatever this run started (the directory stays, for its logs).
die() {
    echo "cluster.sh: $*" >&2
    if [ -n "${DIR:-}" ] && [ -f "$DIR/pids" ]; then cmd_stop "$DIR" --keep; fi
    exit 1
}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# A free TCP port on 127.0.0.1 at or above $1.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    echo "$port"
}

conf_of() { echo "$1/ceph.conf"; }

# Runs a ceph client command as client.admin against the cluster in $DIR, bounded in time.
cephc() { timeout 60 ceph --conf "$(conf_of "$DIR")" --connect-timeout 20 "$@"; }

record_pid() { echo "$1 $2" >>"$DIR/pids"; }

# The PID recorded for daemon $1 (the last one recorded), if it is still running.
pid_of() {
    local pid
    pid=$(awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$DIR/pids" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

start_mon() {
    setsid ceph-mon --conf "$(conf_of "$DIR")" -i a -f >>"$DIR/log/mon.a.out" 2>&1 </dev/null &
    record_pid mon.a $!
}

start_osd() {
    local id=$1
    setsid ceph-osd --conf "$(conf_of "$DIR")" -i "$id" -f >>"$DIR/log/osd.$id.out" 2>&1 </dev/null &
    record_pid "osd.$id" $!
}

# Stops daemon $1 by its recorded PID: TERM, then KILL after 20 s.
stop_daemon() {
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

print_env() {
    echo "DSFS_TEST_CEPH_DIR=$DIR"
    echo "DSFS_TEST_CEPH_CONF=$DIR/ceph.conf"
    echo "DSFS_TEST_CEPH_POOL=$(cat "$DIR/pool")"
    echo "DSFS_TEST_CEPH_ID=dsfs"
    echo "DSFS_TEST_CEPH_OSDS=$(cat "$DIR/osds")"
}

cmd_start() {
    local osds=1 pool=dsfs
    DIR=""
    while [ $# -gt 0 ]; do
        case $1 in
            --osds) osds=$2; shift 2 ;;
            --dir) DIR=$2; shift 2 ;;
            --pool) pool=$2; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ $osds =~ ^[1-9]$ ]] || die "--osds takes 1 to 9"
    for tool in ceph-mon ceph-osd ceph ceph-authtool monmaptool rados; do
        command -v "$tool" >/dev/null || die "$tool not found: apt-get install ceph-mon ceph-osd ceph-common"
    done
    if [ -z "$DIR" ]; then
        DIR=$(mktemp -d "${TMPDIR:-/tmp}/dsfs-ceph.XXXXXX")
    else
        mkdir -p "$DIR"
        [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
    fi
    DIR=$(cd "$DIR" && pwd)
    local began=$SECONDS
    mkdir -p "$DIR/mon" "$DIR/osd" "$DIR/blocks" "$DIR/run" "$DIR/log"
    : >"$DIR/pids"
    echo "$pool" >"$DIR/pool"
    echo "$osds" >"$DIR/osds"

    local fsid v2 v1
    fsid=$(cat /proc/sys/kernel/random/uuid)
    v2=$(free_port 3300)
    v1=$(free_port $((v2 + 1)))
    [ "$v1" -ne "$v2" ] || v1=$(free_port $((v2 + 1)))
    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$v2,v1:127.0.0.1:$v1]
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $DIR/keyring.\$name
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = true
osd pool default size = $osds
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd crush chooseleaf type = 0
osd memory target = 943718400
[mon]
mon data = $DIR/mon/\$name
[osd]
osd data = $DIR/osd/\$id
keyring = $DIR/osd/\$id/keyring
osd objectstore = bluestore
bluestore block path = $DIR/blocks/\$id.block
bluestore block create = true
bluestore block size = 4294967296
bluestore block db create = false
bluestore block wal create = false
osd heartbeat grace = 6
EOF

    # Keyrings: the monitors' own, the administrator's, and the OSDs' bootstrap rights.
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/keyring.client.admin" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring.client.admin" >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$v2,v1:127.0.0.1:$v1]" \
        "$DIR/monmap" >/dev/null
    ceph-mon --conf "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" \
        --keyring "$DIR/mon.keyring" >>"$DIR/log/mkfs.out" 2>&1 || die "ceph-mon --mkfs failed (see $DIR/log)"
    start_mon

    local id uuid
    for _ in $(seq "$osds"); do
        uuid=$(cat /proc/sys/kernel/random/uuid)
        id=$(cephc osd new "$uuid") || die "ceph osd new failed (see $DIR/log)"
        mkdir -p "$DIR/osd/$id"
        ceph-authtool --create-keyring "$DIR/osd/$id/keyring" --gen-key -n "osd.$id" >/dev/null
        cephc auth add "osd.$id" osd 'allow *' mon 'allow profile osd' \
            -i "$DIR/osd/$id/keyring" >/dev/null 2>&1 || die "ceph auth add osd.$id failed"
        ceph-osd --conf "$DIR/ceph.conf" -i "$id" --mkfs --osd-uuid "$uuid" \
            >>"$DIR/log/mkfs.out" 2>&1 || die "ceph-osd --mkfs failed for osd.$id (see $DIR/log)"
        start_osd "$id"
    done

    cephc osd pool create "$pool" 8 8 >/dev/null 2>&1
    cephc osd pool set "$pool" size "$osds" --yes-i-really-mean-it >/dev/null 2>&1
    cephc osd pool set "$pool" min_size 1 >/dev/null 2>&1
    cephc osd pool application enable "$pool" dsfs >/dev/null 2>&1 || true
    cephc auth get-or-create client.dsfs mon 'allow r' osd "allow rwx pool=$pool" \
        -o "$DIR/keyring.client.dsfs" >/dev/null 2>&1

    # Ready means a real round trip through the OSDs, as the dsfs client will do it.
    head -c 1048576 /dev/urandom >"$DIR/probe.in"
    local ok=""
    for _ in $(seq 120); do
        if timeout 10 rados --conf "$DIR/ceph.conf" --id dsfs -p "$pool" put dsfs-probe "$DIR/probe.in" 2>/dev/null &&
            timeout 10 rados --conf "$DIR/ceph.conf" --id dsfs -p "$pool" get dsfs-probe "$DIR/probe.out" 2>/dev/null &&
            cmp -s "$DIR/probe.in" "$DIR/probe.out"; then
            ok=1
            break
        fi
        sleep 0.5
    done
    timeout 10 rados --conf "$DIR/ceph.conf" --id dsfs -p "$pool" rm dsfs-probe 2>/dev/null || true
    rm -f "$DIR/probe.in" "$DIR/probe.out"
    if [ -z "$ok" ]; then
        echo "cluster.sh: the cluster in $DIR did not serve a put/get within 60 s; logs:" >&2
        tail -n 20 "$DIR"/log/*.log >&2 || true
        cmd_stop "$DIR" --keep
        exit 1
    fi
    echo "cluster.sh: 1 mon + $osds OSD(s) ready in $((SECONDS - began)) s" >&2
    print_env
}

cmd_stop() {
    DIR=${1:?stop needs the cluster directory}
    local keep=${2:-}
    [ -f "$DIR/pids" ] || die "$DIR holds no cluster started by this script"
    local name
    # OSDs first (they report their shutdown to the monitor), the monitor last.
    while read -r name; do
        stop_daemon "$name"
    done < <(awk '{ print $1 }' "$DIR/pids" | sort -ru)
    if [ "$keep" != "--keep" ]; then
        rm -rf "$DIR"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    stop-osd) DIR=${1:?}; stop_daemon "osd.${2:?}" ;;
    start-osd) DIR=${1:?}; [ -z "$(pid_of "osd.${2:?}")" ] && start_osd "$2" ;;
    stop-mon) DIR=${1:?}; stop_daemon mon.a ;;
    start-mon) DIR=${1:?}; [ -z "$(pid_of mon.a)" ] && start_mon ;;
    env) DIR=${1:?}; print_env ;;
    *) usage ;;
esac
