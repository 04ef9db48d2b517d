/*
 * coredump-helper: the kernel's core_pattern pipe target. Hands each core to the node agent.
 *
 * The agent installs this static binary as HOSTDIR/coredump-helper and sets
 *
 *     kernel.core_pattern = |HOSTDIR/coredump-helper %P %p %I %i %s %t %c %d %C %u %g %h %e
 *
 * The kernel runs it as root in the host's initial namespaces, cwd "/", with an almost empty
 * environment and its stdin being the core (a pipe). Stdout and stderr go nowhere, so it logs
 * one line per crash to HOSTDIR/helper.log (rotated to helper.log.1 past log_max_bytes). The
 * host may have no shell and no Python (COS, Bottlerocket, Flatcar): everything is done here.
 *
 * 1. HOSTDIR is the directory of argv[0] (the kernel passes the absolute path from the
 *    pattern), else of /proc/self/exe. Settings come from HOSTDIR/helper.conf ("key=value"
 *    lines written by the agent at install), so changing a timeout needs no recompilation.
 * 2. The stdin pipe is enlarged to 4 MiB, else 1 MiB (F_SETPIPE_SZ, best effort; the kernel runs
 *    us with every capability, so fs.pipe-max-size need not bind us): the default 64 KiB pipe
 *    halves the throughput of large cores, and the agent, which may not raise it, keeps ours.
 * 3. Protocol with the agent over HOSTDIR/agent.sock, a SOCK_SEQPACKET unix socket (message
 *    boundaries for free, so each step is exactly one message and a file descriptor travels
 *    with a known message; a closed peer reads as EOF):
 *       helper -> agent  "CDH/1\0" ARG1 "\0" ARG2 "\0" ...   (argv[1..], the kernel's values)
 *       agent  -> helper "ACK"                                (the agent has room for it)
 *       helper -> agent  "FD" + SCM_RIGHTS(stdin)             (from here the agent owns the core)
 *       agent  -> helper one text line with the outcome       (only logged)
 *    The fd is sent only after the ACK. If the ACK does not come within ack_timeout_ms, the
 *    helper closes the socket (the agent then reads EOF instead of "FD" and drops the
 *    connection) and spools: the core is never read by two parties.
 * 4. Spool (agent unreachable, refused, or too slow to ACK): HOSTDIR/spool/NAME.tmp/ with
 *    "args" (argv[1..], each NUL-terminated), "core" (stdin, spliced pipe -> file, or large
 *    reads) and "reason" (one line), and, read while the process is still pinned, "cgroup",
 *    "environ" (its COREDUMP_* items), "exe" and "root" (link targets) so the agent can resolve
 *    the pod later; all fsynced, then renamed to HOSTDIR/spool/NAME (atomic; the agent only
 *    delivers complete names). Stdin is closed, releasing the crashing process, as soon as the
 *    core is in the file: the zero 4 KiB blocks are punched out (holes) and the file fsynced
 *    after that. NAME is "<epoch>-<%P>[-n]". The core is skipped
 *    (args and reason kept) when the spool already holds spool_max_bytes or the filesystem has
 *    less than spool_keep_free_bytes free, and cut at whichever limit is reached first.
 *
 * Kernel fact this relies on (fs/coredump.c, wait_for_dump_helpers): with core_pipe_limit > 0
 * the dumping task waits until every OTHER reader of the pipe has closed it. The fd passed with
 * SCM_RIGHTS is the same open pipe, so after handing it over the crashing process stays pinned
 * (and /proc/<pid> readable) until the AGENT closes its copy: this helper exiting does not
 * release it, and the agent enforces the dump timeout itself (checked on kernel 6.18 by
 * tests/test_agent_kernel.py::test_a_hung_handler_is_cut_and_the_process_released: the helper
 * has exited, the process stays until the agent drops its fd). This helper never hangs: every
 * wait has a socket timeout and a timer (setitimer, alarm-style) bounds each phase.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Keep in sync with webhook/agent/install.py and webhook/agent/server.py. */
#define PROTO_HELLO "CDH/1"
#define PROTO_ACK "ACK"
#define PROTO_FD "FD"
#define SOCKET_NAME "agent.sock"
#define CONFIG_NAME "helper.conf"
#define LOG_NAME "helper.log"
#define SPOOL_NAME "spool"

