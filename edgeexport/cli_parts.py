"""The parts the ``edgeexport`` command line is built of: typer classes that read like click, the
flag groups several commands share, and one ``error:`` line per mistake.

Typer 0.29 labels every flag with a ``<type>`` (``--json <bool>``) and writes a required argument as
``{model}``. :class:`Command` gives each parameter click's metavar instead (``MODEL``, ``TEXT``,
``INTEGER``, ``PATH``; none on a flag; an explicit ``metavar`` such as ``TARGET`` is kept), and
:class:`Group` prints a parser mistake (an unknown option or command, a missing argument or value) as
one ``error: <problem>; see '<command> --help'`` line and exits 2, instead of click's usage and boxed
panel. :class:`App` is a ``typer.Typer`` whose commands are :class:`Command`, with ``--version``.
:func:`one_line_errors` does the same for edgeexport's own errors (their exit code) and Ctrl-C (130).

:func:`add_flags` adds a group of flags to a command and hands their values to it as library keyword
arguments: the targets' own options (:func:`option_flag`), the parity bounds (:func:`bound_flags`)
and the CI gate (:func:`gate_flags`).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from edgeexport import interrupts
from edgeexport.errors import EdgeExportError
from edgeexport.exporter import Option
from edgeexport.reporting.gate import DEFAULT_LATENCY_MARGIN_PCT, DEFAULT_PARITY_MARGIN

TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "list[str]": "TEXT"}
F = TypeVar("F", bound=Callable[..., Any])
# Wide tables when piped (CI logs), the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, one line however long."""
    errors.print(Text.assemble(("error:", "red"), f" {message}"), highlight=False, soft_wrap=True)


class _ClickMetavars:
    """Parameters labelled as click labels them (mixed into a typer command or group)."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.__class__ = _Argument  # typer builds its own parameter classes; this one only labels its type
            if param.metavar is None:
                param.metavar = _metavar(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_ClickMetavars, TyperCommand):
    """A typer command whose help and usage name parameters as click does."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse as typer does; a parser error that names no command (a flag's missing value) gets this one."""
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            if hasattr(exc, "format_message") and getattr(exc, "ctx", ctx) is None:
                exc.ctx = ctx
            raise

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``[OPTIONS] MODEL [EXTRA]``: arguments by their metavar, optional ones in brackets."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class _Argument(TyperArgument):
    """An argument shown as ``MODEL  TEXT``, named by its metavar and typed as click types it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return _type_name(self)


def _metavar(param: Any) -> str:
    if isinstance(param, TyperArgument):
        return param.name.upper()
    return "" if param.is_flag or param.count else _type_name(param)


def _type_name(param: Any) -> str:
    if not hasattr(param, "bare_type"):  # typer before its own copy of click: click's type names it
        return str(param.type.name).upper()
    return TYPE_NAMES.get(param.bare_type(), param.bare_type().upper())


class Group(_ClickMetavars, TyperGroup):
    """The command group: parser mistakes become one ``error:`` line (exit 2); ``--help`` and the rest as typer."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except Exception as exc:  # click's exceptions, by their interface (typer vendors click in its private _click)
            if type(exc).__name__ == "Abort":  # end of input at a prompt
                print_error("aborted")
                sys.exit(1)
            if not isinstance(getattr(exc, "exit_code", None), int) or not hasattr(exc, "format_message"):
                raise
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one printed the help already
                print_error(usage_error_line(exc))
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def usage_error_line(exc: Any) -> str:
    """The one line of a parser mistake, without ``error:``: click's message, its suggestion in parentheses,
    and where to look (``no such option '--forc' for 'convert' (did you mean '--force'?); see 'edgeexport
    convert --help'``)."""
    ctx = getattr(exc, "ctx", None)
    if hasattr(exc, "option_name") and hasattr(exc, "possibilities"):  # click's NoSuchOption
        where = f" for {ctx.info_name!r}" if ctx is not None and ctx.parent is not None else ""
        problem = f"no such option {exc.option_name!r}{where}"
        if exc.possibilities:
            problem += f" (did you mean {' or '.join(map(repr, sorted(exc.possibilities)))}?)"
    else:
        message = exc.format_message().strip()
        message, _, suggestion = message.partition(". Did you mean ")
        problem = message[:1].lower() + message[1:].rstrip(".")
        if suggestion:
            problem += f" (did you mean {suggestion.rstrip('?')}?)"
    problem = re.sub(r"\s+", " ", problem)
    if ctx is None:
        return problem
    return f"{problem}; see '{ctx.command_path} --help'"


