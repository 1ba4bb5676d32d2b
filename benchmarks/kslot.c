/* kslot: a slot-aware closed-loop load generator for one group of a sharded karma-trio cluster.
 *
 * It sends counter.increment only for keys whose slot (Redis Cluster's CRC16/XMODEM of the
 * key's decimal text, mod 16384: karma/cluster/slots.py) lies in the ranges given with
 * --slots, so every request is one the group at --port owns: run one kslot per group, each with
 * its group's ranges, and no request is answered `moved`. N threads, one connection each, P
 * requests in flight per connection; any answer without "success":true counts as an error.
 * Prints one JSON line: requests, seconds, ops_per_sec, errors.
 *
 *   kslot --port=7001 --slots=0-8191 [--clients=4] [--pipeline=32] [--requests=20000]
 *         [--keys=10000] [--series=links] [--bucket=20260505] [--setup]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 16384

static const char *host = "127.0.0.1", *series = "links";
static int port = 8080, clients = 4, pipeline = 32, want_keys = 10000, setup = 0;
static long requests = 20000, bucket = 20260505;
static unsigned char owned[SLOTS];
static uint64_t *keys;
static long key_count;

/* CRC16/XMODEM (poly 0x1021, init 0), bit by bit: slow but only used to pick the keys */
static unsigned crc16(const char *data, size_t len) {
  unsigned crc = 0;
  for (size_t i = 0; i < len; i++) {
    crc ^= (unsigned)(unsigned char)data[i] << 8;
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

static int slot_of(uint64_t key) {
  char text[32];
  int n = snprintf(text, sizeof text, "%lu", (unsigned long)key);
  return (int)(crc16(text, (size_t)n) % SLOTS);
}

static int parse_slots(char *spec) {
  for (char *part = strtok(spec, ","); part; part = strtok(NULL, ",")) {
    int first, last;
    if (sscanf(part, "%d-%d", &first, &last) != 2 || first < 0 || last >= SLOTS || last < first) return -1;
    memset(owned + first, 1, (size_t)(last - first + 1));
  }
  return 0;
}

static void pick_keys(void) {
  keys = malloc(sizeof *keys * (size_t)want_keys);
  for (uint64_t k = 0; key_count < want_keys && k < (uint64_t)want_keys * 64; k++)
    if (owned[slot_of(k)]) keys[key_count++] = k;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int open_connection(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, host, &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(2); }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

typedef struct { char *buf; size_t cap, start, end; int fd; } lines_t;

/* the next answer line (without its newline); exits when the server closes */
static size_t next_line(lines_t *in, char **line) {
  for (;;) {
    char *nl = memchr(in->buf + in->start, '\n', in->end - in->start);
    if (nl) {
      *line = in->buf + in->start;
      size_t len = (size_t)(nl - *line);
      in->start += len + 1;
      return len;
    }
    if (in->start) {
      memmove(in->buf, in->buf + in->start, in->end - in->start);
      in->end -= in->start;
      in->start = 0;
    }
    if (in->end == in->cap) in->buf = realloc(in->buf, in->cap *= 2);
    ssize_t n = read(in->fd, in->buf + in->end, in->cap - in->end);
    if (n <= 0) { fprintf(stderr, "connection closed\n"); exit(3); }
    in->end += (size_t)n;
  }
}

typedef struct { int id; long done, errors; } worker_t;

static void *drive(void *arg) {
  worker_t *w = arg;
  int fd = open_connection();
  lines_t in = {malloc(1 << 16), 1 << 16, 0, 0, fd};
  char request[256];
  long sent = 0;
  while (w->done < requests) {
    while (sent < requests && sent - w->done < pipeline) {
      uint64_t key = keys[((uint64_t)w->id * 7919 + (uint64_t)sent * 104729) % (uint64_t)key_count];
      int len = snprintf(request, sizeof request,
                         "{\"v\":2,\"op\":\"counter.increment\",\"series\":\"%s\",\"key\":%lu,\"bucket\":%ld,\"value\":1}\n",
                         series, (unsigned long)key, bucket);
      for (int off = 0; off < len;) {
        ssize_t n = write(fd, request + off, (size_t)(len - off));
        if (n <= 0) { perror("write"); exit(3); }
        off += (int)n;
      }
      sent++;
    }
    char *line;
    size_t len = next_line(&in, &line);
    if (!memmem(line, len, "\"success\":true", 14) && w->errors++ == 0)
      fprintf(stderr, "error answer: %.*s\n", (int)(len > 300 ? 300 : len), line);
    w->done++;
  }
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  char *slots = NULL;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i], *v = strchr(a, '=');
    if (v) v++;
#define OPT(name, stmt) if (v && !strncmp(a, "--" name "=", strlen(name) + 3)) { stmt; continue; }
    OPT("host", host = v) OPT("port", port = atoi(v)) OPT("clients", clients = atoi(v))
    OPT("requests", requests = atol(v)) OPT("keys", want_keys = atoi(v)) OPT("pipeline", pipeline = atoi(v))
    OPT("series", series = v) OPT("bucket", bucket = atol(v)) OPT("slots", slots = v)
    if (!strcmp(a, "--setup")) { setup = 1; continue; }
    fprintf(stderr, "usage: kslot --port=P --slots=FIRST-LAST[,FIRST-LAST...] [--clients=N] [--pipeline=P]"
                    " [--requests=R] [--keys=K] [--series=S] [--bucket=B] [--setup]\n");
    return 2;
  }
  if (!slots || parse_slots(slots) || clients < 1 || pipeline < 1 || want_keys < 1) {
    fprintf(stderr, "kslot: --slots=FIRST-LAST[,...] within 0-16383 is required\n");
    return 2;
  }
  pick_keys();
  if (!key_count) { fprintf(stderr, "kslot: no key falls in those slots\n"); return 2; }
  if (setup) {
    int fd = open_connection();
    char buf[256];
    int n = snprintf(buf, sizeof buf, "{\"v\":2,\"op\":\"tree.create\",\"series\":\"%s\"}\n", series);
    if (write(fd, buf, (size_t)n) != n) return 3;
    lines_t in = {malloc(4096), 4096, 0, 0, fd};
    char *line;
    next_line(&in, &line);
    close(fd);
  }
  pthread_t *threads = calloc((size_t)clients, sizeof *threads);
  worker_t *workers = calloc((size_t)clients, sizeof *workers);
  double started = now();
  for (int i = 0; i < clients; i++) {
    workers[i].id = i;
    pthread_create(&threads[i], NULL, drive, &workers[i]);
  }
  long total = 0, errors = 0;
  for (int i = 0; i < clients; i++) {
    pthread_join(threads[i], NULL);
    total += workers[i].done;
    errors += workers[i].errors;
  }
  double seconds = now() - started;
  printf("{\"op\":\"increment\",\"port\":%d,\"clients\":%d,\"pipeline\":%d,\"keys\":%ld,\"requests\":%ld,"
         "\"seconds\":%.4f,\"ops_per_sec\":%.1f,\"errors\":%ld}\n",
         port, clients, pipeline, key_count, total, seconds, total / seconds, errors);
  return errors ? 1 : 0;
}
