"""`cpt sweep`: methods x shots (or x known ratios, multi-label) x seeds of `cpt fit`, gathered
into one tidy CSV, a table and a plot. `--protocol base2new` trains each run on the base half of
its tasks' classes, evaluates it on the new half too, and tabulates base, new and their harmonic
mean.

A method may carry any of its boolean options, e.g. `scpnet+no-prior` or `coop+class-specific`.
Every combination runs into OUT/<method>-<shots>shot-seed<seed>/ (or OUT/<method>-known<ratio>-seed<seed>/);
finished runs are reused, so an interrupted sweep continues where it stopped.

A sweep can be split across processes, machines or a scheduler's array: the run list (methods,
then axis values, then seeds, in the order given) is fixed by the sweep's options, and shard I of
N takes its runs I, I+N, I+2N, ... (counted from 1); under torchrun each rank runs a shard. The
sweep's options go to OUT/sweep.json before any run starts, and a shard given other options than
those recorded is refused; each shard keeps OUT/shards/I-of-N.json up to date (its runs and
their status). The shard that finishes last (every run of the sweep finished) gathers
results.csv, table.md, seconds.csv and seconds.md (fitting time per run) and the plot; `gather(OUT)` does the same from the folder alone. Every
file is written atomically, and gathering the same runs twice writes the same files, so shards
finishing at once are harmless.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any

import pandas as pd

from cpt import dist
from cpt import run as R
from cpt.console import log
from cpt.errors import CptError
from cpt.eval.report import AXIS_PLOTS, plot_against
from cpt.eval.evaluate import EvalRequest, evaluate_target
from cpt.fit import fit
from cpt.plan import FitRequest, applicable, axis_stem, option_classes, plan, task_kind
from cpt.io import write_csv, write_json, write_text
from cpt.kinds import KINDS, TaskKind
from cpt.methods import METHODS, method_class
from cpt.options import declared, flag

SPEC = "sweep.json"  # the sweep's options, its kind and its run list
PROTOCOLS = ("standard", "base2new")
NEW = "classes-new"  # base2new: RUN/classes-new/, the run evaluated on its tasks' new classes
SHARDS = "shards"  # OUT/shards/I-of-N.json: each shard's runs and how far it got


def parse_method(label: str, kind: TaskKind) -> tuple[str, dict[str, bool]]:
    """`scpnet+no-prior+no-gcn` -> ("scpnet", {"no_prior": True, "no_gcn": True}): the method's
    boolean options (from its declarations) on tasks of `kind`; a method named with a + (lp++) is
    read whole."""
    named = [m for m in METHODS if label == m or label.startswith(m + "+")]
    method = max(named, key=len) if named else label.split("+")[0]
    flags = [f for f in label[len(method):].split("+") if f]
    cls = method_class(method)
    accepted = applicable(cls, kind)
    switches = {f.name for c in option_classes(cls, kind) for f in declared(c)
                if f.name in accepted and typing.get_type_hints(c)[f.name] is bool}
    options = {f.replace("-", "_"): True for f in flags}
    unknown = [f for f in options if f not in switches]
    if unknown:
        raise CptError(f"--methods {label}: {flag(unknown[0])} is not a switch of {method}; its switches are "
                       f"{', '.join(flag(s)[2:] for s in sorted(switches))}.")
    return method, options


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`, counted from 1 as `#SBATCH --array=1-N` numbers its tasks: the runs
    at positions index - 1, index - 1 + count, ... (from 0) of the sweep's run list. Every run
    belongs to exactly one shard, and shards' run counts differ by at most one."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def file(self) -> str:
        """Its manifest's name under OUT/shards/."""
        return f"{self.index}-of-{self.count}.json"

    def owns(self, position: int) -> bool:
        return position % self.count == self.index - 1


