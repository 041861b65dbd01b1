"""CPU seconds to import the toolkit against importing Pyro alone, and which heavy libraries load.

    python benchmarks/import_time.py [--rounds 10]

Each round starts a fresh interpreter per command, in alternating order, and reads its user +
system CPU time from ``resource.getrusage(RUSAGE_CHILDREN)``; the median round is reported. Rows:
``pyro`` (``import pyro``), ``package`` (``import pyro_sparse_bnn``), ``cli_help``
(``psbnn --help``), each with ``cpu_s`` and ``ratio_over_pyro``; the ``package`` row also lists
the heavy libraries (ArviZ, xarray, pandas, scipy, matplotlib, seaborn, scikit-learn) that the
import left in ``sys.modules``. Goal (issue 20): ``package`` at most 1.2x ``pyro``.
Writes benchmarks/results/import_time.json.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys

from _common import print_table, write_results

HEAVY = ("arviz", "xarray", "pandas", "scipy", "matplotlib", "seaborn", "sklearn")
COMMANDS = {
    "pyro": [sys.executable, "-c", "import pyro"],
    "package": [sys.executable, "-c", "import pyro_sparse_bnn"],
    "cli_help": [sys.executable, "-m", "pyro_sparse_bnn.cli", "--help"],
}
GOAL = 1.2


def cpu_seconds(command: list[str]) -> float:
    """User + system CPU seconds of one run of ``command`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heavy_modules_loaded() -> list[str]:
    probe = f"import sys, pyro_sparse_bnn; print(*[m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return out.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for r in range(args.rounds):
        names = list(COMMANDS) if r % 2 == 0 else list(reversed(COMMANDS))
        for name in names:
            times[name].append(cpu_seconds(COMMANDS[name]))
    pyro_s = statistics.median(times["pyro"])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append(
            {
                "command": name,
                "cpu_s": median,
                "cpu_s_min": min(samples),
                "cpu_s_max": max(samples),
                "ratio_over_pyro": median / pyro_s,
            }
        )
    rows[1]["heavy_modules_loaded"] = " ".join(heavy_modules_loaded()) or "none"
    rows[1]["goal_ratio"] = GOAL
    rows[1]["meets_goal"] = rows[1]["ratio_over_pyro"] <= GOAL
    print_table(rows, ["command", "cpu_s", "cpu_s_min", "cpu_s_max", "ratio_over_pyro"])
    print(f"heavy libraries loaded by the import: {rows[1]['heavy_modules_loaded']}")
    print(f"written to {write_results('import_time', rows, rounds=args.rounds)}")


if __name__ == "__main__":
    main()
