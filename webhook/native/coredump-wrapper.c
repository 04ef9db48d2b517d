/*
 * coredump-wrapper: raise RLIMIT_CORE, optionally set coredump_filter, then exec the real program.
 *
 * The admission webhook makes every prepared container start this wrapper first:
 *
 *     coredump-wrapper PROGRAM [ARGS...]
 *
 * 1. RLIMIT_CORE: soft := hard (always permitted), then soft = hard = unlimited (needs
 *    CAP_SYS_RESOURCE, which the webhook adds; EPERM is expected without it and stays quiet).
 * 2. If COREDUMP_FILTER is set (hex "0x33" or decimal "51"), write it to
 *    /proc/self/coredump_filter; the kernel keeps it across execve. Failure only warns.
 * 3. Exec PROGRAM with ARGS exactly as given and the environment untouched. PROGRAM is looked up
 *    the way runc (and so Kubernetes) does it: a name with '/' is used as is, otherwise each $PATH
 *    element is searched ("" meaning "."), with the OCI default PATH when PATH is unset.
 *    Failures exit like a shell: 127 when not found, 126 when found but not executable.
 *
 * Install mode (the init container, running the project's image, has no shell or cp to rely on):
 *
 *     coredump-wrapper --coredump-install DEST
 *
 * copies /proc/self/exe to DEST atomically (DEST.tmp, mode 0755, fsync, rename), creating DEST's
 * directory when missing.
 *
 * Read-only service modes, so `coredump list` / `coredump get` work over the exec API in
 * containers that have no shell, find, cat or tail (the wrapper is in every prepared one):
 *
 *     coredump-wrapper --coredump-list DIR...
 *
 * prints every metadata file (a regular file named *.json) in each DIR and below it, down to
 * `find -maxdepth 8`, never following a symbolic link (openat O_NOFOLLOW|O_DIRECTORY, fstatat
 * AT_SYMLINK_NOFOLLOW); FIFOs, sockets and devices are skipped without being opened.
 * The output is length-framed so any byte may appear in a path (the parser is
 * webhook/inspect/listing.py):
 *
 *     WRAPPER_LIST_MAGIC "\n"
 *     then per file:  KIND " " PATHLEN " " BODYLEN "\n" PATH BODY "\n"
 *     then:           "end " RECORDS "\n"
 *
 * KIND "present" or "missing" (is the core next to it, PATH minus ".json", a regular file?) with
 * BODY the file's bytes; KIND "error" with BODY the reason PATH was skipped (larger than
 * LIST_MAX_JSON, unreadable, unreadable directory). Lengths are decimal byte counts. A DIR that
 * does not exist prints no records. Exit 0 unless stdout fails (2 on bad usage).
 *
 *     coredump-wrapper --coredump-cat FILE [OFFSET]
 *
 * writes FILE's bytes from OFFSET (default 0; past the end prints nothing) to stdout with
 * sendfile (read/write when stdout does not allow it). FILE must be a regular file and its last
 * component is not followed when it is a symbolic link. Exit 1 with a message on any error, 2
 * on a bad OFFSET.
 *
 * Static (no loader, no NSS, no locale files) so it runs in scratch and distroless images. It
 * leaves no trace in the exec'd program: no fd stays open, no signal disposition or mask and no
 * environment variable is changed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME "coredump-wrapper"
/* Keep in sync with webhook/constants.py. */
#define WRAPPER_INSTALL_FLAG "--coredump-install"
#define WRAPPER_LIST_FLAG "--coredump-list"
#define WRAPPER_CAT_FLAG "--coredump-cat"
#define WRAPPER_LIST_MAGIC "coredump-list/1"
#define ENV_COREDUMP_FILTER "COREDUMP_FILTER"
#define ENV_WRAPPER_DEBUG "COREDUMP_WRAPPER_DEBUG"
/* The PATH runc and containerd put in a spec when the image has none. */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define COREDUMP_FILTER_FILE "/proc/self/coredump_filter"
/* Metadata files are a few KiB: anything bigger is not ours and is skipped. */
#define LIST_MAX_JSON (1 << 20)
/* Like `find DIR -maxdepth 8`: files directly in DIR are at depth 1. */
#define LIST_MAX_DEPTH 8
#define METADATA_SUFFIX ".json"

extern char **environ;

static int debug_enabled;

