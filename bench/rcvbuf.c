/* LD_PRELOAD shim for bench/dhcp.sh: every datagram socket the load generator (perfdhcp)
   opens gets an 8 MiB receive buffer (SO_RCVBUFFORCE; the bench runs as root).

   perfdhcp has no option for its socket's buffer, and net.core.rmem_default cannot be set
   inside a child network namespace on this kernel, so its socket kept the 208 KiB default
   and overflowed from about 12,000 exchanges a second on: the load generator, not the
   server, dropped the answers and set the "peak". Built by bench/dhcp.sh with cc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>

/* The socket type without SOCK_NONBLOCK / SOCK_CLOEXEC (Linux's SOCK_TYPE_MASK). */
#define TYPE_MASK 0xf

int socket(int domain, int type, int protocol) {
  static int (*real)(int, int, int);
  if (!real)
    real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
  int fd = real(domain, type, protocol);
  if (fd >= 0 && (type & TYPE_MASK) == SOCK_DGRAM) {
    int size = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
  }
  return fd;
}
