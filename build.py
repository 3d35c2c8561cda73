"""Build step: the vendored C libraries, the eBPF objects and the cffi binding to libbpf.

    python build.py          # in place, for development: httptrace/bpf/*.bpf.o and httptrace/_libbpf.abi3.so
    python build.py deps     # only the vendored static libraries (cached, see below)
    pip install . / pip wheel .   # setup.py runs the same steps through setuptools

The eBPF objects are CO-RE: compiled once here against vmlinux/x86/vmlinux.h, relocated by libbpf
against the running kernel's BTF at load time. No host needs clang or kernel headers at run time.
The cffi module has libbpf, libelf and zlib linked in statically and needs only glibc >= 2.17, so the
dev build and the wheel (manylinux2014, abi3) run the same libbpf.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import inspect
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from cffi import FFI

ROOT = os.path.dirname(os.path.abspath(__file__))
BPF_SOURCES = sorted(glob.glob(os.path.join(ROOT, "bpf", "*.bpf.c")))
BPF_OUT_DIR = os.path.join(ROOT, "httptrace", "bpf")

# ---- vendored C libraries: pins ---------------------------------------------------------------------
# Debian bookworm's source packages, fetched with `apt-get source` (so from the configured Debian mirror
# only) at exactly these versions; every file it downloads must have the sha256 below.

SOURCES = {  # source package: (Debian version, {downloaded file: sha256})
    "zlib": ("1:1.2.13.dfsg-1", {
        "zlib_1.2.13.dfsg-1.dsc": "3fa1e6b2fc525062aa88207dda52fed8e045373c809d362fe8a2bfbf7cf515a8",
        "zlib_1.2.13.dfsg.orig.tar.bz2": "71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1",
        "zlib_1.2.13.dfsg-1.debian.tar.xz": "f66cf3d4f2d7defcd4d1fd1fb0a11ee39f1e01b42ec7d059c9dc5c1695133c44",
    }),
    "elfutils": ("0.188-2.1", {
        "elfutils_0.188-2.1.dsc": "2e73c5bfe9d0ddbf837742d638c43b049590ae1de8f6e3d9c2740c28e2550760",
        "elfutils_0.188.orig.tar.bz2": "fb8b0e8d0802005b9a309c60c1d8de32dd2951b56f0c3a3cb56d21ce01595dff",
        "elfutils_0.188.orig.tar.bz2.asc": "061bb59801b8a23de4b129acb242210889be2c25b43ad2bcc2eb04966a1823e6",
        "elfutils_0.188-2.1.debian.tar.xz": "dac77dc13f8f3bb2c541d631faf75216fc6640a359143a4545129ee096bc35ff",
    }),
    "libbpf": ("1.1.2-0+deb12u1", {
        "libbpf_1.1.2-0+deb12u1.dsc": "96f81dad2d5f1505ac8c3630249c77f7fcb9ab2f429c4386b2eee2149b7a8c4b",
        "libbpf_1.1.2.orig.tar.gz": "b50ab60637fb713db78aa98e6ca911ddf13c0799d498a1f6ec03ebffc7dca588",
        "libbpf_1.1.2-0+deb12u1.debian.tar.xz": "e6032912c142c414d5b01257078e86d77f195e0474fba24fbb360a6a78f252b6",
    }),
}
ZIGLANG_VERSION = "0.17.1"  # PyPI ziglang, the C compiler for all three (same pin in pyproject.toml)
GLIBC = "2.17"              # the oldest glibc the module may need: manylinux_2_17 (manylinux2014)
ARCH = os.environ.get("HTTPTRACE_ARCH", "x86_64")  # zig's name of the target CPU: x86_64 or aarch64
# zig's CPU name -> the kernel's (bpf_tracing.h's __TARGET_ARCH_*, vmlinux/<name>/vmlinux.h)
KERNEL_ARCH = {"x86_64": "x86", "aarch64": "arm64"}
CFLAGS = "-O2 -fPIC -fno-sanitize=undefined"  # PIC: they go into a shared object; zig cc's default
#                                               UBSan traps would otherwise be compiled in
CACHE = os.path.join(os.environ.get("HTTPTRACE_CACHE") or "/var/cache/httptrace", "deps")

# A cross build (HTTPTRACE_ARCH is not this machine) compiles the module against that CPU's pyconfig.h:
# Debian bookworm's libpython3.11-dev of its Debian arch, fetched with apt-get download (an apt of its
# own, see foreign_apt) and checked against this sha256. Any CPython >= 3.9's headers serve: the module
# uses the limited API (abi3), as with the build Python's own headers on x86-64.
PYTHON_DEV = {  # zig arch: (Debian arch, package, version, sha256 of the .deb)
    "aarch64": ("arm64", "libpython3.11-dev", "3.11.2-6+deb12u9",
                "fb34da3be5eb345a6a34c5a7ef760a33ff22054d46b8906b81b2fa8e80c26a7f"),
}
DEBIAN_MIRROR = os.environ.get("HTTPTRACE_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = (os.environ.get("HTTPTRACE_DEBIAN_SECURITY_MIRROR")
                          or "http://deb.debian.org/debian-security")


# ---- vendored C libraries: the recipe ---------------------------------------------------------------
# zlib <- libelf (elfutils' lib/ and libelf/ only) <- libbpf, each a static PIC archive plus headers in
# CACHE/<package>-<version>-<target>/ {include,lib}. A directory is reused while its `recipe` file
# matches what would be built now (versions, target, compiler, flags, its inputs), else rebuilt.

def zig_target(arch: str = ARCH) -> str:
    return f"{arch}-linux-gnu.{GLIBC}"


def zig() -> str:
    try:
        import ziglang
        version = importlib.metadata.version("ziglang")
    except ImportError:
        sys.exit(f"build.py: the C compiler is PyPI's ziglang: pip install ziglang=={ZIGLANG_VERSION}")
    if version != ZIGLANG_VERSION:
        sys.exit(f"build.py: ziglang {version} is installed, the pin is {ZIGLANG_VERSION}: "
                 f"pip install ziglang=={ZIGLANG_VERSION}")
    return os.path.join(os.path.dirname(ziglang.__file__), "zig")


def dep_dir(package: str, arch: str = ARCH) -> str:
    version = SOURCES[package][0].split(":")[-1]  # the epoch is no part of the file names
    return os.path.join(CACHE, f"{package}-{version}-{zig_target(arch)}")


def static_libs(arch: str = ARCH) -> list[str]:
    """What the module links, in link order (libbpf needs libelf, libelf needs zlib)."""
    return [os.path.join(dep_dir("libbpf", arch), "lib", "libbpf.a"),
            os.path.join(dep_dir("elfutils", arch), "lib", "libelf.a"),
            os.path.join(dep_dir("zlib", arch), "lib", "libz.a")]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch(package: str) -> str:
    """The package's .dsc, downloaded once into CACHE/src/ by apt-get source and checked every time."""
    version, files = SOURCES[package]
    src = os.path.join(CACHE, "src", f"{package}_{version.split(':')[-1]}")
    if not all(os.path.exists(os.path.join(src, name)) for name in files):
        tmp = tempfile.mkdtemp(prefix=f"{package}.", dir=os.path.join(CACHE, "src"))
        os.chmod(tmp, 0o755)  # apt downloads as user _apt where it can
        try:
            result = subprocess.run(["apt-get", "source", "--download-only", "-qq", f"{package}={version}"],
                                    cwd=tmp, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"build.py: apt-get source {package}={version} failed:\n{result.stderr.strip()}\n"
                         "(`make sysdeps-build` adds the deb-src entries it needs; a pin that left the "
                         "archive needs a new version and sha256 in build.py)")
            if sorted(os.listdir(tmp)) != sorted(files):
                sys.exit(f"build.py: apt-get source {package}={version} gave {sorted(os.listdir(tmp))}, "
                         f"the pins are {sorted(files)}")
            shutil.rmtree(src, ignore_errors=True)
            os.rename(tmp, src)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, want in files.items():
        got = _sha256(os.path.join(src, name))
        if got != want:
            sys.exit(f"build.py: {src}/{name} has sha256 {got}, the pin is {want} "
                     f"(remove {src} to download it again)")
    return os.path.join(src, next(name for name in files if name.endswith(".dsc")))