#define PIPE_SIZE (4 << 20)
#define PIPE_SIZE_FALLBACK (1 << 20)
#define IO_CHUNK (1 << 20)
#define SPLICE_MAX (16 << 20) /* one splice moves at most what the pipe holds */
#define HOLE_BLOCK 4096
#define MAX_MSG 8192

struct config {
    long long ack_timeout_ms;      /* wait for the agent's ACK, then spool */
    long long outcome_timeout_ms;  /* wait for the outcome line after handing over (log only) */
    long long spool_timeout_ms;    /* bound on streaming a core into the spool */
    long long spool_max_bytes;     /* total size of the spool directory */
    long long spool_keep_free_bytes; /* free space to leave on the spool's filesystem */
    long long log_max_bytes;       /* helper.log is rotated past this size */
};

/* Shorter than PATH_MAX so HOSTDIR/<any of our names> always fits a PATH_MAX buffer. */
#define HOST_DIR_MAX 3072
static char host_dir[HOST_DIR_MAX];
static struct config cfg = {
    .ack_timeout_ms = 30000,
    .outcome_timeout_ms = 630000,
    .spool_timeout_ms = 300000,
    .spool_max_bytes = 4LL << 30,
    .spool_keep_free_bytes = 1LL << 30,
    .log_max_bytes = 1 << 20,
};
static volatile sig_atomic_t alarmed;
static char io_buf[IO_CHUNK];

static void on_alarm(int sig)
{
    (void)sig;
    alarmed = 1;
}

/* Arm a one-shot alarm for a phase; syscalls it interrupts fail with EINTR (no SA_RESTART). */
static void arm(long long ms)
{
    struct itimerval it;
    memset(&it, 0, sizeof it);
    if (ms < 1)
        ms = 1;
    it.it_value.tv_sec = ms / 1000;
    it.it_value.tv_usec = (ms % 1000) * 1000;
    alarmed = 0;
    setitimer(ITIMER_REAL, &it, NULL);
}

static void path_in(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", host_dir, name);
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR && !alarmed)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copy a value into a log line, replacing control characters so one crash is one line. */
static void clean(char *dst, size_t size, const char *src)
{
    size_t i = 0;
    for (; src && *src && i + 1 < size; src++)
        dst[i++] = ((unsigned char)*src < 0x20 || *src == 0x7f) ? '?' : *src;
    dst[i] = '\0';
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Append one line to HOSTDIR/helper.log with a UTC timestamp; rotate it when too big. */
static void log_line(const char *fmt, ...)
{
    char path[PATH_MAX], old[PATH_MAX + 8], line[2048];
    struct stat st;
    time_t now = time(NULL);
    struct tm tm;
    size_t n;
    va_list ap;
    int fd;

    path_in(path, sizeof path, LOG_NAME);
    if (stat(path, &st) == 0 && cfg.log_max_bytes > 0 && st.st_size > cfg.log_max_bytes) {
        snprintf(old, sizeof old, "%s.1", path);
        rename(path, old); /* two helpers racing here only lose a rotation, never a line */
    }
    gmtime_r(&now, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%SZ ", &tm);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    n = strlen(line);
    line[n++] = '\n';
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return;
    if (write_all(fd, line, n) < 0) {
        /* nothing else to tell: the kernel discards our stderr */
    }
    close(fd);
}

static void find_host_dir(const char *argv0)
{
    char exe[PATH_MAX];
    const char *src = NULL;
    char *slash;
    ssize_t n;

    if (argv0 && argv0[0] == '/') {
        src = argv0;
    } else {
        n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            src = exe;
        }
    }
    if (!src || strlen(src) >= sizeof host_dir) {
        strcpy(host_dir, "/var/lib/coredump-webhook");
        return;
    }
    strcpy(host_dir, src);
    slash = strrchr(host_dir, '/');
    if (slash == host_dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
}

static void read_config(void)
{
    char path[PATH_MAX], buf[4096];
    char *line, *save = NULL;
    ssize_t n;
    int fd;

    path_in(path, sizeof path, CONFIG_NAME);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* the defaults above */
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '='), *end;
        long long v;
        if (!eq || line[0] == '#')
            continue;
        *eq = '\0';
        errno = 0;
        v = strtoll(eq + 1, &end, 10);
        if (errno || end == eq + 1 || v < 0)
            continue;
        if (!strcmp(line, "ack_timeout_ms"))
            cfg.ack_timeout_ms = v;
        else if (!strcmp(line, "outcome_timeout_ms"))
            cfg.outcome_timeout_ms = v;
        else if (!strcmp(line, "spool_timeout_ms"))
            cfg.spool_timeout_ms = v;
        else if (!strcmp(line, "spool_max_bytes"))
            cfg.spool_max_bytes = v;
        else if (!strcmp(line, "spool_keep_free_bytes"))
            cfg.spool_keep_free_bytes = v;
        else if (!strcmp(line, "log_max_bytes"))
            cfg.log_max_bytes = v;
    }
}

