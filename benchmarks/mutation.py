"""Mutation testing of the money and quality core with mutmut 3 (issue 21, point 5).

mutmut names a mutant after its file path (``consensus/policy.py`` -> ``consensus.policy``) and
only switches a mutant on when that name equals the function's ``__module__``. Our setuptools
layout maps top-level folders into the package (``consensus/`` is ``crowdloop.consensus``), so a
plain run would trampoline every function under the wrong name and never activate a mutant.
This script therefore stages, per module, a tree with the *installed* layout
(``.mutation/<module>/crowdloop/consensus/policy.py`` ...), plus ``tests/`` and ``configs/``,
writes a ``[tool.mutmut]`` section into the staged ``pyproject.toml`` and runs ``mutmut run``
there with only the fast tests that exercise that module. mutmut puts the staged ``mutants/``
first on ``sys.path``, so ``import crowdloop`` resolves to the mutated copy, not the editable
install.

Run (not part of CI's test run; two shared cores, so nice and one worker by default)::

    nice -n 10 .venv/bin/python benchmarks/mutation.py                 # every module, the figures
    nice -n 10 .venv/bin/python benchmarks/mutation.py pay policy       # some modules
    nice -n 10 .venv/bin/python benchmarks/mutation.py --before pay     # record as the "before" figures
    .venv/bin/python benchmarks/mutation.py --survivors policy          # list survivors (after a run)

Rows go to ``benchmarks/results/mutation.json``: ``{module, mutants, killed, equivalent, ...}``;
the score is ``killed / (mutants - equivalent)``; timeouts are listed apart (not counted as killed).
Mutants judged equivalent are listed with a one-line reason in ``benchmarks/mutation_equivalents.json`` (by mutmut's mutant name).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutation"
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.json"
TARGET = 0.85


@dataclass(frozen=True)
class Module:
    """One row of the report: the file mutmut mutates, which of its functions count (mutant-name
    patterns; empty: all) and the fast tests that exercise it."""

    name: str
    path: str  # inside the installed layout, e.g. crowdloop/consensus/policy.py
    tests: tuple[str, ...]
    functions: tuple[str, ...] = field(default=())
    # mutmut's wall-clock limit per mutant is (tests' measured time + timeout_constant) × 15; modules whose
    # tests build a project in a module fixture need a larger constant on a loaded machine, or every
    # mutant "times out" in the fixture before a test runs
    timeout_constant: float = 1.0


MODULES = (
    Module("pay", "crowdloop/pay.py",
           ("tests/test_pay_fees_workers.py", "tests/test_money_budget.py", "tests/test_pay_mutants.py")),
    Module("consensus.policy", "crowdloop/consensus/policy.py",
           ("tests/consensus/test_gold_questions.py", "tests/consensus/test_adaptive_redundancy.py",
            "tests/consensus/test_policy_mutants.py")),
    Module("consensus.adaptive", "crowdloop/consensus/adaptive.py",
           ("tests/consensus/test_gold_questions.py", "tests/consensus/test_adaptive_redundancy.py",
            "tests/consensus/test_aggregators.py", "tests/consensus/test_policy_mutants.py")),
    # Fast store-side tests only: the end-to-end gold, re-ask and ring files build many-round projects
    # (out-of-fold fits every round), which made a mutant take ~15 s and a full run impossible here.
    Module("engine.quality", "crowdloop/engine/quality.py",
           ("tests/consensus/test_quality_mutants.py", "tests/consensus/test_quality_store_mutants.py")),
    Module("consensus.aggregators", "crowdloop/consensus/aggregators.py",
           ("tests/consensus/test_aggregators.py", "tests/consensus/test_aggregator_mutants.py")),
    # (test_collusion.py's simulated crowds and test_ring_blocking.py's 6-round engine runs reach this
    # module too, but mutmut's CPU limit is 30 x the covering tests' time: with them, a mutant that loops
    # forever in find_rings' union-find held the run for many minutes on the shared machine)
    Module("consensus.collusion", "crowdloop/consensus/collusion.py",
           ("tests/consensus/test_collusion_mutants.py", "tests/consensus/test_quality_mutants.py")),
    Module("engine.budget", "crowdloop/engine/budget.py",
           # (test_stopping_own_data.py and test_adaptive_redundancy.py reach this module too, but their
           # 30-round fixtures made a run take hours on the shared machine; the before run used them)
           # test_audit.py: the audit's share of a budget (audit_allowance)
           ("tests/test_money_budget.py", "tests/test_budget_mutants.py", "tests/test_audit.py")),
    # The audit's estimators (pure functions) against the simulations that check them (issue 15)
    Module("audit", "crowdloop/audit.py", ("tests/test_audit_estimators.py",)),
    # Selection eligibility only: the exclusion mask and the sets it is built from. Their tests run a
    # 120-item project (a mutant is decided in seconds); the engine-running module fixtures of
    # test_selection_policy/test_gold_questions/test_money_budget made the first runs time out.
    Module("engine.selection eligibility", "crowdloop/engine/selection.py",
           ("tests/test_eligibility_mutants.py",),
           ("crowdloop.engine.selection.x_excluded__mutmut_*",)),
    Module("engine.project eligibility", "crowdloop/engine/project.py",
           ("tests/test_eligibility_mutants.py",),
           ("crowdloop.engine.project.xǁProjectǁdispatched_items__mutmut_*",
            "crowdloop.engine.project.xǁProjectǁreserved_items__mutmut_*",
            "crowdloop.engine.project.xǁProjectǁaudit_reserve__mutmut_*",
            "crowdloop.engine.project.xǁProjectǁgold_set__mutmut_*",
            "crowdloop.engine.project.xǁProjectǁspent__mutmut_*",
            "crowdloop.engine.project.xǁProjectǁ_late_paid__mutmut_*")),
)


def slug(name: str) -> str:
    return name.replace(" ", "_").replace(".", "_")


def stage(module: Module) -> Path:
    """A fresh tree with the installed package layout, the tests and the mutmut config."""
    root = STAGE / slug(module.name)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        shutil.copytree(ROOT / folder, root / package.replace(".", "/"), ignore=ignore)
    for extra in ("tests", "configs"):
        shutil.copytree(ROOT / extra, root / extra, ignore=ignore)
    tests = [t for t in module.tests if (ROOT / t).exists()]
    cfg = {
        "source_paths": ["crowdloop"],
        "only_mutate": [module.path],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", "not slow", "-W", "ignore"],
        "pytest_add_cli_args_test_selection": tests,
        "also_copy": ["configs/"],
        "use_git_change_detection": False,
        "timeout_constant": module.timeout_constant,
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in cfg.items()]
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n")
    return root


def statuses(root: Path, module: Module) -> dict[str, int | None]:
    """mutmut's exit code per mutant of ``module`` (its ``.meta`` file), filtered to the counted functions."""
    meta = json.loads((root / "mutants" / (module.path + ".meta")).read_text())
    codes = meta["exit_code_by_key"]
    if module.functions:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, pat) for pat in module.functions)}
    return codes


