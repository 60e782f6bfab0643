/*
 * cni-ts-client: what every plugin name in the CNI bin directory runs in
 * engine mode (docs/engine.md is the spec; its "Client, step by step"
 * numbers are quoted below). It forwards the call to a resident
 * `cni-ts engine` over a unix socket and reproduces the answer; where no
 * engine answers it executes `cni-ts` beside it (the exec path, always
 * correct) and starts an engine for the next calls.
 *
 * It holds no CNI logic. Its only output of its own is the CNI error code 11
 * when an engine died or hung in the middle of an ADD or CHECK (redoing that
 * behind the engine's back could do the work twice), and a line on stderr
 * when cni-ts cannot be executed.
 *
 * Static, no dependencies: it runs before anything else, in any mount
 * namespace. Built by scripts/build.mjs with -DCNI_TS_BUILD_ID="<16 hex>"
 * (and -DCNI_TS_TEST_BUILD for the test build, whose engines live apart).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CNI_TS_BUILD_ID
#error "build with -DCNI_TS_BUILD_ID=\"<16 hex digits>\" (scripts/build.mjs does)"
#endif

#define REQUEST_MAX (4u << 20)   /* request body limit (wire protocol) */
#define RESPONSE_MAX (64u << 20) /* a longer response means a broken engine */
/* Stdin is read up to cni-ts's own limit + 1 (MAX_STDIN_BYTES, lib/cni/stdin.ts):
 * on the exec path cni-ts then gives the same "stdin too large" answer it
 * would give reading the pipe itself, and a runaway writer costs us no more. */
#define STDIN_KEEP ((16u << 20) + 1)
#define KILL_WAIT_MS 5000 /* how long a SIGKILLed engine gets to close the connection */

extern char **environ;

static char **args;              /* our argv, unchanged for cni-ts */
static char cni_ts[PATH_MAX];    /* <directory of our own binary>/cni-ts */
static char engine_dir[PATH_MAX];
static struct {
  char *buf;
  size_t len;
  bool consumed; /* bytes were taken from fd 0: the exec path must put them back */
} in;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for `events` or deadline (ms, monotonic; -1: none) passes (false, ETIMEDOUT). */
static bool wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline < 0 ? -1 : deadline - now_ms();
    if (deadline >= 0 && left <= 0) {
      errno = ETIMEDOUT;
      return false;
    }
    struct pollfd p = { .fd = fd, .events = events };
    int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

/* Writes all of buf (sockets with MSG_NOSIGNAL); descriptors may be non-blocking (a runtime's pipe can be). */
static bool write_all(int fd, const char *buf, size_t len, bool sock, int64_t deadline) {
  while (len > 0) {
    ssize_t n = sock ? send(fd, buf, len, MSG_NOSIGNAL) : write(fd, buf, len);
    if (n > 0) {
      buf += n;
      len -= (size_t)n;
    } else if (n < 0 && errno == EAGAIN) {
      if (!wait_fd(fd, POLLOUT, deadline)) return false;
    } else if (n == 0 || errno != EINTR) {
      return false;
    }
  }
  return true;
}

/* Reads exactly len bytes: len on success, fewer on EOF, -1 on error or timeout (errno ETIMEDOUT). */
static ssize_t read_full(int fd, char *buf, size_t len, int64_t deadline) {
  size_t got = 0;
  while (got < len) {
    if (!wait_fd(fd, POLLIN, deadline)) return -1;
    ssize_t n = read(fd, buf + got, len - got);
    if (n == 0) break;
    if (n > 0) got += (size_t)n;
    else if (errno != EINTR && errno != EAGAIN) return -1;
  }
  return (ssize_t)got;
}

