/*
 * The two system calls the suite needs that neither Node nor the netlink
 * package offers:
 *  - setns(2): joining a network namespace only moves the calling thread, so
 *    callers use it from the main thread and open netlink sockets and
 *    /proc/sys files synchronously right after;
 *  - flock(2): the lock the reference plugins use on their state directories;
 *    the kernel drops it when a process dies, so a SIGKILLed plugin never
 *    leaves a stale lock behind.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/file.h>
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

/* flock(fd: number, exclusive: boolean, wait: boolean): boolean — false when
 * the lock is held elsewhere and wait is false. */
static napi_value js_flock(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], ret;
  int32_t fd;
  bool exclusive = true, wait = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_bool(env, argv[1], &exclusive) != napi_ok ||
      napi_get_value_bool(env, argv[2], &wait) != napi_ok) {
    napi_throw_type_error(env, NULL, "flock(fd, exclusive, wait) needs a number and two booleans");
    return NULL;
  }
  int op = (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB);
  int rc;
  do rc = flock(fd, op); while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EWOULDBLOCK) return throw_errno(env, errno);
  napi_get_boolean(env, rc == 0, &ret);
  return ret;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "setns", NAPI_AUTO_LENGTH, js_setns, NULL, &fn);
  napi_set_named_property(env, exports, "setns", fn);
  napi_create_function(env, "flock", NAPI_AUTO_LENGTH, js_flock, NULL, &fn);
  napi_set_named_property(env, exports, "flock", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