def run(module: Module, max_children: int, names: tuple[str, ...] = ()) -> tuple[dict[str, int | None], float]:
    root = stage(module)
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *(names or module.functions)]
    start = time.perf_counter()
    # tests/conftest.py fails a session whose `git status` changed (issue 21's tree guard); from the staged
    # tree that would be the whole work tree, where other runs and edits go on: a mutant would count as
    # killed by them. The ceiling keeps git from finding the work tree, so the guard stands aside.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(STAGE)}
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    (root / "mutmut.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{module.name}: mutmut failed ({done.returncode}); see {root / 'mutmut.log'}\n{done.stdout[-2000:]}")
    return statuses(root, module), seconds


def summarize(module: Module, codes: dict[str, int | None], equivalents: dict[str, str]) -> dict[str, object]:
    killed = sum(1 for c in codes.values() if c in (1, 3))  # 3: pytest internal error, mutmut counts it as killed
    # mutmut's wall-clock limit is 15 × the tests' call time: under load a slow fixture hits it too,
    # so a timeout is reported apart and not counted as killed (read each one)
    timeouts = sum(1 for c in codes.values() if c in (-24, 24, 152, 255, 36))
    survived = sorted(k for k, c in codes.items() if c == 0)
    no_tests = sorted(k for k, c in codes.items() if c in (5, 33))
    equivalent = sorted(k for k in survived + no_tests if k in equivalents)
    mutants = len(codes)
    denominator = mutants - len(equivalent)
    return {"module": module.name, "file": module.path, "mutants": mutants, "killed": killed,
            "equivalent": len(equivalent), "timeouts": timeouts,
            "survived": [k for k in survived if k not in equivalents], "no_tests": [k for k in no_tests if k not in equivalents],
            "score": round(killed / denominator, 4) if denominator else None,
            "timed_out": sorted(k for k, c in codes.items() if c in (-24, 24, 152, 255, 36)),
            "tests": [t for t in module.tests if (ROOT / t).exists()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module names (default: all): " + ", ".join(m.name for m in MODULES))
    parser.add_argument("--before", action="store_true", help="record the figures as before_* (the suite as it was)")
    parser.add_argument("--survivors", action="store_true", help="print the survivors of the last run; run nothing")
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--rerun", nargs="+", default=(), metavar="MUTANT",
                        help="run only these mutants (names or globs) of one module and update its row: "
                             "e.g. the survivors or timeouts of the last full run after new tests")
    args = parser.parse_args()
    chosen = [m for m in MODULES if not args.modules or m.name in args.modules or slug(m.name) in args.modules]
    equivalents: dict[str, str] = json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    if args.survivors:
        for m in chosen:
            row = summarize(m, statuses(STAGE / slug(m.name), m), equivalents)
            print(f"{m.name}: {row['killed']}/{row['mutants']} killed, {row['equivalent']} equivalent")
            for name in row["survived"] + row["no_tests"]:
                print("   ", name)
        return
    if args.rerun:
        if len(chosen) != 1:
            raise SystemExit("--rerun: name exactly one module")
        codes, seconds = run(chosen[0], args.max_children, tuple(args.rerun))
        rerun_row(chosen[0], {k: c for k, c in codes.items() if c is not None}, equivalents, seconds)
        return
    for m in chosen:
        codes, seconds = run(m, args.max_children)
        row = summarize(m, codes, equivalents)
        row["seconds"] = round(seconds, 1)
        record(m.name, row, before=args.before)
        print(f"{m.name}: {row['killed']}/{row['mutants']} killed, {row['equivalent']} equivalent, "
              f"score {row['score']}, {len(row['survived'])} survived, {len(row['no_tests'])} without tests, {seconds:.0f}s")


def rerun_row(module: Module, codes: dict[str, int | None], equivalents: dict[str, str], seconds: float) -> None:
    """Fold a rerun of some mutants into the module's row of the last full run: each rerun mutant
    leaves its old class (survived, timed out) and is counted by its new exit code."""
    by_name = {r["module"]: r for r in json.loads(RESULTS.read_text())}
    row = dict(by_name[module.name])
    new = summarize(module, codes, equivalents)
    rerun = set(codes)
    old_timeouts = [k for k in row.get("timed_out", []) if k in rerun]
    row["killed"] = int(row["killed"]) + int(new["killed"])  # rerun mutants were survivors or timeouts before
    row["timed_out"] = sorted(set(row.get("timed_out", [])) - rerun | set(new["timed_out"]))
    row["timeouts"] = len(row["timed_out"])
    row["survived"] = sorted(set(row.get("survived", [])) - rerun | set(new["survived"]))
    row["no_tests"] = sorted(set(row.get("no_tests", [])) - rerun | set(new["no_tests"]))
    row["equivalent"] = int(row["equivalent"]) + int(new["equivalent"])  # rerun survivors judged equivalent since
    row["rerun"] = {"mutants": sorted(rerun), "killed": new["killed"], "were_timeouts": len(old_timeouts),
                    "seconds": round(seconds, 1)}
    denominator = int(row["mutants"]) - int(row["equivalent"])
    row["score"] = round(int(row["killed"]) / denominator, 4) if denominator else None
    by_name[module.name] = row
    RESULTS.write_text(json.dumps(list(by_name.values()), indent=1, ensure_ascii=False) + "\n")
    print(f"{module.name}: rerun of {len(rerun)}: {new['killed']} killed; row now {row['killed']}/{row['mutants']}, "
          f"{row['equivalent']} equivalent, score {row['score']}")


def record(name: str, row: dict[str, object], *, before: bool) -> None:
    """Update one module's row of the results file (read again just before: runs of other modules may write it)."""
    by_name = {r["module"]: r for r in (json.loads(RESULTS.read_text()) if RESULTS.exists() else [])}
    old = by_name.get(name, {})
    if before:
        keep = {k: v for k, v in old.items() if not k.startswith("before_")} or {"module": name}
        mutants, killed = int(row["mutants"]), int(row["killed"])  # type: ignore[call-overload]
        keep.update({"before_mutants": mutants, "before_killed": killed,
                     "before_score": round(killed / mutants, 4) if mutants else None})
        by_name[name] = keep
    else:
        by_name[name] = {**row, **{k: v for k, v in old.items() if k.startswith("before_")}}
    order = [m.name for m in MODULES]
    rows = sorted(by_name.values(), key=lambda r: order.index(r["module"]) if r["module"] in order else len(order))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