class App(typer.Typer):
    """A ``typer.Typer`` of :class:`Command` commands in a :class:`Group`, whose ``--version`` prints ``version``."""

    def __init__(self, *, version: str, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

        def show_version(value: bool) -> None:
            if value:
                print(version)
                raise typer.Exit()

        @self.callback()
        def _options(_version: bool = typer.Option(False, "--version", is_eager=True, callback=show_version,
                                                   help="Print the version and exit.")) -> None:
            pass

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


def one_line_errors(command: F) -> F:
    """Turn deliberate errors into one ``error:`` line and their exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with interrupts.recorded():
                result = command(*args, **kwargs)
                if interrupts.requested():  # its KeyboardInterrupt was swallowed (a __del__), the work went on
                    raise KeyboardInterrupt("Ctrl-C came as the command finished; its output above is complete")
                return result
        except EdgeExportError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            errors.print(Text.assemble(("interrupted", "red"), f": {str(exc) or 'nothing was written'}"),
                         highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def add_flags(parameters: Iterable[Parameter], collect: Callable[..., dict[str, Any]],
              replaces: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Add keyword ``parameters`` (flags) to a command, and pass their values to it as the keyword
    arguments ``collect(**values)`` returns. The command's parameters named in ``replaces`` (what
    ``collect`` fills) and its ``**kwargs`` are hidden from typer."""
    added = list(parameters)

    def decorate(command: F) -> F:
        declared = signature(command, eval_str=True)

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in added}
            return command(*args, **kwargs, **collect(**values))

        shown = [p for p in declared.parameters.values()
                 if p.kind is not Parameter.VAR_KEYWORD and p.name not in replaces]
        wrapper.__signature__ = declared.replace(parameters=[*shown, *added])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def option_flag(option: Option) -> Parameter:
    """The flag of a target option: ``--<name>`` (a bool option: ``--<name>/--no-<name>``), unset (None) by default."""
    decl = f"{option.flag}/--no-{option.flag[2:]}" if option.type is bool else option.flag
    return Parameter(option.name, Parameter.KEYWORD_ONLY, default=None,
                     annotation=Annotated[Optional[option.type], typer.Option(decl, help=option.help)])


def gate_flags(measured: str) -> list[Parameter]:
    """``--report``, ``--fail-on``, ``--baseline`` and the margin of what the command measures (``parity`` or
    ``latency``)."""
    def flag(name: str, kind: Any, default: Any, *decls: str, help: str) -> Parameter:
        return Parameter(name, Parameter.KEYWORD_ONLY, default=default,
                         annotation=Annotated[kind, typer.Option(*decls, help=help)])

    return [
        flag("report_paths", Optional[list[Path]], None, "--report", help=(
            "Write a report (repeatable); the suffix picks the format: .json (schema edgeexport.report.v2), .xml "
            "(JUnit), .md (Markdown, e.g. a GitHub job summary), .html (one page with plots).")),
        flag("fail_on", str, "any", help="Exit 1 on 'any' parity failure or regression against --baseline, or only "
                                         "on a 'regression' against --baseline."),
        flag("baseline", Optional[Path], None, help="JSON report of an earlier run (--report FILE.json) to compare "
                                                    "against."),
        flag("parity_margin", float, DEFAULT_PARITY_MARGIN, help="An output regresses when its RMS error exceeds "
                                                                 "the baseline's by more than this times its bound.")
        if measured == "parity" else
        flag("latency_margin", float, DEFAULT_LATENCY_MARGIN_PCT, help="A backend regresses when its p50 latency is "
                                                                       "more than this percentage slower than the "
                                                                       "baseline's."),
    ]


def gate(*, report_paths: list[Path] | None, fail_on: str, baseline: Path | None,
          parity_margin: float = DEFAULT_PARITY_MARGIN, latency_margin: float = DEFAULT_LATENCY_MARGIN_PCT
          ) -> dict[str, Any]:
    """``gate`` and ``reports`` of a validate or bench run, from their flags."""
    from edgeexport.reporting import Gate

    return {"gate": Gate.create(fail_on, baseline, parity_margin=parity_margin, latency_margin_pct=latency_margin),
            "reports": report_paths or []}


def target_option_values(**values: Any) -> dict[str, Any]:
    """``target_options`` of a conversion, from the targets' flags (:func:`option_flag`)."""
    return {"target_options": values}


BOUND_HELP = {
    "atol": "absolute error floor (docs/parity.md).",
    "rounding": "error floor relative to each value's magnitude, at least the output's RMS (the arithmetic's "
                "rounding).",
    "max_error": "largest error beyond its element's floor, in spreads of the reference.",
    "rms_error": "RMS error beyond the floor's RMS, in spreads of the reference.",
    "scale_error": "|slope - 1| of target against reference beyond its measured noise (capped; per class, row and "
                   "feature too).",
    "min_top1": "least top-1 agreement of logits, counting the flips the case's measured noise explains.",
}


def bound_flags() -> list[Parameter]:
    """``--atol``, ``--rounding``, ... : one flag per parity bound, unset by default."""
    return [Parameter(key, Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[float], typer.Option(help=f"Parity bound: {text}")]) for key, text in BOUND_HELP.items()]


def bounds(**given: float | None) -> dict[str, Any]:
    """``tolerance``: the bounds given on the command line, by manifest key."""
    return {"tolerance": {key: value for key, value in given.items() if value is not None}}
