# httptrace — the README's two commands are `make run` and `make test`; each works as the first command
# on a fresh Debian bookworm machine: it installs what is missing, builds, then runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

# libbpf, libelf and zlib are not among them: build.py builds them from Debian's source packages with zig
# (PyPI's ziglang, installed into the venv), dpkg-dev unpacks those.
BUILD_PKGS := clang-16 llvm-16 bpftool gcc dpkg-dev python3-dev python3-venv
# qemu-user-static: tests/e2e/test_wheel.py runs the arm64 wheel's module under qemu-aarch64-static.
TEST_PKGS := nginx wrk curl golang-go nodejs openssl libssl-dev iproute2 procps util-linux nghttp2-client prometheus \
	qemu-user-static
BENCH_PKGS := nginx wrk tcpdump tshark apache2-utils nghttp2-client
# tests/kernels: QEMU boots the guests of tests/kernels/kernels.txt (Debian kernels, debootstrapped Debian
# userlands) and runs the wheel in each; go builds the static seed server they serve. The arm64 guests:
# qemu-system-arm emulates them, qemu-user-static runs their userland's programs on this host (debootstrap
# --arch=arm64, the venv; the runner registers it with binfmt_misc itself, so no binfmt-support).
KERNEL_PKGS := qemu-system-x86 qemu-system-arm qemu-user-static busybox-static debootstrap golang-go

.PHONY: run test test-unit test-e2e test-kernels bench wheel vmlinux clean sysdeps-build sysdeps-src sysdeps-test sysdeps-kernels build deps
ZIGLANG := $(shell sed -n 's/^ZIGLANG_VERSION = "\([^"]*\)".*/\1/p' build.py)
DEB_SRC := /etc/apt/sources.list.d/httptrace-deb-src

# Install Debian packages that are missing; apt-get update once, only if something is missing.
define apt_ensure
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

sysdeps-build: sysdeps-src
	$(call apt_ensure,$(BUILD_PKGS))

# build.py fetches its sources with apt-get source, which needs deb-src entries: where there are none,
# add the deb-src twin of Debian's own deb entries (either configuration format bookworm uses).
sysdeps-src:
	@if ! apt-cache showsrc libbpf 2>/dev/null | grep -q '^Package: libbpf$$'; then \
	  echo "adding deb-src entries ($(DEB_SRC).*)"; \
	  if [ -f /etc/apt/sources.list ]; then sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > $(DEB_SRC).list; fi; \
	  if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
	    sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > $(DEB_SRC).sources; fi; \
	  apt-get update -qq; \
	fi

sysdeps-test: sysdeps-build
	$(call apt_ensure,$(TEST_PKGS))

# Where apt cannot install QEMU, tests/kernels skips (and fails under CI=true, which must run it).
sysdeps-kernels:
	$(call apt_ensure,$(KERNEL_PKGS)) || { [ "$$CI" != true ] && echo "QEMU is not installable here: tests/kernels will skip"; }

$(VENV)/.installed: pyproject.toml setup.py build.py | sysdeps-build
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cffi ziglang==$(ZIGLANG)
	$(PY) build.py deps >/dev/null
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

# Compiles bpf/*.bpf.c and the cffi module in place (fast; always run so an edit is never stale).
build: $(VENV)/.installed
	$(PY) build.py

# Only the vendored static libraries (a few minutes once, then cached in $${HTTPTRACE_CACHE:-/var/cache/httptrace}).
deps: $(VENV)/.installed
	$(PY) build.py deps

run: build
	$(PY) -m httptrace $(ARGS)

# Then the end-to-end suite once more with the compat programs (the family of kernels before 5.17).
test: sysdeps-test sysdeps-kernels build
	$(PY) -m mypy --strict httptrace
	$(PY) -m pytest -ra tests
	HTTPTRACE_PROGRAMS=compat $(PY) -m pytest -ra tests/e2e --ignore=tests/e2e/test_wheel.py

test-unit: build
	$(PY) -m pytest -ra tests/unit

test-e2e: sysdeps-test build
	$(PY) -m pytest -ra tests/e2e
	HTTPTRACE_PROGRAMS=compat $(PY) -m pytest -ra tests/e2e --ignore=tests/e2e/test_wheel.py

# The wheels, built once, in each guest of tests/kernels/kernels.txt (see docs/kernels.md): the x86-64 one
# in the amd64 guests, the aarch64 one in the arm64 guests (picked by platform tag; under CI=true a missing
# one fails the test); caches in ${HTTPTRACE_CACHE:-/var/cache/httptrace}.
test-kernels: sysdeps-kernels wheel
	HTTPTRACE_WHEEL="$$(ls $(CURDIR)/wheelhouse/httptrace-*_x86_64.whl $(CURDIR)/wheelhouse/httptrace-*_aarch64.whl)" \
	  $(PY) -m pytest -ra tests/kernels

bench: sysdeps-test build
	$(call apt_ensure,$(BENCH_PKGS))
	$(PY) bench/run.py

# One wheel per arch in wheelhouse/, each with its own eBPF object and module: ARCH=x86 or ARCH=arm64 builds
# one, no ARCH both. arm64 is cross-built here (build.py: zig cc, Debian's arm64 pyconfig.h); auditwheel
# (>= 6.4 reads the arch from the wheel) offers only this machine's tags by name, so a foreign wheel is
# repaired with `auto` and its tag checked after.
WHEEL_ARCHES := $(or $(ARCH),x86 arm64)
wheel: $(VENV)/.installed
	rm -rf dist wheelhouse
	@set -e; for arch in $(WHEEL_ARCHES); do \
	  case $$arch in x86) cpu=x86_64;; arm64) cpu=aarch64;; *) echo "ARCH=$$arch: x86 or arm64"; exit 1;; esac; \
	  plat=manylinux_2_17_$$cpu; [ $$cpu = $$(uname -m) ] && repair=$$plat || repair=auto; \
	  rm -rf dist build/lib.* build/temp.* build/bdist.*; \
	  echo "wheel for $$cpu"; \
	  HTTPTRACE_ARCH=$$cpu $(PY) -m pip wheel -q --no-build-isolation --no-deps -w dist .; \
	  PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m auditwheel repair --plat $$repair -w wheelhouse dist/httptrace-*.whl; \
	  ls wheelhouse/httptrace-*[.-]$$plat.whl >/dev/null || { echo "no $$plat wheel in wheelhouse/"; exit 1; }; \
	done; rm -rf dist
	@ls wheelhouse/

# vmlinux/$(ARCH)/vmlinux.h: x86 (the default) from this host's kernel; arm64 from Debian's arm64 kernel,
# booted under QEMU to read its BTF (vmlinux/guest_btf.py).
vmlinux:
	$(call apt_ensure,bpftool)
ifeq ($(or $(ARCH),x86),x86)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux/x86/vmlinux.h
else
	$(call apt_ensure,qemu-system-arm dpkg-dev)
	$(MAKE) $(VENV)/.installed
	$(PY) vmlinux/guest_btf.py $(ARCH)
endif

clean:
	rm -rf build dist wheelhouse *.egg-info httptrace/bpf/*.bpf.o httptrace/_libbpf*.so httptrace/_libbpf.c