def parse_shard(text: str) -> Shard:
    """`--shard 2/4` -> Shard(2, 4); anything else is the user's error, said in their terms."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not found:
        raise CptError(f"--shard takes I/N, shard I of N counted from 1, e.g. --shard 1/4 or --shard "
                       f"$SLURM_ARRAY_TASK_ID/4 with #SBATCH --array=1-4 (got {text!r}).")
    index, count = int(found[1]), int(found[2])
    if count < 1:
        raise CptError(f"--shard {text}: N, the number of shards, must be at least 1.")
    if not 1 <= index <= count:
        zero = (f" For an index counted from 0 (an array from 0, a rank) give $((INDEX+1))/{count}."
                if index == 0 else "")
        raise CptError(f"--shard {text}: there is no shard {index} of {count}; shards count from 1 to {count} "
                       f"(1/{count} to {count}/{count}).{zero}")
    return Shard(index, count)


def _rank_shard(shard: Shard | None) -> Shard | None:
    """The shard this process runs: `shard` (None: the whole sweep); under torchrun each rank a
    share of it, rank R of W taking shard R + 1 of W (with --shard I/N: (I - 1)W + R + 1 of NW)."""
    rank, world = dist.env_rank_world()
    if world == 1:
        return shard
    if shard is None:
        return Shard(rank + 1, world)
    return Shard((shard.index - 1) * world + rank + 1, shard.count * world)


@dataclass(frozen=True)
class SweepRun:
    """One combination of the sweep: its label (method and switches), axis value, seed and request."""

    label: str
    value: Any
    seed: int
    request: FitRequest
    base2new: bool = False  # trained on the base classes, then evaluated on the new ones into RUN/classes-new

    @property
    def dir(self) -> Path:
        return Path(self.request.out)


@dataclass
class SweepOutcome:
    """What a `sweep` call did: `results` are the whole sweep's when it gathered, else this shard's runs'."""

    results: pd.DataFrame
    gathered: bool
    shard: Shard | None = None
    ran: list[str] = field(default_factory=list)  # this call's runs (directory names)
    waiting: list[str] = field(default_factory=list)  # runs of other shards not finished yet


def sweep(base: FitRequest, methods: list[str], shots: list[int], seeds: list[int], out: Path,
          known_ratios: list[float] | None = None, shard: Shard | None = None, protocol: str = "standard",
          ) -> SweepOutcome:
    """Run (or reuse) every combination, or shard `shard`'s share of them (under torchrun, each
    rank a share), then gather the tidy results (one row per run, task, metric) once every run of
    the sweep has finished.

    The second axis is the tasks' kind's: shots (single-label) or known ratios (multi-label).
    `base.options` apply to each method they are an option of. `protocol` base2new trains every
    run on its tasks' base classes (--classes base) and evaluates it on their new ones too; the
    table then holds base, new and their harmonic mean.
    """
    out = Path(out)
    kind = task_kind(base)[0]
    if protocol not in PROTOCOLS:
        raise CptError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}.")
    _check_passed_on(base, methods, kind)
    if protocol == "base2new":
        base = _base2new(base, methods, kind)
    if kind.name == "retrieval":
        raise CptError("cpt sweep varies shots (single-label) or known ratios (multi-label); retrieval tasks have "
                       "neither. Run `cpt fit` per method and seed, and compare the runs with `cpt eval RUN1 RUN2 "
                       "... --out DIR` (scripts/retrieval_table.py does this for toy-video).")
    axis = kind.axis
    values = known_ratios if axis == "known_ratio" else shots
    if not methods or not seeds or not values:
        raise CptError("--methods, --seeds and --shots (or --known-ratios) each need at least one value.")
    if known_ratios and axis != "known_ratio":
        raise CptError("--known-ratios applies to multi-label tasks; these tasks are single-label (use --shots).")
    shard = _rank_shard(shard)
    base = replace(base, device=dist.local_device(base.device))
    runs = _runs(base, methods, kind, values, seeds, out)
    for label in methods:  # every method's options checked (ranges, combinations) before the first run starts
        plan(next(r.request for r in runs if r.label == label))
    spec = _spec(base, methods, axis, values, seeds)
    if protocol != "standard":  # standard sweeps keep the spec (and the id) they had before protocols existed
        spec["protocol"] = protocol
    record = {"spec": spec, "id": _digest(spec), "kind": kind.name, "runs": [r.dir.name for r in runs]}
    _record_spec(out, record, shard)
    mine = [r for i, r in enumerate(runs) if shard is None or shard.owns(i)]
    with dist.alone():
        if shard is not None:
            log.info("sweep: shard %s runs %d of the %d runs", shard, len(mine), len(runs))
            _run_shard(out, shard, record["id"], mine)
        else:
            for r in mine:
                _run_once(r)
    ran = [r.dir.name for r in mine]
    waiting = [r.dir.name for r in runs if not _finished(r)] if shard is not None else []
    if waiting:
        return SweepOutcome(_results(mine, axis), False, shard, ran, waiting)
    return SweepOutcome(_gather(out, record, runs, kind), True, shard, ran)


