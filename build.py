"""Build step: compile the eBPF objects and the cffi binding to libbpf.

    python build.py          # in place, for development: httptrace/bpf/*.bpf.o and httptrace/_libbpf*.so
    pip install . / pip wheel .   # setup.py runs the same two steps through setuptools

The eBPF objects are CO-RE: compiled once here against vmlinux/x86/vmlinux.h, relocated by libbpf
against the running kernel's BTF at load time. No host needs clang or kernel headers at run time.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

from cffi import FFI

ROOT = os.path.dirname(os.path.abspath(__file__))
BPF_SOURCES = sorted(glob.glob(os.path.join(ROOT, "bpf", "*.bpf.c")))
BPF_OUT_DIR = os.path.join(ROOT, "httptrace", "bpf")


def find_clang() -> str:
    for name in (os.environ.get("CLANG", ""), "clang-16", "clang"):
        if name and shutil.which(name):
            return name
    sys.exit("build.py: clang not found (apt-get install clang-16, or set CLANG=)")


def compile_bpf(out_dir: str = BPF_OUT_DIR) -> list[str]:
    """bpf/*.bpf.c -> <out_dir>/*.bpf.o; returns the objects written."""
    clang = find_clang()
    os.makedirs(out_dir, exist_ok=True)
    objects = []
    for source in BPF_SOURCES:
        obj = os.path.join(out_dir, os.path.basename(source)[: -len(".c")] + ".o")
        tmp = obj + ".tmp"  # replaced atomically: a running tracer or test may be reading the old one
        cmd = [clang, "-target", "bpf", "-g", "-O2", "-D__TARGET_ARCH_x86", "-Wall", "-Werror",
               "-I", os.path.join(ROOT, "vmlinux", "x86"), "-I", os.path.join(ROOT, "bpf"),
               "-c", source, "-o", tmp]
        subprocess.run(cmd, check=True)
        strip = shutil.which("llvm-strip-16") or shutil.which("llvm-strip")
        if strip:  # DWARF is only needed to produce BTF; .BTF and .BTF.ext stay
            subprocess.run([strip, "-g", tmp], check=True)
        os.replace(tmp, obj)
        objects.append(obj)
    return objects


# ---- the cffi out-of-line API module httptrace._libbpf --------------------------------------------
# Only what the loader uses. Reads like a header: types, then functions, then the ring buffer's batch
# (filled in C) and the one callback that comes back into Python (libbpf's log).

CDEF = r"""
/* types: opaque libbpf handles */
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct ring_buffer;
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);

enum libbpf_print_level { LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG };

/* object; the options struct is partial: cffi fills in its real layout from libbpf.h */
struct bpf_object_open_opts { size_t sz; const char *btf_custom_path; ...; };
struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);

/* programs and links */
const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
struct bpf_uprobe_opts { size_t sz; bool retprobe; const char *func_name; ...; };
struct bpf_link *bpf_program__attach_uprobe_opts(const struct bpf_program *prog, int pid, const char *binary_path,
                                                 size_t func_offset, const struct bpf_uprobe_opts *opts);
int bpf_link__destroy(struct bpf_link *link);

/* maps */
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
int bpf_map__set_initial_value(struct bpf_map *map, const void *data, size_t size);
const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

/* ring buffer */
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx, const void *opts);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);

/* probes and errors */
int libbpf_probe_bpf_map_type(int map_type, const void *opts);
int libbpf_probe_bpf_helper(int prog_type, int helper_id, const void *opts);
int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);

/* ring-buffer samples are copied into a batch in C, then read by Python (see the C source below) */
struct httptrace_batch {
    unsigned char *buf;   /* records: u32 sample size, 4 bytes of padding, the sample, padded to 8 */
    size_t capacity;
    size_t used;
    size_t count;
    size_t max_count;     /* stop after this many samples */
    size_t room;          /* ... or when less than this (one largest record) is free */
    size_t oversized;     /* samples that did not fit (cannot happen while `room` is right) */
};
int httptrace_batch_sample(void *ctx, void *data, size_t size);

/* callbacks into Python */
extern "Python" void httptrace_on_log(int level, const char *line);
void httptrace_route_libbpf_log(int max_level);
"""

# libbpf's print callback takes a va_list, which Python cannot take: format it here, then call Python.
C_SOURCE = r"""
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>

struct httptrace_batch {
    unsigned char *buf;
    size_t capacity;
    size_t used;
    size_t count;
    size_t max_count;
    size_t room;
    size_t oversized;
};

/* libbpf's sample callback: a copy into the batch, no call into Python per event. libbpf consumes a
 * sample whatever the callback returns; a negative return only stops it after this one, which is how a
 * full batch leaves the rest of the backlog in the ring. */
int httptrace_batch_sample(void *ctx, void *data, size_t size)
{
    struct httptrace_batch *b = ctx;
    size_t need = 8 + ((size + 7) & ~(size_t)7);
    if (b->used + need > b->capacity) {
        b->oversized++;
        return -EAGAIN;
    }
    unsigned char *at = b->buf + b->used;
    uint32_t size32 = (uint32_t)size;
    memcpy(at, &size32, sizeof(size32));
    memset(at + 4, 0, 4);
    memcpy(at + 8, data, size);
    b->used += need;
    b->count++;
    if (b->count >= b->max_count || b->capacity - b->used < b->room)
        return -EAGAIN;
    return 0;
}

static void httptrace_on_log(int level, const char *line);
static int httptrace_max_level = LIBBPF_WARN;

static int httptrace_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char small[1024], *line = small;
    va_list again;
    int n;
    if ((int)level > httptrace_max_level)
        return 0; /* filtered here: libbpf's debug output is thousands of lines per load */
    va_copy(again, args);
    n = vsnprintf(small, sizeof(small), fmt, args);
    if (n >= (int)sizeof(small) && (line = malloc(n + 1)) != NULL) /* a whole verifier log: keep it all */
        vsnprintf(line, n + 1, fmt, again);
    va_end(again);
    httptrace_on_log((int)level, line ? line : small);
    if (line != small)
        free(line);
    return 0;
}

static void httptrace_route_libbpf_log(int max_level)
{
    httptrace_max_level = max_level;
    libbpf_set_print(httptrace_print);
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("httptrace._libbpf", C_SOURCE, libraries=["bpf"])


def build_in_place() -> None:
    compile_bpf()
    tmp = os.path.join(ROOT, "build", "cffi")
    so_path = ffibuilder.compile(tmpdir=tmp, verbose=False)
    target = os.path.join(ROOT, "httptrace", os.path.basename(so_path))
    shutil.copy2(so_path, target + ".tmp")
    os.replace(target + ".tmp", target)  # never a half-written module under a running process
    print(f"built {os.path.relpath(target, ROOT)} and {len(BPF_SOURCES)} eBPF object(s)")


if __name__ == "__main__":
    build_in_place()