static void say(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line on stderr: "coredump-wrapper: [kind: ]message". */
static void say(const char *kind, const char *fmt, ...)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "%s: %s%s", NAME, kind ? kind : "", kind ? ": " : "");
    if (n < 0 || (size_t)n >= sizeof buf)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = strlen(buf);
    buf[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t w = write(STDERR_FILENO, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

#define DEBUG(...) do { if (debug_enabled) say("debug", __VA_ARGS__); } while (0)

static void format_limit(rlim_t v, char *out, size_t size)
{
    if (v == RLIM_INFINITY)
        snprintf(out, size, "unlimited");
    else
        snprintf(out, size, "%llu", (unsigned long long)v);
}

/* Soft to hard, then both to unlimited where permitted. Never fatal. */
static void raise_core_limit(void)
{
    struct rlimit r;
    char soft[32], hard[32];
    if (getrlimit(RLIMIT_CORE, &r) != 0) {
        say("warning", "getrlimit(RLIMIT_CORE): %s", strerror(errno));
        return;
    }
    format_limit(r.rlim_cur, soft, sizeof soft);
    format_limit(r.rlim_max, hard, sizeof hard);
    DEBUG("RLIMIT_CORE before: soft=%s hard=%s", soft, hard);
    if (r.rlim_cur != r.rlim_max) {
        struct rlimit up = {r.rlim_max, r.rlim_max};
        if (setrlimit(RLIMIT_CORE, &up) != 0)
            say("warning", "raising RLIMIT_CORE soft limit to %s: %s", hard, strerror(errno));
    }
    if (r.rlim_max != RLIM_INFINITY) {
        struct rlimit inf = {RLIM_INFINITY, RLIM_INFINITY};
        if (setrlimit(RLIMIT_CORE, &inf) != 0) {
            if (errno == EPERM)
                DEBUG("RLIMIT_CORE hard limit stays %s: no CAP_SYS_RESOURCE", hard);
            else
                say("warning", "raising RLIMIT_CORE to unlimited: %s", strerror(errno));
        }
    }
    if (debug_enabled && getrlimit(RLIMIT_CORE, &r) == 0) {
        format_limit(r.rlim_cur, soft, sizeof soft);
        format_limit(r.rlim_max, hard, sizeof hard);
        DEBUG("RLIMIT_CORE after: soft=%s hard=%s", soft, hard);
    }
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * "0x33"/"0X33" is hex, all digits is decimal (leading zeros stay decimal, unlike the kernel's
 * base-0 parse), surrounding blanks are ignored. Returns 0 and sets *out, or -1.
 */
static int parse_filter(const char *s, unsigned long *out)
{
    while (is_space(*s))
        s++;
    size_t len = strlen(s);
    while (len > 0 && is_space(s[len - 1]))
        len--;
    int base = 10;
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > 16)
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return -1;
        v = v * (unsigned)base + d;
        if (v > UINT_MAX) /* the kernel parses an unsigned int */
            return -1;
    }
    *out = (unsigned long)v;
    return 0;
}

static void set_coredump_filter(void)
{
    const char *raw = getenv(ENV_COREDUMP_FILTER);
    if (raw == NULL || *raw == '\0')
        return;
    unsigned long value;
    if (parse_filter(raw, &value) != 0) {
        say("warning", "ignoring %s=\"%s\": not a hex (0x33) or decimal number", ENV_COREDUMP_FILTER, raw);
        return;
    }
    char text[32];
    int n = snprintf(text, sizeof text, "0x%lx\n", value);
    int fd = open(COREDUMP_FILTER_FILE, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        say("warning", "open %s: %s", COREDUMP_FILTER_FILE, strerror(errno));
        return;
    }
    ssize_t w;
    do
        w = write(fd, text, (size_t)n);
    while (w < 0 && errno == EINTR);
    if (w != n)
        say("warning", "write %s=0x%lx: %s", COREDUMP_FILTER_FILE, value, w < 0 ? strerror(errno) : "short write");
    else
        DEBUG("%s set to 0x%lx", COREDUMP_FILTER_FILE, value);
    close(fd);
}

/* Like Go's exec.LookPath, which runc uses: 0 if PATH names an executable regular file. */
static int executable_file(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return errno;
    if (S_ISDIR(st.st_mode))
        return EACCES;
    if (faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) != 0)
        return errno;
    return 0;
}

/*
 * Resolve PROGRAM into buf (runc's semantics). Returns 0, or an errno: ENOENT when nothing was
 * found, EACCES when a candidate exists but is not executable.
 */