def gather(out: Path) -> pd.DataFrame:
    """results.csv, table.md, the seconds and the plot of the sweep in `out`, from OUT/sweep.json and its runs;
    refuses (naming them and their shards) while any run has not finished."""
    out = Path(out)
    record = _read_spec(out)
    spec, kind = record["spec"], KINDS[record["kind"]]
    base = FitRequest(**{f.name: spec[f.name] for f in fields(FitRequest) if f.name in spec})
    if spec.get("protocol") == "base2new":
        base = _base2new(base, spec["methods"], kind)
    runs = _runs(base, spec["methods"], kind, spec[kind.axis], spec["seeds"], out)
    return _gather(out, record, runs, kind)


def _check_passed_on(base: FitRequest, methods: list[str], kind: TaskKind) -> None:
    """Refuse a --preset or an option that none of the sweep's methods takes: it would change nothing."""
    classes = [method_class(parse_method(label, kind)[0]) for label in methods]
    if base.preset and not any(base.preset in cls.presets for cls in classes):
        raise CptError(f"--preset {base.preset} is a preset of none of the sweep's methods ({', '.join(methods)}); "
                       "`cpt methods NAME` lists a method's presets.")
    unused = [k for k in base.options if not any(k in applicable(cls, kind) for cls in classes)]
    if unused:
        raise CptError(f"{flag(unused[0])} is an option of none of the sweep's methods ({', '.join(methods)}) on "
                       f"{kind.name} tasks; `cpt methods NAME` lists a method's options.")


def _for_method(base: FitRequest, method: str, kind: TaskKind, **changes: Any) -> FitRequest:
    """The sweep's request for one method: the options it takes, and the --preset if it is one of its own."""
    cls = method_class(method)
    own = {k: v for k, v in base.options.items() if k in applicable(cls, kind)}
    preset = base.preset if base.preset in cls.presets else None
    return replace(base, method=method, preset=preset, options={**own, **changes.pop("options", {})}, **changes)


def _base2new(base: FitRequest, methods: list[str], kind: TaskKind) -> FitRequest:
    """The sweep's request on the tasks' base classes, once every method is known to carry over to
    classes it never saw (refused before any run starts otherwise)."""
    if kind.name != "single-label":
        raise CptError(f"--protocol base2new splits the classes of single-label tasks; these tasks are {kind.name}.")
    request = replace(base, options={**base.options, "classes": "base"})
    for label in methods:
        name, switches = parse_method(label, kind)
        cfg = plan(_for_method(request, name, kind, options=switches)).method_config
        if not method_class(name).transfers(cfg):
            raise CptError(f"--protocol base2new: {label} learns weights for each class, so it cannot classify the new "
                           "classes; leave it out (zeroshot, coop, kgcoop, maple and softcpt carry over).")
    return request


def _runs(base: FitRequest, methods: list[str], kind: TaskKind, values: list, seeds: list[int],
          out: Path) -> list[SweepRun]:
    """The sweep's run list, in its one order: methods, then axis values, then seeds, as given."""
    runs = []
    for label in methods:
        method, switches = parse_method(label, kind)
        for value in values:
            for seed in seeds:
                run = out / f"{label}-{axis_stem(kind.axis, value)}-seed{seed}"
                request = _for_method(base, method, kind, seed=seed, out=str(run),
                                      options={kind.axis: value, **switches})
                runs.append(SweepRun(label, value, seed, request, base.options.get("classes") == "base"))
    return runs


def _spec(base: FitRequest, methods: list[str], axis: str, values: list, seeds: list[int]) -> dict[str, Any]:
    """What decides the sweep's results (as JSON reads it back): the request's settings but where
    and how it runs and the per-run method and seed, then the methods, axis values and seeds."""
    request = {k: v for k, v in asdict(base).items() if k not in (*HOW_NOT_WHAT, "method", "seed")}
    return json.loads(json.dumps({**request, "methods": methods, axis: values, "seeds": seeds}, default=str))