/* Step 1, the exec path: cni-ts with our argv (argv[0] names the plugin) and environment. */
static _Noreturn void exec_path(void) {
  if (in.consumed) {
    /* The bytes we took, in a memory file that becomes fd 0 (dup2 clears close-on-exec; the
     * memfd's own descriptor is closed here), read from its start by cni-ts as the pipe would be. */
    int fd = memfd_create("stdin", 0);
    if (fd < 0 || !write_all(fd, in.buf, in.len, false, -1) || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
      fprintf(stderr, "cni-ts-client: cannot hand stdin on to %s: %s\n", cni_ts, strerror(errno));
      exit(1);
    }
    close(fd);
  }
  execve(cni_ts, args, environ);
  fprintf(stderr, "cni-ts-client: cannot execute %s: %s\n", cni_ts, strerror(errno));
  exit(1);
}

/*
 * Step 6: all of stdin, up to STDIN_KEEP bytes. False on a read error: the
 * exec path then hands on what was read, or, when nothing was, the untouched
 * fd 0, where cni-ts meets the same error itself.
 */
static bool read_stdin(void) {
  size_t cap = 0;
  while (in.len < STDIN_KEEP) {
    if (in.len == cap) {
      cap = cap ? cap * 2 : 65536;
      if (cap > STDIN_KEEP) cap = STDIN_KEEP;
      char *grown = realloc(in.buf, cap);
      if (!grown) {
        fprintf(stderr, "cni-ts-client: out of memory reading stdin\n");
        exit(1);
      }
      in.buf = grown;
    }
    ssize_t n = read(0, in.buf + in.len, cap - in.len);
    if (n > 0) {
      in.len += (size_t)n;
      in.consumed = true;
    } else if (n == 0 || errno == EBADF || errno == ENXIO) {
      return true; /* the end, as cni-ts takes these */
    } else if (errno == EAGAIN) {
      /* A non-blocking stdin (O_NONBLOCK is the runtime's open file's): wait, never spin. */
      if (!wait_fd(0, POLLIN, -1)) return false;
    } else if (errno != EINTR) {
      return false;
    }
  }
  return true;
}

/* A positive decimal of at most 9 digits in variable `name`, else dflt. */
static long env_seconds(const char *name, long dflt) {
  const char *s = getenv(name);
  if (!s || !*s || strlen(s) > 9 || strspn(s, "0123456789") != strlen(s)) return dflt;
  long v = strtol(s, NULL, 10);
  return v > 0 ? v : dflt;
}

/*
 * Opens the directory `name` (relative to `at`), creating it 0700 when
 * missing, and insists it is ours alone: a real directory (O_NOFOLLOW: not a
 * symlink), owned by our euid, no group or other permission bits. Checked on
 * the open descriptor, so what was checked is what is used.
 */
static int own_dir(int at, const char *name) {
  if (mkdirat(at, name, 0700) < 0 && errno != EEXIST) return -1;
  int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  if (fd < 0) return -1;
  if (fstat(fd, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
    close(fd);
    return -1;
  }
  return fd;
}

/* "Where the engine lives": the checked socket directory as a descriptor (its path in engine_dir), or -1. */
static int open_engine_dir(void) {
  char base[PATH_MAX];
  if (geteuid() == 0) {
    strcpy(base, "/run/cni-ts");
  } else {
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (!xdg || xdg[0] != '/') return -1;
    if ((size_t)snprintf(base, sizeof base, "%s/cni-ts", xdg) >= sizeof base) return -1;
  }
  int fd = own_dir(AT_FDCWD, base);
#ifdef CNI_TS_TEST_BUILD
  /* The test build's engines live apart, in a checked subdirectory of a checked one. */
  if (fd >= 0) {
    int sub = own_dir(fd, "test");
    close(fd);
    fd = sub;
  }
  if ((size_t)snprintf(engine_dir, sizeof engine_dir, "%s/test", base) >= sizeof engine_dir) return -1;
#else
  strcpy(engine_dir, base);
#endif
  return fd;
}

/* One engine per (network namespace, mount namespace): "<net inode>-<mnt inode>". */
static bool namespace_id(char *id, size_t size) {
  struct stat net, mnt;
  if (stat("/proc/self/ns/net", &net) < 0 || stat("/proc/self/ns/mnt", &mnt) < 0) return false;
  return (size_t)snprintf(id, size, "%llu-%llu", (unsigned long long)net.st_ino, (unsigned long long)mnt.st_ino) < size;
}

/*
 * Step 4. The socket is reached through the checked directory's descriptor
 * (/proc/self/fd/N/...): nothing can be swapped in between, and the path
 * always fits sun_path. Non-blocking: a full backlog fails at once (EAGAIN)
 * instead of hanging; all I/O below polls anyway.
 */
static int connect_to(int dirfd, const char *name) {
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/%s", dirfd, name);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return -1;
  if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
    close(s);
    return -1;
  }
  return s;
}