static int look_path(const char *program, char *buf, size_t size)
{
    if (*program == '\0')
        return ENOENT;
    if (strchr(program, '/') != NULL) {
        if (strlen(program) >= size)
            return ENAMETOOLONG;
        strcpy(buf, program);
        return 0; /* execve reports what is wrong with it */
    }
    const char *path = getenv("PATH");
    if (path == NULL)
        path = DEFAULT_PATH;
    size_t plen = strlen(program);
    int result = ENOENT;
    const char *p = path;
    for (;;) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        const char *dir = p;
        if (dlen == 0) { /* an empty element means the current directory */
            dir = ".";
            dlen = 1;
        }
        if (dlen + 1 + plen < size) {
            memcpy(buf, dir, dlen);
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, program, plen + 1);
            int err = executable_file(buf);
            if (err == 0)
                return 0;
            if (err == EACCES || err == EPERM)
                result = EACCES;
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    return result;
}

static int exit_code_for(int err)
{
    return (err == ENOENT || err == ENOTDIR) ? 127 : 126;
}

static int run(char **argv)
{
    raise_core_limit();
    set_coredump_filter();
    char path[PATH_MAX];
    int err = look_path(argv[0], path, sizeof path);
    if (err == 0) {
        DEBUG("exec %s", path);
        execve(path, argv, environ);
        err = errno;
    }
    say(NULL, "exec %s: %s", argv[0], strerror(err));
    return exit_code_for(err);
}

/* mkdir -p for DEST's parent directory. */
static int make_parents(const char *dest)
{
    char dir[PATH_MAX];
    if (strlen(dest) >= sizeof dir) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(dir, dest);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return 0;
}

/* Wait until a non-blocking fd can take more (a runtime may hand us such a stdout pipe). */
static void wait_writable(int fd)
{
    struct pollfd p = {fd, POLLOUT, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR)
        ;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            wait_writable(fd);
            continue;
        }
        if (w < 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

static int copy_all(int in, int out)
{
    char buf[65536];
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 0;
        if (write_all(out, buf, (size_t)r) != 0)
            return -1;
    }
}

