"""Figure P: bench/parser_bench.py (the reassembler alone, no kernel), when present; its lines reported.
"""
from __future__ import annotations

import os
import re
import subprocess

from harness import HERE, PY, ROOT, row


def run(bench) -> None:
    script = os.path.join(HERE, "parser_bench.py")
    if not os.path.exists(script):
        return
    out = subprocess.run([PY, script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = out.stdout.strip()
    bench.raw["parser_bench"] = {"returncode": out.returncode, "stdout": text[-4000:], "stderr": out.stderr[-2000:]}
    lines = text.splitlines()
    picked = [line for line in lines if "one event per message" in line][:1] + lines[-1:]
    display = "; ".join(re.sub(r"\s+", " ", line).strip() for line in picked) or f"exit {out.returncode}"
    bench.rows.append(row("P", "Parser micro benchmark (bench/parser_bench.py, no kernel)", None,
                          display[:200], "(reported)", None if out.returncode == 0 else False))
