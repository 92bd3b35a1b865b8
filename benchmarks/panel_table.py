"""The panel's table from the rows `benchmarks/molecules.py --out` wrote (issue 18's must-show).

  python benchmarks/panel_table.py benchmarks/results/panel_*.json             # every case on record
  python benchmarks/panel_table.py A.json B.json --summary                     # and each molecule's seeds

Files are read in the order given; a later file's row for the same molecule, condition and seed replaces an
earlier one (give the newest last). Each row: FSC = 0.5 of the run's map.mrc against the truth and of the true
poses' map (the ceiling), the good particles' pose errors against the floor, issue 18's two criteria as the row
recorded them (map within 1.25 × the ceiling, on clean data also within 1.5 × Nyquist; median within 2 × the
floor), the time, and the code (the commit the row names, else its file). ``--summary`` adds, per molecule and
condition, the seeds that succeeded against the seeds run (the issue's goal: at least 2 of 3 realistic ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["load_rows", "table", "summary"]

REQUIRED = ("molecule", "condition", "seed", "fsc_0.5", "fsc_0.5_true_poses", "pose_error_mean", "pose_error_median",
            "map_success", "pose_success")


def load_rows(paths: list[Path]) -> dict[tuple[str, str, int], dict]:
    """The rows of ``paths`` by (molecule, condition, seed), a later file's replacing an earlier's."""
    rows: dict[tuple[str, str, int], dict] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"{path}: not a JSON file of panel rows ({err})") from None
        # a list of rows, or a record of a study holding them under "rows" / "panel_rows" (other lists: its runs)
        found = data if isinstance(data, list) else [r for k in ("rows", "panel_rows") for r in data.get(k, [])]
        if not found:
            raise SystemExit(f"{path}: no panel rows (a list, or one under 'rows' or 'panel_rows')")
        for i, row in enumerate(found):
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise SystemExit(f"{path}: row {i} lacks {', '.join(missing)} (not a benchmarks/molecules.py row)")
            rows[(row["molecule"], row["condition"], int(row["seed"]))] = {**row, "file": Path(path).name}
    return rows


def _floor(row: dict) -> str:
    floor = row.get("pose_floor_median")
    return "—" if floor is None else f"{floor:.2f}°"


def table(rows: dict[tuple[str, str, int], dict]) -> str:
    """Markdown: one line per case, sorted by molecule, condition and seed."""
    lines = ["| molecule | condition | seed | FSC = 0.5 (true poses) | ratio | pose error mean / median (floor) | "
             "time | criteria | code |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows):
        r = rows[key]
        ok = r["map_success"] and r["pose_success"]
        verdict = "**success**" if ok else ", ".join(
            f"{what} fails" for what, good in (("map", r["map_success"]), ("poses", r["pose_success"])) if not good)
        minutes = f"{r['seconds'] / 60:.1f} min" if "seconds" in r else "—"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {r['fsc_0.5']:.2f} Å ({r['fsc_0.5_true_poses']:.2f} Å) | "
                     f"{r['fsc_0.5'] / r['fsc_0.5_true_poses']:.2f} | {r['pose_error_mean']:.2f}° / "
                     f"{r['pose_error_median']:.2f}° ({_floor(r)}) | {minutes} | {verdict} | "
                     f"{r.get('code', r['file'])} |")
    return "\n".join(lines)


def summary(rows: dict[tuple[str, str, int], dict]) -> str:
    """Markdown: per molecule and condition, the seeds that met both criteria, of those run."""
    cases: dict[tuple[str, str], list[bool]] = {}
    for (molecule, condition, _), r in sorted(rows.items()):
        cases.setdefault((molecule, condition), []).append(bool(r["map_success"] and r["pose_success"]))
    lines = ["| molecule | condition | seeds that succeeded |", "|---|---|---|"]
    lines += [f"| {m} | {c} | {sum(ok)} of {len(ok)} |" for (m, c), ok in sorted(cases.items())]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="JSON rows of benchmarks/molecules.py --out, oldest first")
    p.add_argument("--summary", action="store_true", help="also each molecule's seeds that succeeded")
    args = p.parse_args()
    rows = load_rows(args.files)
    print(table(rows))
    if args.summary:
        print()
        print(summary(rows))


if __name__ == "__main__":
    main()
