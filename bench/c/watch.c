/* bench only (bench/events.py): the time-stamping child of the kernel-event watcher.
   Receives netlink notifications from fd argv[1] and writes each to stdout as
   (double monotonic t, u32 n, n bytes); built with cc by bench/cbuild.py. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static char buf[12 + (1 << 20)];
int main(int argc, char **argv) {
  int fd = argc > 1 ? atoi(argv[1]) : -1;
  prctl(PR_SET_PDEATHSIG, SIGKILL);  /* never outlives the bench, even if it crashes */
  if (getppid() == 1) return 1;
  for (;;) {
    ssize_t n = recv(fd, buf + 12, 1 << 20, 0);
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = ts.tv_sec + ts.tv_nsec / 1e9;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) n = snprintf(buf + 12, 256, "LOST %s", strerror(errno));
    if (n == 0) return 0;
    uint32_t len = (uint32_t)n;
    memcpy(buf, &t, 8); memcpy(buf + 8, &len, 4);
    for (char *p = buf; p < buf + 12 + n;) {
      ssize_t w = write(1, p, buf + 12 + n - p);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return 1;
      p += w;
    }
  }
}
