"""`cpt cache`: list the feature cache's keys, or prune them; the work is cpt.data.store's."""

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from cpt_cli.app import JsonOut, Quiet, app, command, emit_json
from rich.table import Table

from cpt.console import console
from cpt.data.store import KeyInfo, prune, scan
from cpt.errors import CptError
from cpt.io import cache_root

ACTIONS = ("list", "prune")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _ago(seconds_since_epoch: float) -> str:
    days = (time.time() - seconds_since_epoch) / 86400
    return "today" if days < 1 else f"{days:.0f} days ago"


def _table(title: str, keys: list[KeyInfo]) -> Table:
    table = Table(title=title)
    for col in ("key", "backbone", "precision", "view", "entries", "size", "files", "last used"):
        table.add_column(col, justify="right" if col in ("entries", "size", "files") else "left")
    for k in keys:
        table.add_row(k.key, k.backbone, k.precision, k.view, f"{k.entries:,}", _size(k.bytes), f"{k.files:,}",
                      _ago(k.last_used))
    return table


@app.command("cache", epilog="""Examples:

  cpt cache                                   # each key: backbone, view, entries, size, files, last used

  cpt cache prune --older-than 30             # delete the keys not used for 30 days

  cpt cache prune --backbone ViT-B/16 --dry-run

  cpt cache prune --compact                   # rewrite every key into as few shard files as possible
""")
@command
def cache_cmd(
    action: Annotated[str, typer.Argument(help="list (the default) or prune.")] = "list",
    older_than: Annotated[Optional[float], typer.Option(help="prune: the keys not used for this many days.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="prune: the keys of this backbone (as given to --backbone, its file name, or 6+ hex digits of its sha256).")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="prune: every key.")] = False,
    compact: Annotated[bool, typer.Option(help="prune: rewrite the keys that stay into as few shard files as the size limit allows, dropping damaged and duplicate entries (alone: every key).")] = False,
    dry_run: Annotated[bool, typer.Option(help="prune: show what would go, change nothing.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="The cache [default: $CPT_CACHE or ~/.cache/cpt].")] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Show the feature cache (size, entries and files per key) or prune it."""
    if action not in ACTIONS:
        raise CptError(f"`cpt cache {action}`: the action is one of {', '.join(ACTIONS)}.")
    root = cache_dir or cache_root()
    if action == "list":
        given = [name for name, value in (("--older-than", older_than), ("--backbone", backbone)) if value is not None]
        given += [name for name, value in (("--all", all_keys), ("--compact", compact), ("--dry-run", dry_run)) if value]
        if given:
            raise CptError(f"{', '.join(given)} only applies to `cpt cache prune`.")
        keys = scan(root)
        if json_out:
            emit_json({"root": str(root), "keys": [k.as_dict() for k in keys], "entries": sum(k.entries for k in keys),
                       "bytes": sum(k.bytes for k in keys), "files": sum(k.files for k in keys)})
        if not quiet:
            console.print(_table(f"feature cache {root}", keys))
            console.print(f"{len(keys)} keys, {sum(k.entries for k in keys):,} entries, "
                          f"{_size(sum(k.bytes for k in keys))} in {sum(k.files for k in keys):,} files", highlight=False)
        return
    done = prune(root, older_than, backbone, all_keys, compact, dry_run)
    if json_out:
        emit_json({"root": str(root), **done.as_dict()})
    if quiet:
        return
    would = "would be " if dry_run else ""
    if done.removed:
        console.print(_table(f"{would}removed from {root}", done.removed))
    for c in done.compacted:
        console.print(f"{c['key']}: {c['files_before']:,} files, {_size(c['bytes_before'])} -> {c['files_after']:,} "
                      f"files, {_size(c['bytes_after'])}{' (dry run)' if dry_run else ''}", highlight=False)
    console.print(f"{len(done.removed)} keys {would}removed, {_size(done.freed)} {would}freed", highlight=False)
