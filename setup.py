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
        with httptrace_build.zig_linker():
            super().run()


setup(cffi_modules=["build.py:ffibuilder"],
      cmdclass={"build_py": BuildPyWithBpf, "build_ext": BuildExtWithZig},
      options={"bdist_wheel": {"py_limited_api": "cp39"}})  # the module is abi3: one wheel for 3.9+
