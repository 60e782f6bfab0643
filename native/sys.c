/*
 * The system calls the suite needs that neither Node nor the netlink
 * package offers:
 *  - setns(2): joining a network namespace only moves the calling thread, so
 *    callers use it from the main thread and open netlink sockets and
 *    /proc/sys files synchronously right after;
 *  - flock(2): the lock the reference plugins use on their state directories;
 *    the kernel drops it when a process dies, so a SIGKILLed plugin never
 *    leaves a stale lock behind; waited for in the kernel, with a timeout;
 *  - execve(2), raw: the binary re-executes itself without NODE_* variables
 *    (src/loader.ts) with none of Node's exit hooks running first;
 *  - getsockopt(SO_PEERCRED): who is on the other end of an engine
 *    connection (lib/engine/server.ts); Node does not say;
 *  - the TUN/TAP ioctls: the kernel creates a TAP device only through
 *    /dev/net/tun (TUNSETIFF, then TUNSETOWNER/TUNSETGROUP/TUNSETPERSIST);
 *    rtnetlink refuses to (lib/netlink/tap.ts). Deleting one is netlink's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int err) {
  napi_value msg, code, error;
  const char *name = err == EINVAL ? "EINVAL" : err == EPERM ? "EPERM" : err == EBADF ? "EBADF" : err == EBUSY ? "EBUSY"
    : err == EEXIST ? "EEXIST" : err == ENODEV ? "ENODEV" : err == ENOENT ? "ENOENT" : err == EACCES ? "EACCES" : "ESYSCALL";
  napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, msg, &error);
  napi_throw(env, error);
  return NULL;
}

/* setns(fd: number): void — joins the network namespace behind fd. */
static napi_value js_setns(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "setns(fd) needs a file descriptor");
    return NULL;
  }
  if (setns(fd, CLONE_NEWNET) != 0) return throw_errno(env, errno);
  return NULL;
}

static void on_alarm(int sig) { (void)sig; }

static void install_alarm_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART: flock returns EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, NULL);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* flockWait(fd: number, exclusive: boolean, timeoutMs: number): boolean —
 * waits in the kernel for the lock (woken the moment the holder releases it,
 * unlike polling, which lets newcomers overtake a backed-off waiter), false
 * after timeoutMs. The timeout is a timer that sends SIGALRM to this thread
 * alone (SIGEV_THREAD_ID) and interrupts flock() with EINTR; it repeats every
 * 50 ms so a signal that lands just before flock() is entered cannot leave it
 * blocked. */
static napi_value js_flock_wait(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], ret;
  int32_t fd;
  bool exclusive = true;
  double timeout_ms = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_bool(env, argv[1], &exclusive) != napi_ok ||
      napi_get_value_double(env, argv[2], &timeout_ms) != napi_ok || !(timeout_ms >= 0)) {
    napi_throw_type_error(env, NULL, "flockWait(fd, exclusive, timeoutMs) needs a number, a boolean and a number");
    return NULL;
  }
  int op = exclusive ? LOCK_EX : LOCK_SH;
  if (flock(fd, op | LOCK_NB) == 0) {
    napi_get_boolean(env, true, &ret);
    return ret;
  }
  if (errno != EWOULDBLOCK) return throw_errno(env, errno);

  /* The handler is installed once and stays: the engine's worker threads
   * wait concurrently, and restoring the old disposition (SIG_DFL:
   * terminate) while another thread's timer is armed would kill the
   * process. Nothing else in the process uses SIGALRM. */
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, install_alarm_handler);
  sigset_t alarm_set, old_mask;
  sigemptyset(&alarm_set);
  sigaddset(&alarm_set, SIGALRM);
  pthread_sigmask(SIG_UNBLOCK, &alarm_set, &old_mask);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIGALRM;
  sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  timer_t timer;
  int err = 0, got = 0;
  if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) {
    err = errno;
  } else {
    double deadline = now_ms() + timeout_ms;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    long first = timeout_ms < 1 ? 1 : (long)timeout_ms;
    its.it_value.tv_sec = first / 1000;
    its.it_value.tv_nsec = (first % 1000) * 1000000L;
    its.it_interval.tv_nsec = 50 * 1000000L;
    timer_settime(timer, 0, &its, NULL);
    for (;;) {
      if (flock(fd, op) == 0) { got = 1; break; }
      if (errno != EINTR) { err = errno; break; }
      if (now_ms() >= deadline) break;
    }
    timer_delete(timer);
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
  if (err) return throw_errno(env, err);
  napi_get_boolean(env, got, &ret);
  return ret;
}