def _build_zlib(run, src: str, out: str) -> None:
    run(["./configure", "--static", f"--prefix={out}"], src, CFLAGS=CFLAGS)
    run(["make", f"-j{os.cpu_count()}", "libz.a"], src)
    run(["make", "install"], src)


def _build_elfutils(run, src: str, out: str, zlib: str) -> None:
    # Symbol versioning is off: its .symver aliases are for libelf.so and break a static link into ours.
    run(["./configure", "--disable-symbol-versioning", "--disable-nls", "--disable-debuginfod",
         "--disable-libdebuginfod", "--without-bzlib", "--without-lzma", "--without-zstd",
         f"CFLAGS={CFLAGS}", f"CPPFLAGS=-I{zlib}/include", f"LDFLAGS=-L{zlib}/lib"], src)
    run(["make", f"-j{os.cpu_count()}", "-C", "lib"], src)
    run(["make", f"-j{os.cpu_count()}", "-C", "libelf", "libelf.a"], src)
    os.makedirs(os.path.join(out, "include"))
    os.makedirs(os.path.join(out, "lib"))
    for header in ("libelf.h", "gelf.h", "nlist.h"):
        shutil.copy2(os.path.join(src, "libelf", header), os.path.join(out, "include"))
    shutil.copy2(os.path.join(src, "libelf", "libelf.a"), os.path.join(out, "lib"))


