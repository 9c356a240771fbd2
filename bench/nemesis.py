"""Nothing acknowledged is lost: runs of the fault-injection harness (e2e/nemesis.py) on the local
cluster, and what they proved.

It brings up the local cluster of e2e/local (Linux, root, what `bash .ci/setup.sh` built) with the
operator, then for each mode and each seed runs one nemesis run in a namespace of its own: a fresh
resource under load (writes acknowledged by ``WAIT 1``, stream entries, a consumer group), the seed's
faults one after the other (each healed and recovered from before the next), then the checker. It
prints one line per run, then per mode a table per fault kind: runs, writes and entries acknowledged,
lost (must be 0), time to recover from the fault (healed -> Ready, topology settled, writes
acknowledged again; median and max); and for every failing seed the command that replays it. The
logs of failing runs (operator, containers, events, objects, the workload's record) are kept.

    .venv/bin/python bench/nemesis.py --runs N [--mode sentinel|cluster|both] [--seed S] [--smoke]
                            [--keep DIR] [--operator-commit REV] [--upgrade IMAGE]

``--seed S`` runs seeds S, S+1, ... (default: a random start, printed); the first fault of seed S
is ``menu[S % len(menu)]``, so consecutive seeds go through every kind. ``--smoke`` is one quick run
per mode (a redis-server SIGKILLed). ``--operator-commit REV`` runs the operator of that commit
(``git archive``) instead of the working tree, e.g. while the tree is being edited. ``--upgrade IMAGE``
runs, instead of the seeds' faults, an upgrade of every pod from ``redis:7.2`` to ``IMAGE`` under the
same load and checks (``valkey/valkey:9.1``, ``valkey/valkey:8.1``, ``redis:8.0``: an engine of the
matrix, built by `bash .ci/build-engine.sh`); e2e/local/test_nemesis.py runs it on every engine
built here.

CI goes through this entry point: e2e/local/test_nemesis.py calls :func:`main` with ``--mode M --seed S
--runs 1`` for each of its seeds, on the e2e session's local cluster (``local=``) instead of a new one,
and fails when it exits non-zero or prints no table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _project

ROOT = _project.use(__file__, "e2e", "e2e/local", "tests/support")

import localcluster  # noqa: E402
import nemesis  # noqa: E402
from e2e_support import LocalBackend  # noqa: E402


def stamp() -> str:
    return time.strftime("%H:%M:%S")


def say(line: str) -> None:
    print(f"[{stamp()}] {line}", flush=True)


def operator_tree(rev: str, into: Path) -> Path:
    """The operator package of commit ``rev``, extracted under ``into``; the PYTHONPATH entry. The
    operator's pod reads it as the image's user, and its /tmp is a volume of its own: ``into`` is
    outside /tmp and readable by everyone."""
    into.chmod(0o755)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "operator"], capture_output=True,
                             check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=120)
    return into / "operator"


def table(mode: str, results: list[nemesis.RunResult]) -> str:
    menu = (*nemesis.FAULTS[mode], nemesis.UPGRADE)
    kinds = list(dict.fromkeys(k for k in menu if any(k in r.plan for r in results)))
    rows = []
    header = ("fault kind", "runs", "acked writes", "acked entries", "lost", "recover median", "recover max")
    for kind in [*kinds, "all"]:
        runs = [r for r in results if kind == "all" or any(f.kind == kind for f in r.faults)
                or (not r.faults and r.plan.startswith(kind))]
        times = [f.recover_seconds for r in runs for f in r.faults
                 if (kind == "all" or f.kind == kind) and f.recover_seconds is not None]
        unrecovered = sum(1 for r in runs for f in r.faults
                          if (kind == "all" or f.kind == kind) and f.recover_seconds is None)
        rows.append((
            kind, str(len(runs)), f"{sum(r.acked_writes for r in runs):,}",
            f"{sum(r.acked_entries for r in runs):,}", str(sum(r.lost for r in runs)),
            f"{statistics.median(times):.1f} s" if times else "-",
            (f"{max(times):.1f} s" if times else "-") + (f" ({unrecovered} not)" if unrecovered else ""),
        ))
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = [f"{mode}: {len(results)} runs, {sum(r.ok for r in results)} ok"]
    for row in (header, *rows):
        lines.append("  " + "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                      for i, (x, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def seeds(args: argparse.Namespace) -> dict[str, list[int]]:
    """The seeds to run, per mode: with ``--smoke`` one per mode whose only fault is a redis-server
    SIGKILLed (from ``--seed``, default 0), else ``--runs`` consecutive seeds from ``--seed``."""
    modes = list(nemesis.MODES) if args.mode == "both" else [args.mode]
    if args.smoke:
        return {mode: [nemesis.seed_for(mode, "kill-redis", args.seed or 0)] for mode in modes}
    start = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    return {mode: list(range(start, start + args.runs)) for mode in modes}


def main(argv: Sequence[str] | None = None, *, local: Any = None) -> int:
    """The command line; ``local``: a running local cluster (with its operator) to use instead of
    bringing one up (the e2e tier's, in CI)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs per mode")
    parser.add_argument("--mode", choices=("sentinel", "cluster", "both"), default="both")
    parser.add_argument("--seed", type=int, default=None, help="the first seed (default: a random one)")
    parser.add_argument("--smoke", action="store_true", help="one quick run per mode")
    parser.add_argument("--keep", type=Path, default=None, help="where failing runs' logs go (default: a new "
                                                                "directory under /tmp)")
    parser.add_argument("--operator-commit", default=None, help="run the operator of this commit")
    parser.add_argument("--verbose", action="store_true", help="say what each recovery waited for")
    parser.add_argument("--keep-all", action="store_true", help="keep the logs of every run, not only failing ones")
    parser.add_argument("--upgrade", metavar="IMAGE", default=None,
                        help=f"runs that upgrade every pod from {nemesis.IMAGE} to IMAGE, instead of the seeds' faults")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if local is not None and args.operator_commit:
        parser.error("--operator-commit needs a local cluster of its own")
    reason = None if local is not None else localcluster.missing_requirements()
    if reason:
        print(f"the local cluster cannot run here: {reason}", file=sys.stderr)
        return 2
    plan = seeds(args)
    modes = list(plan)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="rmsg-nemesis-"))
    keep.mkdir(parents=True, exist_ok=True)
    say(f"seeds: {', '.join(f'{m} {s[0]}..{s[-1]}' for m, s in plan.items())}; failing runs kept in {keep}")

    began = time.monotonic()
    results: dict[str, list[nemesis.RunResult]] = {mode: [] for mode in modes}
    extra = f" --operator-commit {args.operator_commit}" if args.operator_commit else ""
    if args.upgrade:
        say(f"every run upgrades {nemesis.IMAGE} -> {args.upgrade} (the seeds name the runs)")
    with tempfile.TemporaryDirectory(prefix="rmsg-nemesis-operator-", dir="/var/tmp") as tree:
        env = None
        if args.operator_commit:
            env = {"PYTHONPATH": str(operator_tree(args.operator_commit, Path(tree)))}
            say(f"the operator runs commit {args.operator_commit} from {env['PYTHONPATH']}")
        with contextlib.ExitStack() as stack:
            if local is None:
                local = stack.enter_context(localcluster.LocalCluster())
                local.start_operator(env)
                say(f"local cluster up in {local.timings['start']:.1f}s")
            cluster = LocalBackend(local.kubeconfig, local=local)
            with (keep / "results.jsonl").open("a") as record:
                for mode in modes:
                    for seed in plan[mode]:
                        namespace = f"nemesis-{mode[0]}{seed}-{secrets.token_hex(2)}"
                        cluster.kubectl("create", "namespace", namespace)
                        try:
                            result = nemesis.run_seed(cluster, local, namespace, mode, seed, say=say, keep_dir=keep,
                                                      operator_env=env, replay_extra=extra,
                                                      verbose=args.verbose, keep_all=args.keep_all,
                                                      plan=(nemesis.upgrade_plan(mode, args.upgrade, seed)
                                                            if args.upgrade else None))
                        finally:
                            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
                        results[mode].append(result)
                        record.write(json.dumps({**asdict(result), "lost": result.lost, "ok": result.ok}) + "\n")
                        record.flush()
    total = time.monotonic() - began

    print()
    for mode in modes:
        print(table(mode, results[mode]))
        print()
    failed = [r for mode in modes for r in results[mode] if not r.ok]
    print(f"total: {sum(len(r) for r in results.values())} runs in {total / 60:.1f} min "
          f"({', '.join(f'{m}: {sum(x.seconds for x in results[m]) / 60:.1f} min' for m in modes)})")
    if failed:
        print(f"\n{len(failed)} failing seed(s):")
        for r in failed:
            print(r.summary())
    else:
        print("no failing seed")
    print("not expressed on this cluster: " + "; ".join(f"{k} ({v})" for k, v in nemesis.NOT_EXPRESSED.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