/* Frees a NULL-terminated vector made by string_vector. */
static void free_vector(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

/* One string of a vector: a Buffer's bytes as they are (environment values
 * need not be UTF-8), or a string as UTF-8; NULL when it holds a NUL byte. */
static char *vector_item(napi_env env, napi_value item) {
  bool is_buffer = false;
  size_t len = 0;
  char *out;
  if (napi_is_buffer(env, item, &is_buffer) != napi_ok) return NULL;
  if (is_buffer) {
    void *data;
    if (napi_get_buffer_info(env, item, &data, &len) != napi_ok || !(out = malloc(len + 1))) return NULL;
    memcpy(out, data, len);
    out[len] = 0;
  } else {
    if (napi_get_value_string_utf8(env, item, NULL, 0, &len) != napi_ok || !(out = malloc(len + 1))) return NULL;
    napi_get_value_string_utf8(env, item, out, len + 1, &len);
  }
  if (strlen(out) != len) {
    free(out);
    return NULL;
  }
  return out;
}

/* A JS array of Buffers or strings as a NULL-terminated char* vector (malloc'ed), or NULL. */
static char **string_vector(napi_env env, napi_value arr) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, arr, &is_array) != napi_ok || !is_array || napi_get_array_length(env, arr, &n) != napi_ok) return NULL;
  char **v = calloc((size_t)n + 1, sizeof(char *));
  if (!v) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    napi_value item;
    if (napi_get_element(env, arr, i, &item) != napi_ok || !(v[i] = vector_item(env, item))) {
      free_vector(v);
      return NULL;
    }
  }
  return v;
}

/* execve(path: string, argv: (Buffer|string)[], envp: (Buffer|string)[]): never returns on
 * success — the raw system call: no exit hook of this process runs (Node's
 * own process.execve runs them: coverage files, compile cache), nothing is
 * flushed; stdin, stdout and stderr stay open (whatever Node did to them),
 * other descriptors marked close-on-exec are closed. */
static napi_value js_execve(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char path[4096];
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len == 0 || len >= sizeof path - 1) {
    napi_throw_type_error(env, NULL, "execve(path, argv, envp) needs a path and two arrays of strings");
    return NULL;
  }
  char **av = string_vector(env, argv[1]);
  char **ev = string_vector(env, argv[2]);
  if (!av || !ev || !av[0]) {
    free_vector(av);
    free_vector(ev);
    napi_throw_type_error(env, NULL, "execve(path, argv, envp) needs a path and two arrays of Buffers or strings (without NUL), argv not empty");
    return NULL;
  }
  /* Node marks the inherited descriptors close-on-exec at startup
   * (uv_disable_stdio_inheritance): stdin, stdout and stderr must stay. */
  int saved[3];
  for (int fd = 0; fd < 3; fd++) {
    saved[fd] = fcntl(fd, F_GETFD);
    if (saved[fd] >= 0 && (saved[fd] & FD_CLOEXEC)) fcntl(fd, F_SETFD, saved[fd] & ~FD_CLOEXEC);
  }
  execve(path, av, ev);
  int err = errno;
  for (int fd = 0; fd < 3; fd++) if (saved[fd] >= 0) fcntl(fd, F_SETFD, saved[fd]);
  free_vector(av);
  free_vector(ev);
  return throw_errno(env, err);
}