static int install(const char *self, const char *dest)
{
    char tmp[PATH_MAX];
    if (*dest == '\0' || snprintf(tmp, sizeof tmp, "%s.tmp", dest) >= (int)sizeof tmp) {
        say(NULL, "install: bad destination \"%s\"", dest);
        return 1;
    }
    if (make_parents(dest) != 0) {
        say(NULL, "install: creating the directory of %s: %s", dest, strerror(errno));
        return 1;
    }
    int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (in < 0 && strchr(self, '/') != NULL) /* no /proc: fall back to the path we ran from */
        in = open(self, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        say(NULL, "install: opening own executable: %s", strerror(errno));
        return 1;
    }
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
    if (out < 0) {
        say(NULL, "install: open %s: %s", tmp, strerror(errno));
        close(in);
        return 1;
    }
    const char *step = "copy";
    int ok = copy_all(in, out) == 0;
    if (ok) {
        step = "fchmod";
        ok = fchmod(out, 0755) == 0;
    }
    if (ok) {
        step = "fsync";
        ok = fsync(out) == 0;
    }
    int saved = errno;
    if (close(out) != 0 && ok) {
        step = "close";
        ok = 0;
        saved = errno;
    }
    close(in);
    if (ok) {
        step = "rename";
        ok = rename(tmp, dest) == 0;
        saved = errno;
    }
    if (!ok) {
        say(NULL, "install: %s %s: %s", step, tmp, strerror(saved));
        unlink(tmp);
        return 1;
    }
    /* Make the rename itself durable; a failure here does not undo the install. */
    char dir[PATH_MAX];
    strcpy(dir, dest);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* --- read-only service modes ------------------------------------------------------------- */

/* Buffered stdout for the listing (plain write(2): no stdio state to reason about). */
static struct {
    char buf[65536];
    size_t used;
    int failed;
    unsigned long records;
    char path[PATH_MAX];
    char *json; /* LIST_MAX_JSON + 1 bytes */
} L;

static void out(const void *data, size_t len)
{
    if (L.failed)
        return;
    if (L.used + len > sizeof L.buf) {
        if (write_all(STDOUT_FILENO, L.buf, L.used) != 0)
            L.failed = errno;
        L.used = 0;
        if (len > sizeof L.buf) {
            if (!L.failed && write_all(STDOUT_FILENO, data, len) != 0)
                L.failed = errno;
            return;
        }
    }
    memcpy(L.buf + L.used, data, len);
    L.used += len;
}

static void record(const char *kind, const char *path, size_t plen, const char *body, size_t blen)
{
    char head[96];
    int n = snprintf(head, sizeof head, "%s %zu %zu\n", kind, plen, blen);
    out(head, (size_t)n);
    out(path, plen);
    out(body, blen);
    out("\n", 1);
    L.records++;
}

static void record_error(const char *path, size_t plen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void record_error(const char *path, size_t plen, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    record("error", path, plen, msg, (size_t)n);
}

static int ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* One metadata file NAME in directory DFD; L.path (length PLEN) names it. */
static void list_metadata(int dfd, const char *name, size_t nlen, size_t plen)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT && errno != ELOOP) /* gone, or replaced by a link meanwhile */
            record_error(L.path, plen, "open: %s", strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return;
    }
    if (st.st_size > LIST_MAX_JSON) {
        record_error(L.path, plen, "larger than %d bytes: not metadata, skipped", LIST_MAX_JSON);
        close(fd);
        return;
    }
    size_t got = 0;
    while (got <= LIST_MAX_JSON) {
        ssize_t r = read(fd, L.json + got, (size_t)LIST_MAX_JSON + 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            record_error(L.path, plen, "read: %s", strerror(errno));
            close(fd);
            return;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got > LIST_MAX_JSON) {
        record_error(L.path, plen, "larger than %d bytes: not metadata, skipped", LIST_MAX_JSON);
        return;
    }
    /* The core is NAME without ".json" in the same directory; only a regular file counts. */
    char core[NAME_MAX + 1];
    size_t clen = nlen - (sizeof METADATA_SUFFIX - 1);
    memcpy(core, name, clen);
    core[clen] = '\0';
    struct stat cst;
    int present = clen > 0 && fstatat(dfd, core, &cst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(cst.st_mode);
    record(present ? "present" : "missing", L.path, plen, L.json, got);
}

/* Walk directory DFD (consumed) whose path is L.path[0..plen); its entries are at DEPTH. */
static void list_dir(int dfd, size_t plen, int depth)
{
    DIR *d = fdopendir(dfd);
    if (d == NULL) {
        record_error(L.path, plen, "opendir: %s", strerror(errno));
        close(dfd);
        return;
    }
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                record_error(L.path, plen, "readdir: %s", strerror(errno));
            break;
        }
        const char *n = de->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        size_t nlen = strlen(n);
        int json = ends_with(n, nlen, METADATA_SUFFIX);
        if (!json && de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
            continue;
        if (plen + 1 + nlen >= sizeof L.path) {
            record_error(L.path, plen, "an entry's path is longer than %d bytes: skipped", PATH_MAX - 1);
            continue;
        }
        L.path[plen] = '/';
        memcpy(L.path + plen + 1, n, nlen + 1);
        size_t clen = plen + 1 + nlen;
        struct stat st;
        if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            L.path[plen] = '\0';
            continue; /* removed meanwhile */
        }
        if (S_ISDIR(st.st_mode) && depth < LIST_MAX_DEPTH) {
            int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                list_dir(sub, clen, depth + 1);
            else if (errno != ENOENT && errno != ELOOP && errno != ENOTDIR)
                record_error(L.path, clen, "open directory: %s", strerror(errno));
        } else if (S_ISREG(st.st_mode) && json) {
            list_metadata(dirfd(d), n, nlen, clen);
        }
        L.path[plen] = '\0';
    }
    closedir(d);
}