/* This namespace pair's engine, else the socket-activated one (`engine.sock`, a systemd
 * socket unit: docs/engine.md), which tells callers it cannot serve to take the exec path. */
static int connect_engine(int dirfd, const char *id) {
  char name[96];
  snprintf(name, sizeof name, "engine-%s.sock", id);
  int s = connect_to(dirfd, name);
  return s >= 0 ? s : connect_to(dirfd, "engine.sock");
}

/*
 * Step 10. The lock probe only saves a start when an engine holds the lock
 * already; two clients racing both start one, and the engine that does not
 * get the lock exits at once (its own non-blocking take).
 */
/* Whether our mount namespace was made for this call alone. `ip netns exec` makes a new one
 * for every call it runs, and an engine serves one (network, mount) namespace pair: each such
 * call would start an engine of its own, to idle for minutes. A runtime's own namespace is
 * init's (a host runtime) or, in a container, the one its plugin calls share with it — our
 * parent's; a namespace that is neither is taken for a per-call one, and no engine is started
 * there (an engine that exists is used whatever the namespace). Where neither can be seen,
 * nothing is assumed. */
static bool same_ns(const char *path, const struct stat *self) {
  struct stat other;
  return stat(path, &other) == 0 && other.st_ino == self->st_ino && other.st_dev == self->st_dev;
}

static bool private_mount_ns(void) {
  struct stat self, parent;
  if (stat("/proc/self/ns/mnt", &self) < 0) return true;
  if (same_ns("/proc/1/ns/mnt", &self)) return false;
  char path[40];
  snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)getppid());
  if (stat(path, &parent) < 0) return false;
  return parent.st_ino != self.st_ino || parent.st_dev != self.st_dev;
}

static void start_engine(int dirfd, const char *id) {
  if (private_mount_ns()) return;
  char name[96];
  snprintf(name, sizeof name, "engine-%s.lock", id);
  int lock = openat(dirfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock < 0) return;
  bool busy = flock(lock, LOCK_EX | LOCK_NB) < 0;
  close(lock); /* unlocks */
  if (busy) return;

  char idle[24] = "";
  long idle_s = env_seconds("CNI_TS_ENGINE_IDLE", 0);
  if (idle_s > 0) snprintf(idle, sizeof idle, "%ld", idle_s);
  char *argv[] = { "cni-ts", "engine", "--dir", engine_dir, idle_s > 0 ? "--idle" : NULL, idle, NULL };
  /* Fixed, never the caller's. Two malloc arenas: worker threads would each get one, and
   * memory freed there stays resident. */
  char *envp[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "MALLOC_ARENA_MAX=2", NULL };

  pid_t middle = fork();
  if (middle < 0) return;
  if (middle == 0) {
    /* The middle child exits at once: the engine is re-parented to init, never our caller's child. */
    if (fork() == 0) {
      /* The engine: its own session, none of our descriptors (the runtime's pipes would stay
       * open for its whole life otherwise), no signal state of the runtime's. */
      setsid();
      if (close_range(0, ~0U, 0) < 0) {
        for (long fd = sysconf(_SC_OPEN_MAX) - 1; fd >= 0; fd--) close((int)fd);
      }
      if (open("/dev/null", O_RDWR) != 0 || dup2(0, 1) != 1 || dup2(0, 2) != 2) _exit(127);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
      umask(077);
      if (chdir("/") < 0) _exit(127);
      execve(cni_ts, argv, envp);
      _exit(127);
    }
    _exit(0);
  }
  while (waitpid(middle, NULL, 0) < 0 && errno == EINTR) {
  }
}

