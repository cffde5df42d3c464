"""The one exception tree of compress, and the exit codes the CLI maps it to.

``CompressError`` is the root. Bad input of any kind (config, CLI argument, file,
missing optional dependency) is exit 2; a stage that fails while running is exit
3; a failed release gate is exit 1.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3


class CompressError(Exception):
    """Root of every error compress raises on purpose."""

    exit_code: int = EXIT_RUNTIME


class BadInputError(CompressError):
    """Something the user gave is wrong: a file, an argument, a value."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError):
    """One or more errors in a pipeline or target YAML, each located by file, line and path."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = "" if n == 1 else f"{n} problems:\n"
        super().__init__(head + "\n".join(self.problems))


class UnknownNameError(BadInputError):
    """A registry lookup of a name that is not registered."""


class MissingDependency(BadInputError):
    """An optional package is needed and not installed; the message says what to install."""


class CheckpointError(BadInputError):
    """A checkpoint file is missing, corrupt, unsafe to load or does not fit the model."""


class DataError(BadInputError):
    """A data source is missing or malformed."""


class StageError(CompressError):
    """A stage failed while running (exit 3)."""

    def __init__(self, message: str, *, stage: str = "", yaml_path: str = "") -> None:
        self.stage = stage
        self.yaml_path = yaml_path
        prefix = f"stage '{stage}' ({yaml_path}): " if stage else ""
        super().__init__(prefix + message)


class TrainingDiverged(StageError):
    """The loss became NaN or infinite."""


class ExportError(StageError):
    """An export failed or its parity check exceeded the tolerance."""


class RunLocked(BadInputError):
    """Another compress run holds the run directory's lock."""


class GateFailed(CompressError):
    """At least one release gate failed (exit 1)."""

    exit_code = EXIT_GATE_FAILED
