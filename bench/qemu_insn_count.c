/* A qemu TCG plugin (qemu-user 7.2, plugin API version 1) for bench/arm_cost.py: how many guest
 * instructions each translated block executed, and which mapped file the block lies in.
 *
 *   qemu-aarch64 -plugin ./libinsncount.so,out=FILE ... PROGRAM ARGS
 *
 * At exit FILE gets one line per (file, offset) block: "path<TAB>file offset<TAB>instructions
 * in the block<TAB>times executed". The path is read from /proc/self/maps at translation time
 * (the guest's mappings are the host process's own in qemu-user), so a library that is
 * dlclose'd before the exit is still named. Counting is an inline add per block entry, not a
 * callback: exact for one guest thread (with several, concurrent adds may lose counts; the
 * bench runs both engines on one thread).
 *
 * The API is declared here, not included: Debian ships qemu-user without qemu-plugin.h. The
 * declarations follow the version-1 API of qemu 7.x (include/qemu/qemu-plugin.h there).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed by pointer */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
void *qemu_plugin_insn_haddr(const struct qemu_plugin_insn *insn);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* ---------------------------------------------------------------- mapped files */

typedef struct {
  uintptr_t start, end, offset;
  int path; /* index into paths */
} Mapping;

static Mapping *maps;
static size_t n_maps;
static char **paths;
static size_t n_paths;

static int path_index(const char *path) {
  for (size_t i = 0; i < n_paths; ++i)
    if (!strcmp(paths[i], path)) return (int)i;
  paths = realloc(paths, (n_paths + 1) * sizeof *paths);
  paths[n_paths] = strdup(path);
  return (int)n_paths++;
}

static void read_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return;
  n_maps = 0;
  size_t cap = 0;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    unsigned long start, end, offset;
    char perms[8], path[4096] = "";
    if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %4095[^\n]", &start, &end, perms, &offset, path) < 4) continue;
    if (n_maps == cap) {
      cap = cap ? 2 * cap : 256;
      maps = realloc(maps, cap * sizeof *maps);
    }
    char *p = path;
    while (*p == ' ') ++p;
    maps[n_maps++] = (Mapping){start, end, offset, path_index(*p ? p : "[anonymous]")};
  }
  fclose(f);
}

static const Mapping *find(uintptr_t addr) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (size_t i = 0; i < n_maps; ++i)
      if (maps[i].start <= addr && addr < maps[i].end) return &maps[i];
    read_maps(); /* a mapping made since the last read (a library loaded later) */
  }
  return NULL;
}

/* ---------------------------------------------------------------- blocks */

typedef struct {
  uint64_t execs; /* the inline add's target: must never move, hence fixed-size chunks */
  uintptr_t offset;
  uint32_t insns;
  int path;
} Block;

enum { CHUNK = 1 << 16 };
static Block **chunks;
static size_t n_blocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const char *out_path = "insn-count.tsv";

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  if (!n) return;
  uintptr_t haddr = (uintptr_t)qemu_plugin_insn_haddr(qemu_plugin_tb_get_insn(tb, 0));
  pthread_mutex_lock(&lock);
  if (n_blocks % CHUNK == 0) {
    chunks = realloc(chunks, (n_blocks / CHUNK + 1) * sizeof *chunks);
    chunks[n_blocks / CHUNK] = calloc(CHUNK, sizeof(Block));
  }
  Block *b = &chunks[n_blocks / CHUNK][n_blocks % CHUNK];
  ++n_blocks;
  const Mapping *m = find(haddr);
  b->insns = (uint32_t)n;
  b->path = m ? m->path : path_index("[unmapped]");
  b->offset = m ? haddr - m->start + m->offset : haddr;
  pthread_mutex_unlock(&lock);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->execs, 1);
}

static void write_counts(qemu_plugin_id_t id, void *userdata) {
  (void)id, (void)userdata;
  FILE *f = fopen(out_path, "w");
  if (!f) {
    fprintf(stderr, "insncount: cannot write %s\n", out_path);
    return;
  }
  for (size_t i = 0; i < n_blocks; ++i) {
    const Block *b = &chunks[i / CHUNK][i % CHUNK];
    if (b->execs)
      fprintf(f, "%s\t%lu\t%u\t%llu\n", paths[b->path], (unsigned long)b->offset, b->insns,
              (unsigned long long)b->execs);
  }
  fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i)
    if (!strncmp(argv[i], "out=", 4)) out_path = strdup(argv[i] + 4);
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, write_counts, NULL);
  return 0;
}