def _build_libbpf(run, src: str, out: str, zlib: str, elfutils: str) -> None:
    # libbpf's static objects get only CFLAGS (its -fPIC is for the .so); no pkg-config: the -I say it.
    os.makedirs(os.path.join(src, "obj"))  # its Makefile writes libbpf.pc there without waiting for mkdir
    run(["make", f"-j{os.cpu_count()}", "-C", "src", "BUILD_STATIC_ONLY=1", "NO_PKG_CONFIG=1",
         "CC=cc", "AR=ar", f"CFLAGS={CFLAGS} -Wall -std=gnu89",
         f"EXTRA_CFLAGS=-I{elfutils}/include -I{zlib}/include", f"OBJDIR={src}/obj",
         f"DESTDIR={out}", "PREFIX=", "LIBDIR=/lib", "install", "install_uapi_headers"], src)


def _runner(work: str, arch: str):
    """run(cmd, cwd, **env): with zig's tools first on PATH, output appended to work/build.log."""
    bin_dir = os.path.join(work, "bin")
    os.makedirs(bin_dir)
    zig_exe = zig()
    for tool in ("cc", "c++", "ar", "ranlib"):  # one word each: what configure scripts and Makefiles want
        target = f" -target {zig_target(arch)}" if tool in ("cc", "c++") else ""
        with open(os.path.join(bin_dir, tool), "w") as f:
            f.write(f'#!/bin/sh\nexec "{zig_exe}" {tool}{target} "$@"\n')
        os.chmod(f.name, 0o755)
    # nothing of the caller's build settings (a make's jobserver, CFLAGS) leaks into these builds
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MAKE", "MFLAGS", "CFLAGS", "CPPFLAGS", "LDFLAGS", "CC", "CXX", "AR"))}
    base.update(PATH=f"{bin_dir}:{os.environ['PATH']}", CC="cc", CXX="c++", AR="ar", RANLIB="ranlib")
    if arch != platform.machine():  # cross: autoconf reads these from the environment too (else it runs
        # its test programs, which fail); zlib's configure and libbpf's Makefile need only CC
        base.update(build_alias=f"{platform.machine()}-linux-gnu", host_alias=f"{arch}-linux-gnu")
    log_path = os.path.join(work, "build.log")

    def run(cmd: list[str], cwd: str, **env: str) -> None:
        with open(log_path, "a") as log:
            log.write(f"\n$ cd {cwd} && {' '.join(cmd)}\n")
            log.flush()
            if subprocess.run(cmd, cwd=cwd, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT).returncode:
                sys.exit(f"build.py: `{' '.join(cmd)}` failed in {cwd}; its output is in {log_path}")
    return run


