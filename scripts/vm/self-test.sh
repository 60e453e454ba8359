# Guest side of `scripts/vm-test --self-test` (busybox sh): checks that the guest is what the jobworker tests
# expect. Usage: sh self-test.sh HOST_BUILT_BINARY. Exits 3 when every check passes, so that the host also
# sees a non-zero exit status propagate; 1 on the first failed check.
set -u

fail() {
	echo "self-test: FAIL: $*"
	exit 1
}

check() {
	echo "self-test: ok: $*"
}

# busybox stat names no cgroup2 type (%T says UNKNOWN): compare the magic, CGROUP2_SUPER_MAGIC, instead.
fstype=$(stat -fc %t /sys/fs/cgroup)
[ "$fstype" = 63677270 ] || fail "/sys/fs/cgroup has filesystem type 0x$fstype, not cgroup2fs (0x63677270)"
grep -q ' cgroup ' /proc/mounts && fail "a cgroup v1 hierarchy is mounted"
check "pure cgroup v2: /sys/fs/cgroup is cgroup2fs (0x$fstype)"

controllers=" $(cat /sys/fs/cgroup/cgroup.subtree_control) "
for c in cpu memory io pids; do
	case $controllers in *" $c "*) ;; *) fail "controller $c not in the root cgroup.subtree_control:$controllers" ;; esac
done
check "root cgroup.subtree_control:$controllers"

out=$("$1") || fail "host-built binary $1 failed to run"
[ "$out" = "hello from a host-built Rust binary, cgroup 0::/" ] || fail "unexpected output from $1: $out"
check "host-built Rust binary runs: $out"

grep -q '^/dev/vda /scratch ext4 rw' /proc/mounts || fail "/dev/vda is not mounted read-write on /scratch"
[ -b /dev/vda ] || fail "/dev/vda is not a block device"
{ echo x >/scratch/probe && rm /scratch/probe; } || fail "/scratch is not writable"
check "/dev/vda ($(cat /sys/block/vda/dev)) is mounted on /scratch"

[ "$(pwd)" = "$SELFTEST_CWD" ] || fail "cwd is $(pwd), expected $SELFTEST_CWD"
touch "$SELFTEST_CWD/.vm-selftest-probe" 2>/dev/null && fail "the share $SELFTEST_CWD is writable"
check "cwd is the host's, on a read-only share"

if [ "${JOBWORKER_VM:-}" != 1 ] || [ "${JOBWORKER_SCRATCH:-}" != /scratch ]; then
	fail "JOBWORKER_VM/JOBWORKER_SCRATCH not set"
fi
check "JOBWORKER_VM=$JOBWORKER_VM JOBWORKER_SCRATCH=$JOBWORKER_SCRATCH"

[ "$(id nobody)" = "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)" ] || fail "id nobody: $(id nobody)"
for tool in /bin/sh /usr/bin/sh /bin/sleep /usr/bin/sleep /bin/dd /usr/bin/hostname; do
	[ -x "$tool" ] || fail "$tool missing"
done
check "user nobody and busybox tools present"

echo "self-test: this line goes to stderr" >&2
echo "self-test: all checks passed"
exit 3
