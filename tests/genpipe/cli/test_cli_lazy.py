"""The `genpipe` command builds only the command it runs (issue 14: start-up): `genpipe run`
imports neither the other commands' modules nor pydantic (typer's coercion, genpipe.cli.coercion),
while every `--help`, every parsed value and every usage error stays what the eagerly built
app gives."""

import json
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from genpipe import cli
from genpipe.cli.coercion import _Coercion

OTHER_NOUNS = {f"genpipe.cli.{n}" for n in cli.NOUNS if n != "pipeline"}


def _eager() -> typer.Typer:
    """The app as it was built before: every module's commands registered up front."""
    app = typer.Typer(
        name="genpipe",
        help=cli.app.info.help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(cli._main)
    for noun in cli.NOUNS:
        __import__(f"genpipe.cli.{noun}", fromlist=["register"]).register(app)
    return app


def test_the_table_of_commands_is_what_the_modules_define():
    eager = typer.main.get_group(_eager()).commands
    assert list(cli.COMMANDS) == list(eager)  # same names, same order in --help
    for noun in cli.NOUNS:  # each name is built by the module the table names
        own = typer.Typer()
        __import__(f"genpipe.cli.{noun}", fromlist=["register"]).register(own)
        defined = set(typer.main.get_group(own).commands)
        assert defined == {n for n, m in cli.COMMANDS.items() if m == noun}, noun


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        [],
        ["rnu"],  # "Did you mean 'run'?" needs every name, built or not
        *[[name, "--help"] for name in cli.COMMANDS],
        ["schedules", "list", "--help"],
        ["images", "build", "--help"],
        ["run", "vae", "--retries", "x"],  # typer's own message for a bad number
        ["run", "vae", "--tolerance", "1e-2x"],
        ["up", "--s3-port", "80"],  # a range typer checks
    ],
)
def test_help_and_usage_errors_are_the_eager_apps(args):
    runner = CliRunner()
    env = {"COLUMNS": "100", "TERM": "dumb"}
    lazy = runner.invoke(cli.app, args, env=env)
    eager = runner.invoke(_eager(), args, env=env)
    assert (lazy.exit_code, lazy.output) == (eager.exit_code, eager.output)
    assert lazy.output.strip()


def test_values_are_coerced_as_typer_coerces_them():
    from typer._coercion import build_runtime_param

    group = typer.main.get_group(cli.app)
    samples = [None, "", "x", "3", "0.5", "1e-3", " 7 ", 0, 3, 0.0, 0.1, True, False]
    samples += [[], ["a=1"], ("a", "b")]
    checked = 0
    for name in cli.COMMANDS:
        command = group.commands[name]
        for param in [*command.params, *getattr(command, "commands", {}).values()]:
            if not isinstance(getattr(param, "_runtime_param", None), _Coercion):
                continue
            theirs = build_runtime_param(param.type_descriptor)
            ctx = command.make_context(name, [], resilient_parsing=True)
            for value in samples:
                try:
                    want: object = theirs.coerce(value, param=param, ctx=ctx)
                except Exception as e:  # noqa: BLE001 - the same error, or none, either way
                    want = (type(e), str(e))
                try:
                    got: object = param._runtime_param.coerce(value, param=param, ctx=ctx)
                except Exception as e:  # noqa: BLE001
                    got = (type(e), str(e))
                assert (got, type(got)) == (want, type(want)), (name, param.name, value)
                checked += 1
    assert checked > 500


def test_genpipe_run_builds_only_its_own_command_and_imports_no_pydantic(tmp_path):
    seen = tmp_path / "modules.json"
    script = (  # `genpipe ARGS`, then the modules it imported (importtime misses import_module's)
        "import atexit, json, sys; "
        f"atexit.register(lambda: open({str(seen)!r}, 'w').write(json.dumps(sorted(sys.modules)))); "
        "sys.argv = ['genpipe', 'run', 'vae', '--image', 'x:1']; "
        "from genpipe.cli import entry; entry()"
    )
    out = subprocess.run(  # refused before anything runs: no stack needed
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "GENPIPE_HOME": str(tmp_path)},
        timeout=120,
    )
    assert out.returncode == 1 and "needs --containers" in out.stderr, out.stderr[-2000:]
    mods = set(json.loads(seen.read_text()))
    assert "genpipe.cli.pipeline" in mods
    assert not OTHER_NOUNS & mods, OTHER_NOUNS & mods
    assert not {m for m in mods if m.split(".")[0] == "pydantic"}
    assert "genpipe.ops.stack" not in mods  # the stack command's module needs it, run not