/* The kernel may start us with fds 1 and 2 closed: keep them taken so no socket or file we
 * open becomes "stderr". */
static void guard_std_fds(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        int n = open("/dev/null", O_RDWR);
        if (n < 0)
            n = open("/", O_RDONLY | O_DIRECTORY);
        if (n >= 0 && n != fd) {
            dup2(n, fd);
            close(n);
        }
    }
}

/* Why a socket wait failed: a timeout (socket option or the phase's alarm) or errno's text. */
static const char *wait_error(void)
{
    return (errno == EAGAIN || errno == EWOULDBLOCK || alarmed) ? "timed out" : strerror(errno);
}

/* Append argv[1..] to buf at len, each with its NUL, stopping before the first that does not
 * fit. Returns the new length; *complete says whether every argument fit. */
static size_t pack_args(char *buf, size_t size, size_t len, int argc, char **argv, int *complete)
{
    *complete = 1;
    for (int i = 1; i < argc; i++) {
        size_t a = strlen(argv[i]) + 1;
        if (len + a > size) {
            *complete = 0;
            break;
        }
        memcpy(buf + len, argv[i], a);
        len += a;
    }
    return len;
}

static void set_timeouts(int sock, long long ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    if (tv.tv_sec == 0 && tv.tv_usec == 0)
        tv.tv_usec = 1000;
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/*
 * Hand the core to the agent. Returns 1 when the agent took the fd (then *outcome holds its
 * answer, or a note that none came), 0 when the caller must spool (*why says why).
 */
static int hand_over(int argc, char **argv, char *outcome, size_t outcome_size, char *why, size_t why_size)
{
    struct sockaddr_un addr;
    char msg[MAX_MSG];
    size_t len;
    ssize_t n;
    int sock, complete;

    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if ((size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s", host_dir, SOCKET_NAME) >=
        sizeof addr.sun_path) {
        snprintf(why, why_size, "socket path too long");
        return 0;
    }
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        snprintf(why, why_size, "socket: %s", strerror(errno));
        return 0;
    }
    set_timeouts(sock, cfg.ack_timeout_ms);
    arm(cfg.ack_timeout_ms + 1000);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        snprintf(why, why_size, "agent unreachable: connect: %s", alarmed ? "timed out" : strerror(errno));
        close(sock);
        return 0;
    }

    memcpy(msg, PROTO_HELLO, sizeof PROTO_HELLO); /* with its NUL */
    len = pack_args(msg, sizeof msg, sizeof PROTO_HELLO, argc, argv, &complete);
    if (!complete) {
        snprintf(why, why_size, "arguments too long");
        close(sock);
        return 0;
    }
    if (send(sock, msg, len, MSG_NOSIGNAL) != (ssize_t)len) {
        snprintf(why, why_size, "agent unreachable: send: %s", strerror(errno));
        close(sock);
        return 0;
    }
    n = recv(sock, msg, sizeof msg - 1, 0);
    if (n != (ssize_t)strlen(PROTO_ACK) || memcmp(msg, PROTO_ACK, strlen(PROTO_ACK)) != 0) {
        if (n < 0)
            snprintf(why, why_size, "no ACK from the agent: %s", wait_error());
        else
            snprintf(why, why_size, "no ACK from the agent: %s", n == 0 ? "connection closed" : "bad answer");
        close(sock); /* the agent reads EOF instead of "FD": it never gets the core */
        return 0;
    }

    /* Commit: from here the core belongs to the agent, even if the rest fails. */
    {
        struct msghdr mh;
        struct iovec iov = {.iov_base = (void *)PROTO_FD, .iov_len = strlen(PROTO_FD)};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } ctl;
        struct cmsghdr *cm;
        int fd0 = 0;

        memset(&mh, 0, sizeof mh);
        memset(&ctl, 0, sizeof ctl);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd0, sizeof fd0);
        if (sendmsg(sock, &mh, MSG_NOSIGNAL) != (ssize_t)strlen(PROTO_FD)) {
            /* The agent acknowledged but the fd did not go: the core is still only ours. */
            snprintf(why, why_size, "could not pass the core to the agent: %s", strerror(errno));
            close(sock);
            return 0;
        }
    }
    /* Our copy of the pipe must not keep the crashing process pinned: only the agent's does. */
    close(0);

    set_timeouts(sock, cfg.outcome_timeout_ms);
    arm(cfg.outcome_timeout_ms + 1000);
    n = recv(sock, msg, sizeof msg - 1, 0);
    if (n > 0) {
        msg[n] = '\0';
        clean(outcome, outcome_size, msg);
    } else if (n == 0) {
        snprintf(outcome, outcome_size, "no outcome: the agent closed the connection");
    } else {
        snprintf(outcome, outcome_size, "no outcome: %s", wait_error());
    }
    close(sock);
    return 1;
}

