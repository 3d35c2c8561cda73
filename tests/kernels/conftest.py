# The scratch directories run_kernels.py leaves hold a copy of the source tree (artifacts/unit-bullseye/src:
# the unit tests run with Debian 11's Python there): pytest must not collect its tests a second time.
collect_ignore = ["artifacts"]