static int list_mode(int ndirs, char **dirs)
{
    L.json = malloc((size_t)LIST_MAX_JSON + 1);
    if (L.json == NULL) {
        say(NULL, "list: out of memory");
        return 1;
    }
    out(WRAPPER_LIST_MAGIC "\n", sizeof WRAPPER_LIST_MAGIC);
    for (int i = 0; i < ndirs; i++) {
        const char *dir = dirs[i];
        size_t plen = strlen(dir);
        if (plen >= sizeof L.path) {
            record_error(dir, plen, "path too long");
            continue;
        }
        memcpy(L.path, dir, plen + 1);
        while (plen > 0 && L.path[plen - 1] == '/') /* "/data/" lists as "/data/x", "/" as "/x" */
            L.path[--plen] = '\0';
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            struct stat st; /* O_DIRECTORY|O_NOFOLLOW on a link gives ENOTDIR or ELOOP */
            if (fstatat(AT_FDCWD, dir, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
                record_error(dir, strlen(dir), "a symbolic link: not followed");
            else if (err != ENOENT) /* no directory yet means no cores yet: nothing to say */
                record_error(dir, strlen(dir), "%s", strerror(err));
            continue;
        }
        list_dir(fd, plen, 1);
    }
    char tail[48];
    int n = snprintf(tail, sizeof tail, "end %lu\n", L.records);
    out(tail, (size_t)n);
    if (!L.failed && L.used > 0 && write_all(STDOUT_FILENO, L.buf, L.used) != 0)
        L.failed = errno;
    free(L.json);
    if (L.failed) {
        say(NULL, "list: writing to stdout: %s", strerror(L.failed));
        return 1;
    }
    return 0;
}

/* A decimal byte offset: digits only, at most 2^63 - 1. */
static int parse_offset(const char *s, off_t *out_off)
{
    if (*s == '\0')
        return -1;
    unsigned long long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (v > (0x7fffffffffffffffULL - (unsigned)(*s - '0')) / 10)
            return -1;
        v = v * 10 + (unsigned)(*s - '0');
    }
    *out_off = (off_t)v;
    return 0;
}

static int cat_mode(const char *file, const char *offset_arg)
{
    off_t off = 0;
    if (offset_arg != NULL && parse_offset(offset_arg, &off) != 0) {
        say(NULL, "cat: bad offset \"%s\": not a decimal byte count", offset_arg);
        return 2;
    }
    /* O_NONBLOCK: opening a FIFO must not hang; it is refused below like any non-regular file. */
    int fd = open(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        say(NULL, "cat %s: %s", file, errno == ELOOP ? "a symbolic link: refused" : strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        say(NULL, "cat %s: not a regular file: refused", file);
        close(fd);
        return 1;
    }
    char *buf = NULL;
    for (;;) {
        ssize_t n = -1;
        if (buf == NULL) {
            n = sendfile(STDOUT_FILENO, fd, &off, 1 << 30);
            if (n < 0 && errno == EAGAIN) {
                wait_writable(STDOUT_FILENO);
                continue;
            }
            if (n < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                buf = malloc(1 << 20); /* stdout refuses sendfile (O_APPEND, some ttys) */
                if (buf == NULL) {
                    say(NULL, "cat %s: out of memory", file);
                    break;
                }
                continue;
            }
        } else {
            n = pread(fd, buf, 1 << 20, off);
            if (n > 0) {
                if (write_all(STDOUT_FILENO, buf, (size_t)n) != 0) {
                    say(NULL, "cat %s: writing to stdout: %s", file, strerror(errno));
                    break;
                }
                off += n;
            }
        }
        if (n == 0) { /* end of file (or OFFSET past it) */
            free(buf);
            close(fd);
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            say(NULL, "cat %s at offset %lld: %s", file, (long long)off, strerror(errno));
            break;
        }
    }
    free(buf);
    close(fd);
    return 1;
}

static void usage(void)
{
    say(NULL, "usage: " NAME " PROGRAM [ARGS...]\n"
              "       " NAME " " WRAPPER_INSTALL_FLAG " DEST\n"
              "       " NAME " " WRAPPER_LIST_FLAG " DIR...\n"
              "       " NAME " " WRAPPER_CAT_FLAG " FILE [OFFSET]\n"
              "Raises RLIMIT_CORE (soft to hard, then unlimited where permitted), writes $"
              ENV_COREDUMP_FILTER " to " COREDUMP_FILTER_FILE " when set, then execs PROGRAM.");
}

int main(int argc, char **argv)
{
    const char *dbg = getenv(ENV_WRAPPER_DEBUG);
    debug_enabled = dbg != NULL && strcmp(dbg, "1") == 0;
    if (argc < 2) {
        usage();
        return 2;
    }
    if (strcmp(argv[1], WRAPPER_INSTALL_FLAG) == 0) {
        if (argc != 3) {
            usage();
            return 2;
        }
        return install(argv[0], argv[2]);
    }
    if (strcmp(argv[1], WRAPPER_LIST_FLAG) == 0) {
        if (argc < 3) {
            usage();
            return 2;
        }
        return list_mode(argc - 2, argv + 2);
    }
    if (strcmp(argv[1], WRAPPER_CAT_FLAG) == 0) {
        if (argc != 3 && argc != 4) {
            usage();
            return 2;
        }
        return cat_mode(argv[2], argc == 4 ? argv[3] : NULL);
    }
    return run(argv + 1);
}