/* One request field: u8 tag, u32 length (little-endian), bytes. */
static char *put_field(char *p, uint8_t tag, const void *data, size_t len) {
  *p++ = (char)tag;
  for (int i = 0; i < 4; i++) *p++ = (char)((len >> (8 * i)) & 0xff);
  memcpy(p, data, len);
  return p + len;
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

enum outcome { R_DONE, R_EXEC, R_TIMEOUT, R_CLOSED, R_MALFORMED };
struct response {
  uint32_t exit, out_len, err_len;
  const char *out, *err;
};

/*
 * Step 9's wait: one frame, "CNTS", u32 body length, fields (u8 tag, u32
 * length, bytes). Unknown tags are skipped; a done answer needs its exit
 * status. Over RESPONSE_MAX is a broken engine, as a bad frame is.
 */
static enum outcome read_response(int sock, int64_t deadline, struct response *r) {
  unsigned char head[8];
  errno = 0;
  ssize_t got = read_full(sock, (char *)head, sizeof head, deadline);
  if (got < 0 && errno == ETIMEDOUT) return R_TIMEOUT;
  if (got != sizeof head) return R_CLOSED;
  uint32_t len = get_u32(head + 4);
  if (memcmp(head, "CNTS", 4) != 0 || len > RESPONSE_MAX) return R_MALFORMED;
  char *body = malloc(len ? len : 1);
  if (!body) return R_MALFORMED;
  errno = 0;
  got = read_full(sock, body, len, deadline);
  if (got < 0 && errno == ETIMEDOUT) return R_TIMEOUT;
  if (got != (ssize_t)len) return R_CLOSED;

  int status = -1;
  bool has_exit = false;
  memset(r, 0, sizeof *r);
  for (uint32_t at = 0; at < len;) {
    if (len - at < 5 || get_u32((unsigned char *)body + at + 1) > len - at - 5) return R_MALFORMED;
    uint8_t tag = (uint8_t)body[at];
    uint32_t flen = get_u32((unsigned char *)body + at + 1);
    const char *v = body + at + 5;
    if (tag == 16 && flen == 1) {
      status = (unsigned char)v[0];
    } else if (tag == 17 && flen == 4) {
      has_exit = true;
      r->exit = get_u32((const unsigned char *)v);
    } else if (tag == 18) {
      r->out = v;
      r->out_len = flen;
    } else if (tag == 19) {
      r->err = v;
      r->err_len = flen;
    }
    at += 5 + flen;
  }
  if (status == 1) return R_EXEC;
  return status == 0 && has_exit ? R_DONE : R_MALFORMED;
}

/* ---- the config's cniVersion, for the code-11 error: a tiny JSON skipper ---- */

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* p at a '"': past the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *end) {
  for (p++; p < end; p++) {
    if (*p == '\\') p++;
    else if (*p == '"') return p + 1;
  }
  return NULL;
}

