"""setuptools glue: build.py does the work (eBPF objects + the cffi module)."""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py


HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithBpf(build_py):
    """Compile bpf/*.bpf.c into the package being built, so wheels carry the objects."""

    def run(self):
        spec = importlib.util.spec_from_file_location("httptrace_build", os.path.join(HERE, "build.py"))
        httptrace_build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(httptrace_build)
        super().run()
        httptrace_build.compile_bpf(os.path.join(self.build_lib, "httptrace", "bpf"))


setup(cffi_modules=["build.py:ffibuilder"], cmdclass={"build_py": BuildPyWithBpf})
