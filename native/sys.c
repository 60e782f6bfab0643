/*
 * The two system calls the suite needs that neither Node nor the netlink
 * package offers:
 *  - setns(2): joining a network namespace only moves the calling thread, so
 *    callers use it from the main thread and open netlink sockets and
 *    /proc/sys files synchronously right after;
 *  - flock(2): the lock the reference plugins use on their state directories;
 *    the kernel drops it when a process dies, so a SIGKILLed plugin never
 *    leaves a stale lock behind; waited for in the kernel, with a timeout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int err) {
  napi_value msg, code, error;
  const char *name = err == EINVAL ? "EINVAL" : err == EPERM ? "EPERM" : err == EBADF ? "EBADF" : "ESYSCALL";
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
 * blocked. The previous SIGALRM disposition is restored. */
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

  struct sigaction sa, old_sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART: flock returns EINTR */
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGALRM, &sa, &old_sa) != 0) return throw_errno(env, errno);
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
  sigaction(SIGALRM, &old_sa, NULL);
  if (err) return throw_errno(env, err);
  napi_get_boolean(env, got, &ret);
  return ret;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "setns", NAPI_AUTO_LENGTH, js_setns, NULL, &fn);
  napi_set_named_property(env, exports, "setns", fn);
  napi_create_function(env, "flockWait", NAPI_AUTO_LENGTH, js_flock_wait, NULL, &fn);
  napi_set_named_property(env, exports, "flockWait", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