/* Past one value (nested objects and arrays by counting brackets, strings skipped whole), or NULL. */
static const char *skip_value(const char *p, const char *end) {
  if (p >= end) return NULL;
  if (*p == '"') return skip_string(p, end);
  if (*p == '{' || *p == '[') {
    size_t depth = 0;
    while (p < end) {
      if (*p == '"') {
        if (!(p = skip_string(p, end))) return NULL;
        continue;
      }
      if (*p == '{' || *p == '[') depth++;
      else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
      p++;
    }
    return NULL;
  }
  const char *start = p; /* a number, true, false, null */
  while (p < end && (strchr("+-.eE", *p) || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z'))) p++;
  return p > start ? p : NULL;
}

/*
 * The top-level "cniVersion" of the stdin object (the last one, as
 * JSON.parse keeps), when the object parses and the value is made of digits
 * and dots only (it is printed unescaped); else "1.1.0".
 */
static void config_version(char *out, size_t size) {
  const char *p = in.buf, *end = in.buf + in.len, *found = NULL;
  size_t found_len = 0;
  snprintf(out, size, "1.1.0");
  if (!p || (p = skip_ws(p, end)) >= end || *p != '{') return;
  p = skip_ws(p + 1, end);
  if (p < end && *p == '}') return;
  for (;;) {
    if (p >= end || *p != '"') return;
    const char *key = p + 1, *key_end = skip_string(p, end);
    if (!key_end) return;
    p = skip_ws(key_end, end);
    if (p >= end || *p != ':') return;
    p = skip_ws(p + 1, end);
    const char *value = p;
    if (!(p = skip_value(p, end))) return;
    if (key_end - 1 - key == 10 && !memcmp(key, "cniVersion", 10) && *value == '"') {
      found = value + 1;
      found_len = (size_t)(p - 1 - found);
    }
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    if (p >= end || *p != '}' || skip_ws(p + 1, end) != end) return;
    break;
  }
  if (found && found_len > 0 && found_len < size && strspn(found, "0123456789.") >= found_len) {
    memcpy(out, found, found_len);
    out[found_len] = 0;
  }
}

/* Step 9, an engine gone mid-call: ADD/CHECK get code 11 (never redone behind its back), the rest the exec path. */
static _Noreturn void engine_lost(const char *command, int pid, const char *what) {
  if (strcmp(command, "ADD") != 0 && strcmp(command, "CHECK") != 0) exec_path();
  char version[32], details[512], json[1024];
  config_version(version, sizeof version);
  snprintf(details, sizeof details, "the cni-ts engine (pid %d) %s; the work may be half done: retry, or DEL to clean up", pid, what);
  /* JSON-escape our own text (ASCII). */
  size_t n = (size_t)snprintf(json, sizeof json, "{\"cniVersion\":\"%s\",\"code\":11,\"msg\":\"try again later\",\"details\":\"", version);
  for (const char *c = details; *c && n < sizeof json - 8; c++) {
    if (*c == '"' || *c == '\\') json[n++] = '\\';
    if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e) continue;
    json[n++] = *c;
  }
  memcpy(json + n, "\"}\n", 4);
  write_all(1, json, n + 3, false, -1);
  exit(1);
}

/* Stdio descriptors our caller left closed get /dev/null, close-on-exec: our own descriptors
 * can never take their numbers, and the exec path still hands cni-ts them closed. */
static void reserve_stdio(void) {
  for (int fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR | O_CLOEXEC) < 0) break;
  }
}

/* "<directory of our own resolved path>/cni-ts". The kernel's link is already resolved (and,
 * unlike realpath(3), still usable when a build has renamed a new binary over ours). */
static void locate_cni_ts(void) {
  ssize_t n = readlink("/proc/self/exe", cni_ts, sizeof cni_ts - 1);
  char *slash = n > 0 ? memrchr(cni_ts, '/', (size_t)n) : NULL;
  if (!slash || cni_ts[0] != '/' || (size_t)(slash - cni_ts) + sizeof "/cni-ts" > sizeof cni_ts) {
    fprintf(stderr, "cni-ts-client: cannot find its own directory (/proc/self/exe)\n");
    exit(1);
  }
  strcpy(slash, "/cni-ts");
}