def build_deps(arch: str = ARCH) -> list[str]:
    """Fetch and build what is missing or stale in the cache; returns static_libs(arch)."""
    try:
        os.makedirs(os.path.join(CACHE, "src"), exist_ok=True)
    except OSError as e:
        sys.exit(f"build.py: cannot create the cache {CACHE} ({e.strerror}): set HTTPTRACE_CACHE to a "
                 "writable directory")
    order = (("zlib", _build_zlib, ()), ("elfutils", _build_elfutils, ("zlib",)),
             ("libbpf", _build_libbpf, ("zlib", "elfutils")))
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds at once (worktrees, CI) share the cache
        for package, build, needs in order:
            out = dep_dir(package, arch)
            inputs = [dep_dir(need, arch) for need in needs]
            steps = hashlib.sha256(inspect.getsource(build).encode()).hexdigest()[:16]
            recipe = "\n".join([f"{package} {SOURCES[package][0]}", f"target {zig_target(arch)}",
                                f"ziglang {ZIGLANG_VERSION}", f"cflags {CFLAGS}", f"steps {steps}",
                                *(f"input {d}: {_read(os.path.join(d, 'recipe'))!r}" for d in inputs)]) + "\n"
            if _read(os.path.join(out, "recipe")) == recipe:
                continue
            print(f"build.py: building {package} {SOURCES[package][0]} for {zig_target(arch)} "
                  f"(once; cached in {out})", file=sys.stderr, flush=True)
            dsc = fetch(package)
            for failed in glob.glob(os.path.join(CACHE, f"build-{package}.*")):
                shutil.rmtree(failed)  # a failed build's tree, kept until now for its build.log
            work = tempfile.mkdtemp(prefix=f"build-{package}.", dir=CACHE)
            src, tmp_out = os.path.join(work, "src"), os.path.join(work, "out")
            run = _runner(work, arch)
            run(["dpkg-source", "-x", dsc, src], work)  # Debian's tree: the orig tarball + Debian's patches
            build(run, src, tmp_out, *inputs)
            with open(os.path.join(tmp_out, "recipe"), "w") as f:
                f.write(recipe)
            shutil.rmtree(out, ignore_errors=True)
            os.rename(tmp_out, out)
            shutil.rmtree(work)
    for lib in static_libs(arch):
        if not os.path.isfile(lib):
            sys.exit(f"build.py: {lib} was not built")
    return static_libs(arch)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def cross_build(arch: str = ARCH) -> bool:
    return arch != platform.machine()


def foreign_apt(deb_arch: str, suite: str = "bookworm") -> list[str]:
    """apt-get options for Debian `suite` of another architecture, with sources and lists of its own under
    the cache: the host's apt and dpkg architectures stay as they are. Call `apt-get update` once with them."""
    d = os.path.join(os.path.dirname(CACHE), "apt", f"{suite}-{deb_arch}")
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    with open(os.path.join(d, "sources.list"), "w") as f:
        f.write(f"deb [signed-by={keyring}] {DEBIAN_MIRROR} {suite} main\n"
                f"deb [signed-by={keyring}] {DEBIAN_SECURITY_MIRROR} {suite}-security main\n")
    return [arg for key, value in (("Dir::Etc::SourceList", f"{d}/sources.list"),
                                   ("Dir::Etc::SourceParts", f"{d}/sources.list.d"),
                                   ("Dir::Etc::Preferences", f"{d}/preferences"),
                                   ("Dir::Etc::PreferencesParts", f"{d}/preferences.d"),
                                   ("Dir::State::Lists", f"{d}/lists"), ("Dir::Cache", f"{d}/cache"),
                                   ("APT::Architecture", deb_arch), ("APT::Architectures::", deb_arch))
            for arg in ("-o", f"{key}={value}")]


def cross_python_include(arch: str = ARCH) -> list[str]:
    """Include directories that come before the build Python's own for a cross build, else none: Debian's
    /usr/include/python3.11 (Python.h includes the pyconfig.h beside it, which picks
    <aarch64-linux-gnu/python3.11/pyconfig.h>) and /usr/include, unpacked once into the cache."""
    if not cross_build(arch):
        return []
    deb_arch, package, version, sha256 = PYTHON_DEV[arch]
    out = os.path.join(CACHE, f"{package}-{version}-{deb_arch}")
    if not os.path.isdir(out):
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            os.chmod(tmp, 0o755)  # apt downloads as user _apt where it can
            options = foreign_apt(deb_arch)
            for cmd in (["update", "-qq"], ["download", "-qq", f"{package}={version}"]):
                done = subprocess.run(["apt-get", *options, *cmd], cwd=tmp, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"build.py: apt-get {' '.join(cmd)} ({deb_arch}) failed:\n{done.stderr.strip()}\n"
                             "(a pin that left the archive needs a new version and sha256 in PYTHON_DEV)")
            (deb,) = glob.glob(os.path.join(tmp, "*.deb"))
            if _sha256(deb) != sha256:
                sys.exit(f"build.py: {os.path.basename(deb)} has sha256 {_sha256(deb)}, the pin is {sha256}")
            subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "tree")], check=True)
            os.rename(os.path.join(tmp, "tree"), out)
    include = os.path.join(out, "usr", "include")
    return [os.path.join(include, os.path.basename(glob.glob(os.path.join(include, "python3*"))[0])), include]


