"""Start-up CPU time of the command line's client verbs.

Each verb runs in a fresh process (``python -m fflab``) against an API address
that refuses connections at once, so that what is timed is the start-up (the
imports, the options, the spec a submission builds) up to the first request.
CPU time is user + system of the child process (``os.wait4``): on a shared,
loaded machine it moves far less than the wall time. Prints, per verb, the
minimum over the repeats with the spread (median, maximum) and the heavy
libraries the verb imported (from ``python -X importtime``: there should be none).

    python -m benchmarks.cli_startup [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

VERBS = {
    "fflab --help": ["--help"],
    "fflab status": ["status"],
    "fflab submit": ["submit", "--preset", "quick"],
}
HEAVY = ("torch", "sklearn", "matplotlib", "scipy", "celery", "sqlalchemy", "fastapi")
GOAL_S = 1.0


def environment() -> dict[str, str]:
    # Port 9 (discard) on this host: every request is refused at once.
    return {**os.environ, "FFLAB_API_URL": "http://127.0.0.1:9", "FFLAB_API_KEY": "benchmark"}


def cpu_seconds(args: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``python -m fflab *args`` in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "fflab", *args], env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - started


def heavy_imports(args: list[str]) -> list[str]:
    """The top-level packages of HEAVY that ``python -X importtime`` shows the verb importing."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "fflab", *args], env=environment(),
                          capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(imported & set(HEAVY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{options.repeats} repeats")
    print(f"{'verb':<16} {'CPU min':>8} {'median':>8} {'max':>8} {'wall min':>9}  heavy imports")
    worst = 0.0
    for name, args in VERBS.items():
        cpu_seconds(args)  # warms the file cache
        runs = [cpu_seconds(args) for _ in range(options.repeats)]
        cpu = [c for c, _ in runs]
        worst = max(worst, min(cpu))
        heavy = heavy_imports(args)
        print(f"{name:<16} {min(cpu):>7.2f}s {statistics.median(cpu):>7.2f}s {max(cpu):>7.2f}s "
              f"{min(w for _, w in runs):>8.2f}s  {', '.join(heavy) or 'none'}")
    print(f"slowest verb's minimum: {worst:.2f} s of CPU ({'under' if worst < GOAL_S else 'OVER'} the {GOAL_S:.0f} s goal)")


if __name__ == "__main__":
    main()