/* Bytes held by the spool: the files one level down (HOSTDIR/spool/ENTRY/FILE). */
static long long spool_usage(int spool_fd)
{
    long long total = 0;
    int dfd = dup(spool_fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *e;

    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        int sub;
        DIR *sd;
        struct dirent *f;
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        sub = openat(spool_fd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sub < 0)
            continue;
        sd = fdopendir(sub);
        if (!sd) {
            close(sub);
            continue;
        }
        while ((f = readdir(sd)) != NULL)
            if (f->d_name[0] != '.' && fstatat(sub, f->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
                total += (long long)st.st_blocks * 512;
        closedir(sd);
    }
    closedir(d);
    return total;
}

static int write_file_at(int dir, const char *name, const char *data, size_t len)
{
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc;
    if (fd < 0)
        return -1;
    rc = write_all(fd, data, len);
    if (fsync(fd) < 0)
        rc = -1;
    close(fd);
    return rc;
}

/* Stream stdin into fd, at most `limit` bytes. Returns bytes written; sets *eof / *err. */
static long long copy_core(int out, long long limit, int *eof, int *err)
{
    long long done = 0;
    int use_splice = 1;

    *eof = 0;
    *err = 0;
    while (done < limit && !alarmed) {
        long long chunk = use_splice ? SPLICE_MAX : IO_CHUNK;
        size_t want = (size_t)((limit - done) < chunk ? (limit - done) : chunk);
        ssize_t n;
        if (use_splice) {
            n = splice(0, NULL, out, NULL, want, SPLICE_F_MOVE | SPLICE_F_MORE);
            if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
                use_splice = 0; /* stdin is not a pipe (a test feeding a file): plain reads */
                continue;
            }
        } else {
            n = read(0, io_buf, want);
            if (n > 0 && write_all(out, io_buf, (size_t)n) < 0) {
                *err = errno;
                return done;
            }
        }
        if (n == 0) {
            *eof = 1;
            return done;
        }
        if (n < 0) {
            if (errno == EINTR && !alarmed)
                continue;
            *err = alarmed ? ETIMEDOUT : errno;
            return done;
        }
        done += n;
    }
    if (alarmed)
        *err = ETIMEDOUT;
    return done;
}

/* Copy up to `max` bytes of `path` into the entry as `name`; with `prefix`, only the NUL-separated
 * items starting with it (the registration in an environ). Best effort: a missing file is skipped. */
static void record_file(int entry, const char *name, const char *path, size_t max, const char *prefix)
{
    ssize_t n;
    size_t len = 0, out = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return;
    while (len < max && (n = read(fd, io_buf + len, max - len)) > 0)
        len += (size_t)n;
    close(fd);
    if (prefix) { /* keep only PREFIX... items, compacted in place */
        size_t plen = strlen(prefix);
        for (size_t i = 0; i < len;) {
            size_t item = strnlen(io_buf + i, len - i);
            if (item >= plen && memcmp(io_buf + i, prefix, plen) == 0) {
                memmove(io_buf + out, io_buf + i, item);
                out += item;
                io_buf[out++] = '\0';
            }
            i += item + 1;
        }
        len = out;
    }
    write_file_at(entry, name, io_buf, len);
}

/* Copy a symlink's target (e.g. /proc/PID/exe) into the entry as `name`. */
static void record_link(int entry, const char *name, const char *path)
{
    char target[PATH_MAX];
    ssize_t n = readlink(path, target, sizeof target);
    if (n > 0)
        write_file_at(entry, name, target, (size_t)n);
}

/* While the crashing process is pinned (we hold its core pipe), keep who it was: its cgroup (pod
 * UID, container ID), its registration (COREDUMP_* environment), its executable and root, so the
 * agent can later resolve the pod through its pod watch and name the core as the kernel would. */
static void record_process(int entry, const char *pid)
{
    char path[64];

    for (const char *p = pid; *p; p++)
        if (*p < '0' || *p > '9')
            return;
    snprintf(path, sizeof path, "/proc/%s/cgroup", pid);
    record_file(entry, "cgroup", path, 64 << 10, NULL);
    snprintf(path, sizeof path, "/proc/%s/environ", pid);
    record_file(entry, "environ", path, IO_CHUNK, "COREDUMP_");
    snprintf(path, sizeof path, "/proc/%s/exe", pid);
    record_link(entry, "exe", path);
    snprintf(path, sizeof path, "/proc/%s/root", pid);
    record_link(entry, "root", path);
}

static int all_zero(const char *p, size_t len)
{
    return p[0] == 0 && memcmp(p, p + 1, len - 1) == 0;
}

/* After the release: give the zero blocks of the spooled core back (holes; it reads the same).
 * The core arrives with its zero pages as real bytes and splice never looked at them. */
static void punch_zero_blocks(int fd, long long size)
{
    long long off = 0, run = -1;
    int ok = 1;

    while (off < size && ok && !alarmed) {
        ssize_t n = pread(fd, io_buf, IO_CHUNK, off), i;
        if (n <= 0)
            break;
        for (i = 0; i + HOLE_BLOCK <= n && ok; i += HOLE_BLOCK) {
            if (all_zero(io_buf + i, HOLE_BLOCK)) {
                if (run < 0)
                    run = off + i;
            } else if (run >= 0) {
                ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, run, off + i - run) == 0;
                run = -1;
            }
        }
        off += n;
        if (n % HOLE_BLOCK)
            break; /* a partial last block stays data */
    }
    if (ok && run >= 0)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, run, (off & ~(long long)(HOLE_BLOCK - 1)) - run);
}

