"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks: [docs/hooks.py]``).

* the committed notebooks (``notebooks/NN_name.ipynb``, with their outputs) become pages
  ``notebooks/NN_name/`` under the nav's ``Notebooks`` section, in order; mkdocs-jupyter renders
  them without executing anything;
* ``<!-- cli-reference -->`` in a page is replaced by the reference of every ``funcbp``
  subcommand, generated from the parser itself (`funcbp.cli.build_parser`), so it cannot drift
  from the code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CLI_MARKER = "<!-- cli-reference -->"


def on_config(config):
    """Fill the nav's ``Notebooks: []`` with every committed notebook, titled by its heading."""
    for item in config["nav"]:
        if isinstance(item, dict) and "Notebooks" in item:
            item["Notebooks"] = [{_title(path): f"notebooks/{path.name}"} for path in NOTEBOOKS]
            return config
    raise ValueError("mkdocs.yml: the nav has no 'Notebooks' section for docs/hooks.py to fill")


def _title(path: Path) -> str:
    """The first ``# heading`` as plain text, numbered: ``02 — Every op vs jax.grad``."""
    number = path.stem[:2]
    for cell in json.loads(path.read_text())["cells"]:
        for line in "".join(cell["source"]).splitlines():
            if cell["cell_type"] == "markdown" and line.startswith("# "):
                title = line[2:].replace("`", "").strip()
                return title if title.startswith(number) else f"{number} — {title}"
    return path.stem


@event_priority(100)  # before mkdocs-jupyter's on_files, which claims the .ipynb files
def on_files(files, config):
    """Add ``notebooks/*.ipynb`` (outside ``docs/``) to the site's files."""
    for path in NOTEBOOKS:
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER not in markdown:
        return markdown
    from funcbp.cli import build_parser

    return markdown.replace(CLI_MARKER, cli_reference(build_parser()))


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown for every subcommand of ``parser``: usage, then one table per argument group."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in sub._choices_actions}
    out = []
    for name, command in sub.choices.items():
        out += [f"## `{parser.prog} {name}`", "", helps.get(name, ""), ""]
        command.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        out += ["```text", command.format_usage().strip(), "```", ""]
        for group in command._action_groups:
            rows = [_row(a) for a in group._group_actions if not _is_help(a)]
            if not rows:
                continue
            out += [f"**{group.title}**", "", "| option | value | what |", "|---|---|---|"]
            out += [*rows, ""]
    return "\n".join(out)


def _is_help(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction)


def _row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
    if action.nargs == 0:
        value = "flag"
    elif action.choices is not None:
        value = " \\| ".join(f"`{c}`" for c in action.choices)
    else:
        value = f"`{action.metavar or action.dest.upper()}`"
        if action.nargs in ("*", "+"):
            value += " …"
    if action.required:
        value += " (required)"
    what = (action.help or "").replace("%%", "%").replace("|", "\\|")
    if action.default not in (None, False, argparse.SUPPRESS) and "default" not in what:
        what += f" (default {action.default})"
    return f"| {flags} | {value} | {what} |"