int main(int argc, char **argv) {
  args = argv;
  reserve_stdio();
  locate_cni_ts();

  /* Step 2: disabled. */
  const char *mode = getenv("CNI_TS_ENGINE");
  if ((mode && !strcmp(mode, "off")) || access("/etc/cni-ts/engine-off", F_OK) == 0) exec_path();

  /* What the engine would refuse as a malformed request (an empty name, an environment
   * entry that is not KEY=VALUE) would come back as a closed connection: exec path instead. */
  const char *name = argc > 0 && argv[0] ? argv[0] : "";
  if (strrchr(name, '/')) name = strrchr(name, '/') + 1;
  if (!*name) exec_path();
  for (char **e = environ; *e; e++) {
    if (**e == '=' || !strchr(*e, '=')) exec_path();
  }

  /* Steps 3-5. */
  char id[64];
  int dirfd = open_engine_dir();
  if (dirfd < 0 || !namespace_id(id, sizeof id)) exec_path();
  int sock = connect_engine(dirfd, id);
  if (sock < 0) {
    start_engine(dirfd, id);
    exec_path();
  }
  close(dirfd);
  struct ucred peer;
  socklen_t peer_len = sizeof peer;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0 || peer.uid != geteuid()) exec_path();

  /* Steps 6-7. */
  if (!read_stdin()) exec_path();
  char netns[16] = "";
  const char *netns_path = getenv("CNI_NETNS");
  if (netns_path) {
    /* Stays open until we exit: the engine opens /proc/<our pid>/fd/<n>, our view of the namespace. */
    int fd = open(netns_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) snprintf(netns, sizeof netns, "%d", fd);
  }

  /* The request, built in memory: build id, name, env..., stdin, [netns fd]. */
  const char *build = CNI_TS_BUILD_ID;
  uint64_t body = 5 + strlen(build) + 5 + strlen(name) + 5 + (uint64_t)in.len + (*netns ? 5 + strlen(netns) : 0);
  for (char **e = environ; *e && body <= REQUEST_MAX; e++) body += 5 + strlen(*e);
  if (body > REQUEST_MAX) exec_path();
  char *req = malloc(8 + body);
  if (!req) exec_path();
  memcpy(req, "CNTS", 4);
  for (int i = 0; i < 4; i++) req[4 + i] = (char)((body >> (8 * i)) & 0xff);
  char *p = put_field(req + 8, 1, build, strlen(build));
  p = put_field(p, 2, name, strlen(name));
  for (char **e = environ; *e; e++) p = put_field(p, 3, *e, strlen(*e));
  p = put_field(p, 4, in.buf ? in.buf : "", in.len);
  if (*netns) p = put_field(p, 5, netns, strlen(netns));

  /* Step 8. A request not fully sent cannot have been started: exec path. Bounded by the
   * timeout too, or an engine that stopped reading would hold us for ever. */
  long timeout = env_seconds("CNI_TS_ENGINE_TIMEOUT", 120);
  if (!write_all(sock, req, 8 + body, true, now_ms() + timeout * 1000)) exec_path();
  free(req);

  /* Step 9: the response, all of it within the timeout. */
  const char *command = getenv("CNI_COMMAND") ? getenv("CNI_COMMAND") : "";
  struct response r;
  char what[96], sink[4096];
  switch (read_response(sock, now_ms() + timeout * 1000, &r)) {
  case R_DONE:
    break;
  case R_EXEC:
    exec_path(); /* the engine declined before doing any work */
  case R_TIMEOUT:
    /* The engine hangs: kill it (while our connection is open its pid is still the engine's),
     * then wait for the connection to close, proof it is gone before anything is redone. */
    if (peer.pid > 0) kill(peer.pid, SIGKILL);
    for (int64_t until = now_ms() + KILL_WAIT_MS; read_full(sock, sink, sizeof sink, until) == sizeof sink;) {
    }
    snprintf(what, sizeof what, "did not answer %s within %ld s (killed)", command, timeout);
    engine_lost(command, peer.pid, what);
  case R_CLOSED:
    snprintf(what, sizeof what, "closed the connection before answering %s", command);
    engine_lost(command, peer.pid, what);
  case R_MALFORMED:
    snprintf(what, sizeof what, "sent a malformed answer to %s", command);
    engine_lost(command, peer.pid, what);
  }

  /* Done: reproduce it. A closed stdout/stderr is not ours to die of (we never exec from here). */
  signal(SIGPIPE, SIG_IGN);
  write_all(2, r.err, r.err_len, false, -1);
  write_all(1, r.out, r.out_len, false, -1);
  return (int)(r.exit & 0xff);
}