/* peercred(fd: number): [pid, uid, gid] of the process at the other end of a
 * connected unix socket, as the kernel recorded it at connect(2). */
static napi_value js_peercred(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "peercred(fd) needs a file descriptor");
    return NULL;
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, errno);
  napi_create_array_with_length(env, 3, &out);
  napi_create_int64(env, cred.pid, &v);
  napi_set_element(env, out, 0, v);
  napi_create_int64(env, cred.uid, &v);
  napi_set_element(env, out, 1, v);
  napi_create_int64(env, cred.gid, &v);
  napi_set_element(env, out, 2, v);
  return out;
}

/* tapCreate(name: string, multiQueue: boolean, owner: number, group: number): string —
 * a persistent TAP device (no packet information header) in the calling
 * thread's network namespace, owned by `owner` and `group` (-1: not set; the
 * kernel checks only what is set, so with neither anyone may attach), named
 * `name` (the kernel's pattern when it holds "%d"); returns the name the kernel gave it. The device node is checked
 * to be the real TUN/TAP character device (10, 200) before it is used.
 * A device of that name already there fails (EBUSY, or EINVAL for another
 * kind): this never takes over someone else's TAP. */
static napi_value js_tap_create(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], out;
  char name[IFNAMSIZ + 1];
  size_t len = 0;
  bool multi = false;
  int64_t owner = -1, group = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok || len == 0 || len >= IFNAMSIZ ||
      napi_get_value_bool(env, argv[1], &multi) != napi_ok ||
      napi_get_value_int64(env, argv[2], &owner) != napi_ok || napi_get_value_int64(env, argv[3], &group) != napi_ok ||
      owner < -1 || owner > 0xfffffffeLL || group < -1 || group > 0xfffffffeLL) {
    napi_throw_type_error(env, NULL, "tapCreate(name, multiQueue, owner, group) needs a name under 16 bytes, a boolean and two ids (-1: none)");
    return NULL;
  }
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return throw_errno(env, errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 10 || minor(st.st_rdev) != 200) {
    close(fd);
    return throw_errno(env, ENODEV);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  /* IFF_TUN_EXCL: a device of that name already there is EBUSY, never adopted. */
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL | (multi ? IFF_MULTI_QUEUE : 0);
  memcpy(ifr.ifr_name, name, len);
  int err = 0;
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) err = errno;
  else if (owner >= 0 && ioctl(fd, TUNSETOWNER, (unsigned long)owner) != 0) err = errno;
  else if (group >= 0 && ioctl(fd, TUNSETGROUP, (unsigned long)group) != 0) err = errno;
  else if (ioctl(fd, TUNSETPERSIST, 1UL) != 0) err = errno;
  /* On a failure the device is not persistent yet: closing removes what this call made. */
  if (err) {
    close(fd);
    return throw_errno(env, err);
  }
  close(fd);
  ifr.ifr_name[IFNAMSIZ - 1] = 0;
  napi_create_string_utf8(env, ifr.ifr_name, NAPI_AUTO_LENGTH, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "setns", NAPI_AUTO_LENGTH, js_setns, NULL, &fn);
  napi_set_named_property(env, exports, "setns", fn);
  napi_create_function(env, "flockWait", NAPI_AUTO_LENGTH, js_flock_wait, NULL, &fn);
  napi_set_named_property(env, exports, "flockWait", fn);
  napi_create_function(env, "execve", NAPI_AUTO_LENGTH, js_execve, NULL, &fn);
  napi_set_named_property(env, exports, "execve", fn);
  napi_create_function(env, "peercred", NAPI_AUTO_LENGTH, js_peercred, NULL, &fn);
  napi_set_named_property(env, exports, "peercred", fn);
  napi_create_function(env, "tapCreate", NAPI_AUTO_LENGTH, js_tap_create, NULL, &fn);
  napi_set_named_property(env, exports, "tapCreate", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
