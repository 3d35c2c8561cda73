"""setuptools glue: build.py does the work (vendored static libraries, eBPF objects, the cffi module)."""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("httptrace_build", os.path.join(HERE, "build.py"))
httptrace_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(httptrace_build)


class BuildPyWithBpf(build_py):
    """Compile bpf/*.bpf.c into the package being built, so wheels carry the objects."""

    def run(self):
        super().run()
        httptrace_build.compile_bpf(os.path.join(self.build_lib, "httptrace", "bpf"))


class BuildExtWithZig(build_ext):
    """The cffi module, linked by zig for glibc 2.17 with the vendored static libraries (built if missing)."""

    def run(self):
        httptrace_build.build_deps()
        self.include_dirs[:0] = httptrace_build.cross_python_include()  # the target CPU's pyconfig.h
        with httptrace_build.zig_linker():
            super().run()


wheel_options = {"py_limited_api": "cp39"}  # the module is abi3: one wheel for 3.9+
if httptrace_build.cross_build():  # HTTPTRACE_ARCH=aarch64 on x86-64: tag the wheel with the target CPU
    wheel_options["plat_name"] = f"linux_{httptrace_build.ARCH}"
setup(cffi_modules=["build.py:ffibuilder"],
      cmdclass={"build_py": BuildPyWithBpf, "build_ext": BuildExtWithZig},
      options={"bdist_wheel": wheel_options})