/* Spool the core and its arguments for the agent to deliver later. */
static void spool(int argc, char **argv, const char *why)
{
    char spool_path[PATH_MAX], name[128], tmp[160], args[MAX_MSG], reason[1024], pidbuf[32];
    size_t alen;
    int spool_fd, entry, core_fd, complete;
    long long budget, written = 0, used;
    struct statvfs vfs;
    int eof = 0, err = 0, n;
    const char *status = "spooled";

    arm(cfg.spool_timeout_ms);
    path_in(spool_path, sizeof spool_path, SPOOL_NAME);
    mkdir(spool_path, 0700);
    spool_fd = open(spool_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (spool_fd < 0) {
        log_line("result=lost pid=%s reason=\"%s; cannot open spool: %s\"", argc > 1 ? argv[1] : "?", why,
                 strerror(errno));
        return;
    }

    /* Name: <epoch>-<%P digits>[-n], unique among concurrent helpers by mkdir's O_EXCL. */
    clean(pidbuf, sizeof pidbuf, argc > 1 ? argv[1] : "0");
    for (char *p = pidbuf; *p; p++)
        if (*p < '0' || *p > '9')
            *p = '_';
    for (n = 0;; n++) {
        if (n == 0)
            snprintf(name, sizeof name, "%lld-%s", (long long)time(NULL), pidbuf);
        else
            snprintf(name, sizeof name, "%lld-%s-%d", (long long)time(NULL), pidbuf, n);
        snprintf(tmp, sizeof tmp, "%s.tmp", name);
        if (mkdirat(spool_fd, tmp, 0700) == 0) {
            /* Checked after taking NAME.tmp: NAME can only appear through whoever holds it. */
            if (faccessat(spool_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) != 0)
                break;
            unlinkat(spool_fd, tmp, AT_REMOVEDIR);
            errno = EEXIST;
        }
        if (errno != EEXIST || n > 1000) {
            log_line("result=lost pid=%s reason=\"%s; mkdir spool entry: %s\"", pidbuf, why, strerror(errno));
            close(spool_fd);
            return;
        }
    }
    entry = openat(spool_fd, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (entry < 0) {
        log_line("result=lost pid=%s reason=\"%s; open spool entry: %s\"", pidbuf, why, strerror(errno));
        close(spool_fd);
        return;
    }

    alen = pack_args(args, sizeof args, 0, argc, argv, &complete); /* the hello's arguments (what fits) */
    write_file_at(entry, "args", args, alen);
    if (argc > 1)
        record_process(entry, argv[1]); /* %P: still pinned, its /proc entry still there */

    used = spool_usage(spool_fd);
    budget = cfg.spool_max_bytes - used;
    if (fstatvfs(spool_fd, &vfs) == 0) {
        long long free_bytes = (long long)vfs.f_bavail * (long long)vfs.f_frsize - cfg.spool_keep_free_bytes;
        if (free_bytes < budget)
            budget = free_bytes;
    }
    if (budget <= 0) {
        snprintf(reason, sizeof reason, "%s; core not spooled: spool full (%lld bytes used, max %lld, keep free %lld)",
                 why, used, cfg.spool_max_bytes, cfg.spool_keep_free_bytes);
        status = "spooled-without-core";
    } else {
        core_fd = openat(entry, "core", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (core_fd < 0) {
            snprintf(reason, sizeof reason, "%s; core not spooled: %s", why, strerror(errno));
            status = "spooled-without-core";
        } else {
            written = copy_core(core_fd, budget, &eof, &err);
            /* The core is in the page cache: release the crashing process before the rest. */
            close(0);
            arm(cfg.spool_timeout_ms); /* the holes and the fsync get their own bound */
            punch_zero_blocks(core_fd, written);
            alarmed = 0;
            if (fsync(core_fd) < 0 && !err)
                err = errno;
            close(core_fd);
            if (eof && !err) {
                snprintf(reason, sizeof reason, "%s", why);
            } else if (err) {
                snprintf(reason, sizeof reason, "%s; core truncated at %lld bytes: %s", why, written,
                         err == ETIMEDOUT ? "spool timeout" : strerror(err));
                status = "spooled-truncated";
            } else {
                snprintf(reason, sizeof reason, "%s; core truncated at %lld bytes: spool limit", why, written);
                status = "spooled-truncated";
            }
        }
    }
    /* Closing stdin now (not at exit) releases the crashing process as early as possible. */
    close(0);
    alarmed = 0;
    write_file_at(entry, "reason", reason, strlen(reason));
    fsync(entry);
    close(entry);
    if (renameat(spool_fd, tmp, spool_fd, name) < 0) {
        log_line("result=lost pid=%s reason=\"%s; rename spool entry: %s\"", pidbuf, reason, strerror(errno));
        close(spool_fd);
        return;
    }
    fsync(spool_fd);
    close(spool_fd);
    log_line("result=%s pid=%s entry=%s bytes=%lld reason=\"%s\"", status, pidbuf, name, written, reason);
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    char outcome[1024], why[512], comm[64], pid[32];

    guard_std_fds();
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART: a blocked syscall returns EINTR */
    signal(SIGPIPE, SIG_IGN);

    find_host_dir(argc > 0 ? argv[0] : NULL);
    read_config();
    /* best effort: fails harmlessly when stdin is a file */
    if (fcntl(0, F_SETPIPE_SZ, PIPE_SIZE) < 0)
        fcntl(0, F_SETPIPE_SZ, PIPE_SIZE_FALLBACK);

    clean(pid, sizeof pid, argc > 1 ? argv[1] : "?");
    clean(comm, sizeof comm, argc > 13 ? argv[13] : (argc > 1 ? argv[argc - 1] : "?"));
    outcome[0] = why[0] = '\0';
    if (hand_over(argc, argv, outcome, sizeof outcome, why, sizeof why)) {
        log_line("result=handed pid=%s comm=\"%s\" agent=\"%s\"", pid, comm, outcome);
        return 0;
    }
    alarmed = 0;
    spool(argc, argv, why);
    return 0;
}
