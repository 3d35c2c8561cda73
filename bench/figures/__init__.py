"""The figures of bench/run.py, one module per figure group; each has run(bench), which appends rows."""