@contextlib.contextmanager
def zig_linker(arch: str = ARCH):
    """Link the module with zig for glibc 2.17: zig's own glibc stubs decide the symbol versions (the host's
    gcc still compiles the module's C, against Python's headers; a cross build compiles with zig too). The
    version script exports PyInit only: the static libraries' symbols neither clash with nor bind to
    another libbpf or libz in the process."""
    saved = {name: os.environ.get(name) for name in ("LDSHARED", "CC")}
    with tempfile.NamedTemporaryFile("w", suffix=".map") as exports:
        exports.write("{ global: PyInit__libbpf; local: *; };\n")
        exports.flush()
        os.environ["LDSHARED"] = f"{zig()} cc -target {zig_target(arch)} -shared -Wl,--version-script={exports.name}"
        if cross_build(arch):
            os.environ["CC"] = f"{zig()} cc -target {zig_target(arch)}"
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def vendored_include(arch: str = ARCH) -> str:
    """libbpf's headers (bpf/*.h, and the linux/bpf.h it was built with), for the module and the BPF C."""
    return os.path.join(dep_dir("libbpf", arch), "include")


def find_clang() -> str:
    for name in (os.environ.get("CLANG", ""), "clang-16", "clang"):
        if name and shutil.which(name):
            return name
    sys.exit("build.py: clang not found (apt-get install clang-16, or set CLANG=)")


def compile_bpf(out_dir: str = BPF_OUT_DIR, arch: str = ARCH) -> list[str]:
    """bpf/*.bpf.c -> <out_dir>/*.bpf.o for the CPU `arch`; returns the objects written."""
    clang = find_clang()
    if arch not in KERNEL_ARCH:
        sys.exit(f"build.py: HTTPTRACE_ARCH={arch}: httptrace is built for {' or '.join(KERNEL_ARCH)}")
    kernel_arch = KERNEL_ARCH[arch]
    build_deps(arch)  # for the vendored libbpf headers below
    os.makedirs(out_dir, exist_ok=True)
    objects = []
    for source in BPF_SOURCES:
        obj = os.path.join(out_dir, os.path.basename(source)[: -len(".c")] + ".o")
        tmp = obj + ".tmp"  # replaced atomically: a running tracer or test may be reading the old one
        cmd = [clang, "-target", "bpf", "-g", "-O2", f"-D__TARGET_ARCH_{kernel_arch}", "-Wall", "-Werror",
               "-I", os.path.join(ROOT, "vmlinux", kernel_arch), "-I", os.path.join(ROOT, "bpf"),
               "-I", vendored_include(arch),  # bpf_helpers.h & co. of the libbpf the module links
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
int bpf_prog_get_next_id(uint32_t start_id, uint32_t *next_id);  /* tests: every program, map, link */
int bpf_map_get_next_id(uint32_t start_id, uint32_t *next_id);
int bpf_link_get_next_id(uint32_t start_id, uint32_t *next_id);

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
# Linked by zig (zig_linker) with the static archives; abi3: cffi's C uses the limited API.
ffibuilder.set_source("httptrace._libbpf", C_SOURCE, include_dirs=[vendored_include()],
                      extra_objects=static_libs(), py_limited_api=True)


def build_in_place() -> None:
    if cross_build():
        sys.exit(f"build.py: an in-place build is for this machine ({platform.machine()}); build the "
                 f"{ARCH} wheel with `make wheel ARCH=...`")
    compile_bpf()
    tmp = os.path.join(ROOT, "build", "cffi")
    with zig_linker():
        so_path = ffibuilder.compile(tmpdir=tmp, verbose=False)
    target = os.path.join(ROOT, "httptrace", os.path.basename(so_path))
    shutil.copy2(so_path, target + ".tmp")
    os.replace(target + ".tmp", target)  # never a half-written module under a running process
    for stale in glob.glob(os.path.join(ROOT, "httptrace", "_libbpf.cpython-*.so")):
        os.remove(stale)  # Python would import a version-tagged module before the abi3 one
    print(f"built {os.path.relpath(target, ROOT)} and {len(BPF_SOURCES)} eBPF object(s)")


if __name__ == "__main__":
    if sys.argv[1:] == ["deps"]:
        print("\n".join(build_deps()))
    else:
        build_in_place()
