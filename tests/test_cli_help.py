"""`metering --help` lists every command from the summaries kept beside the lazy table, without
importing the commands' modules; the summaries must say what the commands themselves say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metering.cli import BENCH_COMMANDS, COMMANDS, _load, _short_help

LAZY = [(group, name, lazy) for group, table in (("metering", COMMANDS), ("bench", BENCH_COMMANDS))
        for name, lazy in table.items()]


@pytest.mark.parametrize(("group", "name", "lazy"), LAZY, ids=[f"{g} {n}" for g, n, _ in LAZY])
def test_each_listed_summary_is_what_the_command_itself_would_show(group, name, lazy) -> None:
    command = _load(lazy.spec)
    for limit in (20, 45, 60, 80, 10_000):   # click shortens to the terminal's width
        assert _short_help(lazy.summary, limit) == command.get_short_help_str(limit), (group, name, limit)


def _listed(help_text: str) -> dict[str, str]:
    commands = help_text.split("Commands:")[1]
    return {line.split()[0]: " ".join(line.split()[1:]) for line in commands.splitlines() if line.strip()}


def test_top_level_help_lists_every_command_without_importing_them() -> None:
    probe = ("import json, sys\n"
             "from click.testing import CliRunner\n"
             "from metering.cli import cli\n"
             "out = {}\n"
             "for group, args in (('metering', ['--help']), ('bench', ['bench', '--help'])):\n"
             "    result = CliRunner().invoke(cli, args, terminal_width=200)\n"
             "    assert result.exit_code == 0, result.output\n"
             "    out[group] = result.output\n"
             "out['imported'] = [m for m in ('dagster', 'polars', 'duckdb', 'stripe', 'pandera', 'pipelines.demo')\n"
             "                   if m in sys.modules]\n"
             "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["imported"] == []
    for group, table in (("metering", COMMANDS), ("bench", BENCH_COMMANDS)):
        assert _listed(out[group]) == {name: lazy.summary for name, lazy in table.items()}