def _digest(spec: dict[str, Any]) -> str:
    return sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _record_spec(out: Path, record: dict[str, Any], shard: Shard | None) -> None:
    """Write OUT/sweep.json. The whole sweep replaces what is there (it is now this folder's
    sweep); a shard writes it only where none is, and is refused if the recorded options differ."""
    path = out / SPEC
    if shard is None:
        if not path.exists() or _read_spec(out, quiet=True) != record:
            write_json(path, record)
        return
    _write_new(path, record)
    recorded = _read_spec(out)["spec"]
    if recorded != record["spec"]:
        keys = sorted(set(recorded) | set(record["spec"]))
        differ = "; ".join(f"{k}: {recorded.get(k)!r} there, {record['spec'].get(k)!r} here"
                           for k in keys if recorded.get(k) != record["spec"].get(k))
        raise CptError(f"{path} records a sweep with other options ({differ}); every shard of a sweep needs the same "
                       f"options. Give this shard those options, choose another --out, or, to start another sweep "
                       f"in {out}, delete {path} first (finished runs with the same options are still reused).")


def _write_new(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` unless a file is there: of shards starting at once, one
    writes it whole and the others find it (a hard link, unlike a rename, never replaces a file)."""
    if path.exists():
        return
    new = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_json(new, obj)
    try:
        os.link(new, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not path.exists():
            os.replace(new, path)
    finally:
        new.unlink(missing_ok=True)


def _read_spec(out: Path, quiet: bool = False) -> dict[str, Any] | None:
    """OUT/sweep.json, checked; `quiet`: an unreadable one is None (the whole sweep replaces it)."""
    path = out / SPEC
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(record, dict) and {"spec", "id", "kind", "runs"} <= set(record) and record["kind"] in KINDS
                and {"methods", "seeds", KINDS[record["kind"]].axis} <= set(record["spec"])):
            raise ValueError("it lacks the sweep's options, kind or runs")
    except FileNotFoundError as exc:
        raise CptError(f"{out} holds no {SPEC}: it is not a folder `cpt sweep` (of this version) wrote its runs into. "
                       f"Give the sweep's --out, or run the sweep there again (finished runs are reused).") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        if quiet:
            return None
        raise CptError(f"{path} is damaged ({exc}); run the sweep's command again without --shard to write it anew "
                       "(finished runs are reused).") from exc
    return record


def _run_shard(out: Path, shard: Shard, sweep_id: str, runs: list[SweepRun]) -> None:
    """Run `runs`, keeping OUT/shards/I-of-N.json up to date: each run's status and the shard's."""
    statuses = {r.dir.name: "finished" if _finished(r) else "pending" for r in runs}

    def manifest(status: str, error: str | None = None) -> None:
        write_json(out / SHARDS / shard.file, {
            "shard": str(shard), "sweep": sweep_id, "status": status, **({"error": error[:500]} if error else {}),
            "host": socket.gethostname(), "pid": os.getpid(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": statuses})

    manifest("running")
    for r in runs:
        if statuses[r.dir.name] == "finished":
            continue
        statuses[r.dir.name] = "running"
        manifest("running")
        try:
            _run_once(r)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            statuses[r.dir.name] = status
            try:  # best effort: the error that stopped the run matters more
                manifest(status, None if status == "interrupted" else f"{r.dir.name}: {exc}")
            except Exception as also:
                log.warning("could not record status %r in %s: %s", status, out / SHARDS / shard.file, also)
            raise
        statuses[r.dir.name] = "finished"
        manifest("running")
    manifest("complete")


HOW_NOT_WHAT = ("out", "device", "cache_dir", "clip_cache", "encode_batch_size")  # request fields results ignore


def _same_run(config: dict, req: FitRequest) -> bool:
    """Whether the run `config` describes was asked for with the same options as `req`."""
    wanted = json.loads(json.dumps(asdict(req), default=str))
    return all(config["request"].get(k) == v for k, v in wanted.items() if k not in HOW_NOT_WHAT)


def _run_once(r: SweepRun) -> None:
    """Fit the run into its folder unless it already finished with the same options; an
    interrupted one resumes from its checkpoint; one made with other options is run again.
    base2new: then evaluate it on the new classes, unless done."""
    req, run = r.request, r.dir
    config = R.read_config(run) if R.is_run(run) else None
    same = config is not None and _same_run(config, req)
    if same and config.get("status") == "finished":
        pass
    elif same and (run / R.CHECKPOINT).exists():
        log.info("sweep: resuming %s", run)
        fit(FitRequest(out=str(run)), resume=True)
    else:
        if config is not None and not same:
            log.warning("sweep: %s was made with other options; running it again with these", run)
            shutil.rmtree(run / NEW, ignore_errors=True)
        log.info("sweep: %s, seed %d -> %s", req.method, req.seed, run)
        fit(req, overwrite=True)
    if r.base2new and not (run / NEW / "metrics.csv").exists():
        log.info("sweep: %s on the new classes -> %s", run, run / NEW)
        evaluate_target(EvalRequest(target=str(run), classes="new", device=req.device, cache_dir=req.cache_dir,
                                    clip_cache=req.clip_cache))


def _state(run: SweepRun) -> str:
    """How far `run` got: finished, not started, running (or killed), interrupted, failed, or made
    with other options."""
    config = R.read_config(run.dir) if R.is_run(run.dir) else None
    if config is None:
        return "not started"
    if not _same_run(config, run.request):
        return "made with other options"
    status = config.get("status", "running")
    if status == "finished" and not (run.dir / "metrics.csv").exists():
        return "metrics.csv missing"
    if status == "finished" and run.base2new and not (run.dir / NEW / "metrics.csv").exists():
        return "not evaluated on the new classes"
    return {"running": "running or killed"}.get(status, status)


def _finished(run: SweepRun) -> bool:
    return _state(run) == "finished"


def _missing(out: Path, record: dict[str, Any], runs: list[SweepRun], missing: list[SweepRun]) -> str:
    """The error of gathering before every run finished: the runs, grouped by the shard that owns them."""
    manifests = []  # this sweep's readable manifests, oldest update first
    for path in sorted((out / SHARDS).glob("*-of-*.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            parse_shard(manifest["shard"])
        except (OSError, ValueError, TypeError, KeyError, CptError):
            continue
        if manifest.get("sweep") == record["id"] and isinstance(manifest.get("runs"), dict):
            manifests.append(manifest)
    manifests.sort(key=lambda m: str(m.get("updated", "")))
    listed = {name: m for m in manifests for name in m["runs"]}
    counts = sorted({parse_shard(m["shard"]).count for m in manifests})
    groups: dict[str, list[str]] = {}
    for r in missing:
        entry = f"{r.dir.name} ({_state(r)})"
        if r.dir.name in listed:
            m = listed[r.dir.name]
            owner = f"shard {m['shard']}, {m.get('status')}"
            if m.get("status") == "running":
                owner += f" on {m.get('host')} (pid {m.get('pid')}, last update {m.get('updated')}) or killed"
            elif m.get("error"):
                owner += f": {m['error']}"
        elif counts:
            position = runs.index(r)
            owners = [Shard(position % n + 1, n) for n in counts]
            owner = " or ".join(f"shard {s}, not started (no {SHARDS}/{s.file})" for s in owners)
        else:
            owner = "no shard has run it yet"
        groups.setdefault(owner, []).append(entry)
    where = "; ".join(f"{owner}: {', '.join(names)}" for owner, names in groups.items())
    return (f"{len(missing)} of the {len(runs)} runs of the sweep in {out} have not finished: {where}. Run the shards "
            f"that own them (the sweep's command with their --shard; finished runs are reused), or the sweep's command "
            f"without --shard, then gather again.")


def _results(runs: list[SweepRun], axis: str) -> pd.DataFrame:
    """The runs' metrics.csv, each row labelled with its run's method label, axis value and seed
    (base2new: and `classes`, base or new, the new rows from RUN/classes-new/metrics.csv)."""
    frames = []
    for r in runs:
        tags = {"method": r.label, axis: r.value, "seed": r.seed}
        if r.base2new:
            frames += [pd.read_csv(r.dir / "metrics.csv").assign(**tags, classes="base"),
                       pd.read_csv(r.dir / NEW / "metrics.csv").assign(**tags, classes="new")]
        else:
            frames.append(pd.read_csv(r.dir / "metrics.csv").assign(**tags))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _gather(out: Path, record: dict[str, Any], runs: list[SweepRun], kind: TaskKind) -> pd.DataFrame:
    """Write results.csv, table.md, seconds.csv and .md and the plot from the runs, in the run list's order; refused,
    naming them, while any run has not finished."""
    missing = [r for r in runs if not _finished(r)]
    if missing:
        raise CptError(_missing(out, record, runs, missing))
    results, methods = _results(runs, kind.axis), record["spec"]["methods"]
    write_csv(out / "results.csv", results)
    seconds = _seconds(runs, kind.axis)
    write_csv(out / "seconds.csv", seconds)
    write_text(out / "seconds.md", seconds_table(seconds, methods, kind.axis))
    if "classes" in results:
        write_text(out / "table.md", base2new_table(harmonic(results, kind), methods, kind.axis))
        return results
    write_text(out / "table.md", table(headline(results, kind), methods, kind.axis))
    per_run = per_run_headline(results, kind).rename(columns={"method": "label"})
    plot_against(per_run, kind.axis, out / AXIS_PLOTS[kind.axis][0])
    return results


def per_run_headline(results: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """Each run's (method, axis value, seed) headline metric, averaged over its tasks: mAP for
    multi-label, each task's headline accuracy (accuracy or mean per-class accuracy) otherwise."""
    rows = results[(results.metric == kind.headline) & (results.task != "mean")]
    return rows.groupby(["method", kind.axis, "seed"], as_index=False, sort=False)["value"].mean()


def headline(results: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """Mean and std over seeds of each run's headline metric."""
    per_run = per_run_headline(results, kind)
    return per_run.groupby(["method", kind.axis])["value"].agg(["mean", "std"]).fillna(0.0).reset_index()


def harmonic(results: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """base2new: per method and axis value, mean and std over seeds of the base accuracy, the new
    accuracy (each the mean over tasks of the task's headline) and their harmonic mean (per run,
    2 base new / (base + new), as the CoOp papers report it)."""
    rows = results[(results.metric == kind.headline) & (results.task != "mean")]
    per_run = rows.pivot_table(index=["method", kind.axis, "seed"], columns="classes", values="value",
                               aggfunc="mean", sort=False).reset_index()
    per_run["hm"] = 2 * per_run.base * per_run.new / (per_run.base + per_run.new)
    stats = per_run.groupby(["method", kind.axis], sort=False)[["base", "new", "hm"]].agg(["mean", "std"])
    return stats.fillna(0.0)


def base2new_table(summary: pd.DataFrame, methods: list[str], axis: str = "shots") -> str:
    """Markdown: a row per method and shot count, columns base, new and H, cells mean ± std."""
    lines = [f"| method | {axis} | base | new | H |", "|---|---|---|---|---|"]
    for method in methods:
        for (m, value), row in summary.iterrows():
            if m == method:
                cells = [f"{row[(c, 'mean')]:.1f} ± {row[(c, 'std')]:.1f}" for c in ("base", "new", "hm")]
                lines.append(f"| {method} | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seconds(runs: list[SweepRun], axis: str) -> pd.DataFrame:
    """Each run's fitting seconds (`train_seconds` of its config.json): kept apart from results.csv,
    which the same runs reproduce byte for byte."""
    rows = [{"method": r.label, axis: r.value, "seed": r.seed,
             "train_s": json.loads((r.dir / "config.json").read_text()).get("train_seconds")} for r in runs]
    return pd.DataFrame(rows)


def seconds_table(runs: pd.DataFrame, methods: list[str], axis: str = "shots") -> str:
    """Markdown: each method's mean fitting seconds per run (over seeds), a column per axis value."""
    seconds = runs.groupby(["method", axis])["train_s"].mean()
    values = sorted(runs[axis].unique())
    lines = ["| training s/run | " + " | ".join(_column(axis, v) for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for method in methods:
        cells = [f"{seconds[method, v]:.1f}" if (method, v) in seconds and pd.notna(seconds[method, v]) else ""
                 for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _column(axis: str, value) -> str:
    if axis == "known_ratio":
        return f"known {value:g}"
    return f"{value} shot{'s' if value > 1 else ''}"


def table(summary: pd.DataFrame, methods: list[str], axis: str = "shots") -> str:
    """Markdown: a row per method, a column per shot count (or known ratio), cells mean ± std."""
    values = sorted(summary[axis].unique())
    lines = ["| method | " + " | ".join(_column(axis, v) for v in values) + " |", "|---|" + "---|" * len(values)]
    for method in methods:
        rows = summary[summary.method == method].set_index(axis)
        cells = [f"{rows.loc[v, 'mean']:.1f} ± {rows.loc[v, 'std']:.1f}" if v in rows.index else "" for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
